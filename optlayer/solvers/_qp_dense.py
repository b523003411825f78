"""Batched interior point for small QPs on the full Newton system (private).

For small problems an interior point iteration costs what its number of
tensor operations costs, not its flops. This kernel keeps that number low by
working on the unreduced system: the iterate is one tensor
``v = [x; s; z; y]`` (``(B, N, 1)``, ``N = n + 2m + me``) and the KKT map is
affine in ``v`` except for the complementarity rows::

    F(v) = [Qx + p + G'z + A'y;  Gx + s - h;  Ax - b;  s * z]
         = J0 v + c0 + [0; 0; 0; s * z]

so every residual is one ``baddbmm`` and every Newton matrix is ``J0`` with
the ``2m`` entries ``z`` and ``s`` written into its complementarity rows, one
``index_copy``. Mehrotra's predictor and corrector share one LU factorization
(partial pivoting keeps the unreduced system well conditioned near the
solution, where ``z / s`` spans twenty decades). The loop freezes converged
items by giving them a zero step.

Where a batch of LUs of the ``N x N`` matrix costs more than the operations
it saves (``kernel_for``: ``"full-cholesky"``), the same loop takes its
Newton direction from the reduced system instead (:class:`_ReducedNewton`:
``ds`` and ``dz`` eliminated, one Cholesky of ``Q + G'WG`` per iteration, as
in :mod:`optlayer.solvers._qp_ipm`); a failed factorization then retries with
more regularization, and hopeless items stop early for
:func:`optlayer.solvers.qp`'s LU rescue.

The active set ``J = {z > s}`` defines the KKT system of its limit
(the same system :mod:`optlayer.solvers._qp_ipm` factors with Cholesky)::

    [ Q    G_J'  A' ] [x  ]   [-p  ]
    [ G_J  0     0  ] [z_J] = [h_J ]        z_i = 0 for i not in J
    [ A    0     0  ] [y  ]   [b   ]

assembled as one symmetric ``(n + m + me)`` matrix (rows of inactive
constraints become ``z_i = 0``), factored once by LU: its solve polishes the
solution and its transposed solve is the backward pass. The polish is tried
as soon as every running item's error is below ``IPM_POLISH_BELOW`` (and
again after each hundredfold decrease); items whose polished point passes
the KKT check stop there, usually several iterations before the interior
point itself would reach ``tol``, and the loop goes on for the others. The
solve starts from the iterate: where the system is singular (the solution is
not unique, as for the epigraph variables of a ``neg`` term) it keeps the
iterate's values in the directions the active set leaves free, which keeps
the inactive rows satisfied (from 0 they were not, and such items could
fail the polish to the end). Elsewhere a polished point depends on the
active set alone, so a polish is computed again only for the items whose
active set has changed (just those items when they are at most a quarter of
the batch: one LU of a few items instead of the batch's).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor

from optlayer import defaults
from optlayer.linalg._common import lu_factor
from optlayer.solvers import _qp_elim as elim
from optlayer.solvers import _qp_ipm as ipm

__all__ = ["DenseFactor", "kernel_for", "run_dense", "dense_grad_solve"]


def kernel_for(n: int, m: int, me: int, batch: int) -> str:
    """Which interior point runs a batch: ``"full-lu"``, ``"full-cholesky"``
    (this module's loop, its Newton direction by LU of the full system or by
    the Cholesky factorization of the reduced one) or ``"reduced"``
    (:mod:`optlayer.solvers._qp_ipm`).

    This loop costs few tensor operations but holds ``batch * N^2`` numbers
    (``N = n + 2m + me``), and its LU grows with that too; the reduced kernel
    costs about twice the operations per iteration but only ``O(n (n + m))``
    memory per item; with equality constraints, which the reduced kernel
    eliminates first (:mod:`_qp_elim`), it wins at smaller batches. The
    thresholds in :mod:`optlayer.defaults` are the measured crossovers.
    """
    N = n + 2 * m + me
    work = batch * N ** 2
    most = defaults.IPM_DENSE_MAX_WORK
    if elim.applies(n, me):
        most = most * defaults.IPM_DENSE_EQ_SHARE
    if N > defaults.IPM_DENSE_MAX_SIZE or work > most:
        return "reduced"
    return "full-lu" if work <= defaults.IPM_LU_MAX_WORK else "full-cholesky"


class DenseFactor(NamedTuple):
    """LU of the active-set KKT matrix at the returned point (polish and backward)."""

    LU: Tensor           # (B, k, k), k = n + m + me
    pivots: Tensor       # (B, k)
    K: Tensor            # (B, k, k) the active-set matrix (refinement; unregularized here,
    #                      the factored matrix itself from _qp_active)
    J: Tensor | None     # (B, m, 1) bool, the active set
    ok: Tensor           # (B,) bool


class _Layout(NamedTuple):
    n: int
    m: int
    me: int
    N: int
    J0: Tensor           # (B, N, N) exact linear part of the Jacobian
    Jreg: Tensor | None  # (B, N * N) J0 + diagonal regularization, flattened (LU only)
    c0: Tensor           # (B, N, 1)
    idx: Tensor | None   # (2m,) flat positions of the complementarity entries (LU only)
    perm: Tensor | None  # (2m,) positions in v of the values written there (LU only)


def _layout(d: ipm.Data, lu: bool) -> _Layout:
    Q = d.Q
    B, n, _ = Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    N = n + 2 * m + me
    os, oz, oy, rc = n, n + m, n + 2 * m, n + m + me
    J0 = Q.new_zeros(B, N, N)
    J0[:, :n, :n] = Q
    c0 = [d.p]
    if m:
        J0[:, :n, oz:oy] = d.Gt
        J0[:, n:n + m, :n] = d.G
        J0[:, n:n + m, os:oz] = torch.eye(m, dtype=Q.dtype, device=Q.device)
        c0.append(-d.h)
    if me:
        J0[:, :n, oy:] = d.At
        J0[:, n + m:rc, :n] = d.A
        c0.append(-d.b)
    if m:
        c0.append(Q.new_zeros(B, m, 1))
    c0 = torch.cat(c0, dim=1) if len(c0) > 1 else c0[0]
    if not lu:
        return _Layout(n, m, me, N, J0, None, c0, None, None)
    # regularization: +delta on the x block, -delta against the y columns (dependent rows of A)
    delta = d.reg_abs.view(B, 1)
    Jreg = J0.clone()
    Jreg[:, :n, :n].diagonal(dim1=1, dim2=2).add_(delta)
    if me:
        Jreg[:, n + m:rc, oy:].diagonal(dim1=1, dim2=2).sub_(delta)
    i = torch.arange(m, device=Q.device)
    idx = torch.cat([(rc + i) * N + os + i, (rc + i) * N + oz + i])
    perm = torch.cat([oz + i, os + i])
    return _Layout(n, m, me, N, J0, Jreg.reshape(B, N * N), c0, idx, perm)


def _newton_lu(L: _Layout, v: Tensor):
    """LU of the Newton matrix at ``v`` (complementarity entries from ``v``)."""
    B = v.shape[0]
    J = L.Jreg
    if L.m:
        J = J.index_copy(1, L.idx, v.view(B, L.N).index_select(1, L.perm))
    LU, piv, info = lu_factor(J.view(B, L.N, L.N))
    return LU, piv, info == 0


class _ReducedNewton:
    """The Newton system of the loop solved by the reduced (normal-equation)
    Cholesky factorization of :mod:`_qp_ipm` instead of one LU of the full
    ``N x N`` matrix: eliminating ``ds`` and ``dz`` from::

        Q dx + G'dz + A'dy = rx,  G dx + ds = rz,  A dx = ry,  z ds + s dz = rc

    gives ``(Q + G'WG) dx + A'dy = rx - G't`` with ``W = z / s`` and
    ``t = (rc - z rz) / s``, then ``dz = t + W G dx`` and ``ds = rz - G dx``.
    """

    def __init__(self, d: ipm.Data, L: _Layout, v: Tensor, boost: Tensor):
        self.d, self.L = d, L
        n, m = L.n, L.m
        self.s = v[:, n:n + m] if m else None
        self.z = v[:, n + m:n + 2 * m] if m else None
        self.f = ipm.factor(d, None if not m else self.z / self.s, boost)
        self.ok = self.f.ok

    def solve(self, R: Tensor) -> Tensor:
        d, L, f = self.d, self.L, self.f
        n, m, k = L.n, L.m, L.n + L.m + L.me
        rx = R[:, :n]
        ry = R[:, n + m:k] if L.me else None
        if not m:
            dx, dy = ipm.kkt_solve(d, f, rx, ry, refine=0)
            return dx if dy is None else torch.cat([dx, dy], dim=1)
        rz = R[:, n:n + m]
        t = torch.addcmul(R[:, k:], self.z, rz, value=-1.0).div_(self.s)
        dx, dy = ipm.kkt_solve(d, f, ipm.matvec_add(rx, d.Gt, t, d.G, alpha=-1.0), ry, refine=0)
        Gdx = ipm.matvec(d.G, dx, d.Gt)
        parts = [dx, rz - Gdx, torch.addcmul(t, f.W, Gdx)]
        if dy is not None:
            parts.append(dy)
        return torch.cat(parts, dim=1)


class _FullNewton:
    """The Newton system of the loop solved by one LU of the full matrix."""

    def __init__(self, d: ipm.Data, L: _Layout, v: Tensor, boost: Tensor):
        self.LU, self.piv, self.ok = _newton_lu(L, v)

    def solve(self, R: Tensor) -> Tensor:
        return torch.linalg.lu_solve(self.LU, self.piv, R)


def _step_to_boundary(vsz: Tensor, dsz: Tensor, fraction) -> Tensor:
    """Largest ``a <= 1`` with ``vsz - a * dsz >= (1 - fraction) vsz`` (``vsz > 0``)."""
    worst = (dsz / vsz).amax(dim=(1, 2), keepdim=True)
    if isinstance(fraction, float) and fraction == 1.0:    # (one tensor operation less)
        return worst.clamp_(min=1.0).reciprocal_()
    return fraction / worst.clamp(min=fraction)


def _error(L: _Layout, d: ipm.Data, v: Tensor, R: Tensor, scale: Tensor):
    """``(err, sz, lin, gap_scale)``: the error ``max(lin, s'z / gap_scale)`` with
    ``lin = |R| * scale`` and ``gap_scale = max(1, |objective|)``, and ``s * z``
    (``(B, m, 1)``; None, like ``gap_scale``, without inequalities).

    ``R`` is the linear residual (zero complementarity rows). The row scales
    use the data only (``1 / (1 + |p|)`` on the dual rows, ``1 / (1 + |h|)``
    and ``1 / (1 + |b|)`` on the primal rows): each is at least the scale
    :func:`optlayer.solvers._qp_ipm.residuals` uses, so this test is never
    looser than the one that decides the status.
    """
    err = ipm.amax(R * scale)
    if not L.m:
        return err, None, err, None
    sz = v[:, L.n:L.n + 2 * L.m].unflatten(1, (2, L.m)).prod(dim=1)
    x = v[:, :L.n]
    obj = (x * torch.baddbmm(d.p, d.Q, x, alpha=0.5)).sum(dim=(1, 2))
    if d.obj0 is not None:
        obj = obj + d.obj0
    objs = obj.abs().clamp(min=1.0)
    gap = sz.sum(dim=(1, 2)) / objs
    return torch.maximum(err, gap), sz, err, objs


def run_dense(d: ipm.Data, *, active: Tensor, tol: float, maxiter: int,
              want_factor: bool, reduced: bool = False, give_up: bool = False) -> ipm.Result:
    """Mehrotra predictor-corrector on the full Newton system (see the module doc).

    Items stop when their error (:func:`_error`) is at most ``tol``, when a
    certificate of infeasibility or unboundedness passes (checked every third
    iteration from the fifth on; infeasibility every iteration with
    ``reduced``), when their Newton system breaks down (with ``reduced``: after
    the regularization retries), or, with ``give_up``, when
    :func:`_qp_ipm.watch` finds them hopeless; the statuses are assigned at
    the end from the residuals of the returned point (:func:`_finish`).
    ``reduced`` takes the Newton direction from the reduced system
    (:class:`_ReducedNewton`).
    """
    L = _layout(d, lu=not reduced)
    n, m, me = L.n, L.m, L.me
    k = n + m + me
    B, dev = d.Q.shape[0], d.Q.device
    eps_inf = defaults.ipm_infeasibility_tol(d.Q.dtype)
    iters = torch.zeros(B, dtype=torch.int64, device=dev)
    running = active.clone()
    dv = d.p.new_zeros(B, L.N, 1)     # the last direction (the unbounded certificate at exit)
    polish_at, pol = defaults.IPM_POLISH_BELOW, None
    guard, last, ladder = False, None, None   # guarded steps, once some item's error grew
    infeasible = torch.zeros_like(running)
    unbounded = torch.zeros_like(running)

    def row_scale(t):
        tn = torch.linalg.vector_norm(t, ord=float("inf"), dim=(1, 2), keepdim=True)
        return (1.0 / (1.0 + tn)).expand(B, t.shape[1], 1)

    scale = [row_scale(t) for t in (d.p, d.h, d.b) if t is not None]
    if m:
        scale.append(d.p.new_zeros(B, m, 1))
    scale = torch.cat(scale, dim=1)
    ab = slice(n, n + 2 * m)            # s and z, contiguous in v

    # start: CVXOPT's point (s = -z from a least-squares step at s = z = 1), shifted inside
    v = torch.cat([d.Q.new_zeros(B, n, 1), d.Q.new_ones(B, 2 * m, 1),
                   d.Q.new_zeros(B, me, 1)], dim=1)
    newton = _ReducedNewton if reduced else _FullNewton
    base = bases(d)                     # of the polishes' matrices
    boost = d.Q.new_ones(B, 1)
    track = None
    R = torch.baddbmm(L.c0, L.J0, v)
    if m:
        R[:, k:] = 2.0
    v = v - newton(d, L, v, boost).solve(R)
    if m:
        sz = v[:, ab].view(B, 2, m)
        low = -sz.amin(dim=2, keepdim=True)
        sz.add_(torch.where(low >= 0, 1.0 + low, torch.zeros_like(low)))

    for it in range(maxiter + 1):
        R = torch.baddbmm(L.c0, L.J0, v)
        err, sz, lin, objs = _error(L, d, v, R, scale)
        running = running & (err > tol)          # NaN errors stop too (statuses at the end)
        if m and (reduced or (it >= 5 and it % 3 == 2)):
            cert = running & _infeasible(d, L, v, eps_inf)
            infeasible = infeasible | cert
            running = running & ~cert
        if give_up:    # hopeless items stop early: solve_qp's LU rescue takes them over
            hopeless, track = ipm.watch(err, track)
            running = running & ~hopeless
        if guard or last is None:
            worst = float(torch.where(running, err, -1.0).amax())
        else:   # the one host sync also tells whether some running item's error grew
            worst, grew = torch.stack([torch.where(running, err, -1.0).amax(),
                                       (running & (err > last)).any().to(err.dtype)]).tolist()
            guard = grew > 0
        last = err
        if it == maxiter or worst < 0:
            break
        if m and worst <= polish_at:
            # the active set is most likely known: try to finish by polishing on it;
            # items whose polished point passes are done (the loop goes on for the others)
            polish_at = worst * 1e-2
            pol = _correct(d, _repolish(d, v, n, m, me, pol, tol, base), running, tol, base)
            passed = pol.err <= tol
            if bool((~active | infeasible | unbounded | (err <= tol) | passed).all()):
                break
            running = running & ~passed
        nt = newton(d, L, v, boost)
        ok = nt.ok
        if m:
            vsz = v[:, ab]
            R[:, k:] = sz
            dv = nt.solve(R)                                            # predictor: v - a dv
            dsz = dv[:, ab]
            a = _step_to_boundary(vsz, dsz, 1.0)
            nxt = torch.addcmul(vsz, a, dsz, value=-1.0)
            mu = sz.sum(dim=(1, 2), keepdim=True)
            mu_aff = nxt.unflatten(1, (2, m)).prod(dim=1).sum(dim=(1, 2), keepdim=True)
            # Mehrotra's centering sigma = (mu_aff / mu)^3, target floored a decade below tol
            target = (mu_aff / mu).clamp(0.0, 1.0).pow(3).mul(mu / m).clamp(min=0.1 * tol / m)
            R[:, k:] = dsz.unflatten(1, (2, m)).prod(dim=1).add_(sz).sub_(target)
            dv = nt.solve(R)                                            # corrector
            a = _step_to_boundary(vsz, dv[:, ab], ipm.boundary_fraction(err).view(-1, 1, 1))
            if guard:
                ladder = ipm.step_ladder(v) if ladder is None else ladder
                dsz = dv[:, ab]
                slope = ipm.gap_slope(vsz[:, :m], vsz[:, m:], dsz[:, :m], dsz[:, m:])
                a = ipm.guarded_step(-a, ladder, mu, *slope, lin, objs).neg_()
        else:
            dv = nt.solve(R)
            a = torch.ones_like(dv[:, :1])
        if it >= 5 and it % 3 == 2:
            unb = running & _unbounded(d, L, -dv[:, :n], eps_inf)
            unbounded = unbounded | unb
            running = running & ~unb
        # frozen items keep their point; a non-finite direction makes the next error NaN.
        # A failed Cholesky retries with more regularization (as in _qp_ipm); a failed LU stops.
        step = running & ok
        if reduced:
            most = defaults.IPM_REG_BOOST ** defaults.IPM_REG_RETRIES
            retry = running & ~ok & (boost.view(-1) < most)
            boost = torch.where(retry.view(-1, 1), boost * defaults.IPM_REG_BOOST, boost)
            running = step | retry
        else:
            running = step
        v = torch.where(step.view(-1, 1, 1), torch.addcmul(v, a, dv, value=-1.0), v)
        iters += running

    pol = _correct(d, _repolish(d, v, n, m, me, pol, tol, base),
                   running & ~infeasible & ~unbounded, tol, base)
    # items that stopped without converging: the certificates at their last point
    # (an infeasible or unbounded item may break down between two periodic checks), the
    # ray along the last direction or along the iterate itself (one that ran off along a
    # ray: its bounded part is negligible against -p'x)
    open_ = active & ~infeasible & ~unbounded & ~(err <= tol) & ~(pol.err <= tol)
    if bool(open_.any()):
        if m:
            infeasible = infeasible | (open_ & _infeasible(d, L, v, eps_inf))
        ray = _unbounded(d, L, -dv[:, :n], eps_inf) | _unbounded(d, L, v[:, :n], eps_inf)
        unbounded = unbounded | (open_ & ~infeasible & ray)
    return _finish(d, _split(v, n, m, me), pol, err, active, running, infeasible, unbounded,
                   iters, tol, want_factor)


def _repolish(d: ipm.Data, v: Tensor, n: int, m: int, me: int, pol: _Polished | None,
              tol: float, base: Bases | None = None):
    """The polish (:func:`_polish`) at ``v``; ``pol`` again for the items whose active set
    it was taken on: a polished point depends on the active set alone, but for
    the free directions of a problem whose solution is not unique (the loop
    polishes only with inequalities, so a ``pol`` given has ``m > 0``; its tensors are
    overwritten, as in :func:`_correct`). ``base``: :func:`bases` of ``d`` (where not given,
    the polish makes it for the items it polishes)."""
    if pol is None:
        return _polish(d, *_split(v, n, m, me), base=base)
    B = v.shape[0]
    # (an item whose polished point passed is done; a corrected one (_correct) has an
    # active set of its own, not its iterate's)
    changed = ((v[:, n + m:n + 2 * m] > v[:, n:n + m]) != pol.fac.J).view(B, m).any(dim=1) \
        & ~(pol.err <= tol)
    idx = changed.nonzero().view(-1)
    k = idx.numel()
    if not k:
        return pol
    if 4 * k > B:
        return _polish(d, *_split(v, n, m, me), base=base)
    # few items changed their active set (the last ones to converge): polish just those,
    # one small batched LU instead of the whole batch's (each item's polish is its own)
    return ipm.scatter_(pol, idx, _polish(ipm.take(d, idx), *_split(v.index_select(0, idx), n,
                                                                   m, me),
                                         base=None if base is None else take_bases(base, idx)))


def _correct(d: ipm.Data, pol: _Polished, todo: Tensor, tol: float,
             base: Bases | None = None) -> _Polished:
    """``pol`` with the polished points of the items ``todo`` that fail ``tol`` corrected on
    their active set: the next set keeps the rows of ``J`` whose multiplier is
    nonnegative (the primal-dual active-set rule of :mod:`_qp_active`) and takes the row
    the polished point violates most (one row: taking every violated row at once can
    hold more rows than the solution has, a singular system). A polish on that set
    replaces the last where its error is lower, and the items whose set changed go on,
    up to ``defaults.IPM_POLISH_CORRECTIONS`` rounds (one host sync each). Where the
    iterate's active set is a row or two off, as it often is where the polish is first
    tried, this finishes the item without more interior point iterations; every point
    kept is still judged by its residuals. ``pol``'s tensors are overwritten (the items
    corrected) and returned: the caller's ``pol`` is replaced by the result."""
    if pol.u is None:      # no inequalities: the polish had no active set to guess
        return pol
    base = bases(d) if base is None else base
    for _ in range(defaults.IPM_POLISH_CORRECTIONS):
        idx = (todo & ~(pol.err <= tol)).nonzero().view(-1)
        if not idx.numel():
            break
        dk = ipm.take(d, idx)
        x, s, z, y = (None if t is None else t.index_select(0, idx) for t in pol.point)
        J, u = pol.fac.J.index_select(0, idx), pol.u.index_select(0, idx)
        thr = ipm.violation_floor(dk, tol).view(-1, 1, 1)
        viol = ipm.matvec(dk.G, x, dk.Gt) - dk.h
        top = viol.masked_fill(J, -math.inf).amax(dim=1, keepdim=True)
        Jn = (J & (u >= 0.0)) | ((viol == top) & (top > thr))
        new = _polish(dk, x, s, z, y, Jn, take_bases(base, idx))
        better = new.err < pol.err.index_select(0, idx)
        moved = better & (Jn != J).view(Jn.shape[0], -1).any(dim=1)
        todo = torch.zeros_like(todo).index_copy(0, idx, moved)
        keep = better.nonzero().view(-1)
        if keep.numel() < idx.numel():
            idx, new = idx.index_select(0, keep), ipm.gather(new, keep)
        pol = ipm.scatter_(pol, idx, new)
    return pol


def _split(v: Tensor, n: int, m: int, me: int):
    x = v[:, :n]
    s = v[:, n:n + m] if m else None
    z = v[:, n + m:n + 2 * m] if m else None
    y = v[:, n + 2 * m:] if me else None
    return x, s, z, y


def _infeasible(d: ipm.Data, L: _Layout, v: Tensor, eps_inf: float) -> Tensor:
    zy = v[:, L.n + L.m:]
    z, y = zy[:, :L.m], (zy[:, L.m:] if L.me else None)
    return ipm.infeasibility_certificate(d, d.KT @ zy, z, y, eps_inf)


def _unbounded(d: ipm.Data, L: _Layout, dx: Tensor, eps_inf: float) -> Tensor:
    return ipm.unbounded_certificate(d, dx, ipm.split(d, dx), eps_inf)


# --------------------------------------------------------------------------
# the active-set system: polish and backward
# --------------------------------------------------------------------------

def _base(d: ipm.Data) -> Tensor:
    """``[[Q, G', A'], [G, 0, 0], [A, 0, 0]]``."""
    n, k = d.Q.shape[1], d.KA.shape[1]
    if d.KT is None:
        return d.KA
    return torch.cat([d.KA, nnf.pad(d.KT, (0, 0, 0, k - n))], dim=2)


class Bases(NamedTuple):
    """What every active-set matrix of a batch is made from (:func:`dense_factor`)."""

    K: Tensor       # (B, k, k) :func:`_base`
    Kreg: Tensor    # K with the regularization on its diagonal (+ on x, - on the rows),
    #                 column-major


def bases(d: ipm.Data) -> Bases:
    """The :class:`Bases` of ``d`` (stacked), made once for the polishes of a solve."""
    K = _base(d)
    Kreg = K.clone()
    Kreg.diagonal(dim1=1, dim2=2).add_(
        d.reg_abs.view(-1, 1) * reg_signs(d.Q.shape[1], K.shape[1], K.dtype, K.device))
    # symmetric (as Data.Q is): its transposed view is the same matrix, column-major, which
    # the LU reads without a transposed copy, and the products with the rows' mask keep
    # (179 against 195 us for 32 systems of 33 rows; where Q were symmetric only to
    # rounding, the refinement on K makes up the difference)
    return Bases(K, Kreg.mT)


def take_bases(b: Bases, idx: Tensor) -> Bases:
    """The items ``idx`` of ``b`` (for the polish of a few items, ``ipm.take(d, idx)``)."""
    return Bases(b.K.index_select(0, idx), b.Kreg.index_select(0, idx))


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)    # an ordinary tensor, whichever mode the first call runs in
def reg_signs(n: int, k: int, dtype, device) -> Tensor:
    """``(k,)``: the signs of the regularization of a KKT matrix of ``k`` rows, ``n`` of
    them the unknowns' (+ there, - on the constraint rows)."""
    sign = torch.ones(k, dtype=dtype, device=device)
    sign[n:] = -1.0
    return sign


def dense_factor(d: ipm.Data, s: Tensor | None, z: Tensor | None,
                 J: Tensor | None = None, base: Bases | None = None) -> DenseFactor:
    """Factor the active-set KKT matrix at ``(s, z)`` (``J = {z > s}``, or the ``J`` given),
    from ``base`` (:func:`bases` of ``d``, made here where not given).

    A row ``i`` of an inequality outside ``J`` becomes ``u_i = 0`` (a unit row of the
    identity, unregularized); its column may stay, as it multiplies ``u_i = 0``. The
    transposed system (the backward) differs from the fully masked one only in the rows
    outside ``J``, whose values are not used (:func:`dense_grad_solve` masks them)."""
    n = d.Q.shape[1]
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    K, Kreg = bases(d) if base is None else base
    if m:
        J = z > s if J is None else J
        # (products, not torch.where: where with the identity broadcast took 3x the time)
        keep = nnf.pad(J.to(K.dtype), (0, 0, n, me), value=1.0)   # (B, k, 1): 0 on rows out
        out = (1.0 - keep).view(keep.shape[0], -1)
        K, Kreg = K * keep, Kreg * keep
        K.diagonal(dim1=1, dim2=2).add_(out)
        Kreg.diagonal(dim1=1, dim2=2).add_(out)
    LU, piv, info = lu_factor(Kreg)
    return DenseFactor(LU, piv, K, J, info == 0)


def dense_solve(f: DenseFactor, rhs: Tensor, *, adjoint: bool, refine: int,
                start: Tensor | None = None) -> Tensor:
    """Solve ``K u = rhs`` (or ``K' u = rhs``) with ``refine`` refinement steps; from
    ``start`` (one refinement step more: where ``K`` is singular, the solution found is
    the one nearest ``start``, not the one nearest 0, up to the regularization)."""
    # (the residual rhs - K u as _qp_ipm.matvec_add computes it: 0.4x the time of
    # baddbmm at (32, 33, 33), as the row-vector product with the transpose)
    K, Kt = (f.K.transpose(1, 2), f.K) if adjoint else (f.K, f.K.transpose(1, 2))

    def residual(u):
        return ipm.matvec_add(rhs, K, u, Kt, alpha=-1.0)

    if start is None:
        u = torch.linalg.lu_solve(f.LU, f.pivots, rhs, adjoint=adjoint)
    else:
        u = start + torch.linalg.lu_solve(f.LU, f.pivots, residual(start), adjoint=adjoint)
    for _ in range(refine):
        u = u + torch.linalg.lu_solve(f.LU, f.pivots, residual(u), adjoint=adjoint)
    return u


def dense_grad_solve(f: DenseFactor, n: int, m: int, a1, a3, a2, refine: int):
    """Backward: the transposed active-set system for ``(gx, gz, gy)``; returns the
    multipliers ``(u, zeta, w)`` in the layout of :func:`_qp_ipm.split_solve`."""
    parts = [a1]
    if a3 is not None:
        parts.append(a3)
    if a2 is not None:
        parts.append(a2)
    rhs = torch.cat(parts, dim=1) if len(parts) > 1 else a1
    lam = dense_solve(f, rhs, adjoint=True, refine=refine)
    u = lam[:, :n]
    zeta = None if a3 is None else lam[:, n:n + m] * f.J
    w = None if a2 is None else lam[:, n + m:]
    return u, zeta, w


class _Polished(NamedTuple):
    fac: DenseFactor
    point: tuple            # (x, s, z, y) solving the active-set KKT system
    r: ipm._Res             # its residuals: dres, pres and gap only (the rest None: less
    #                         to copy where polished points are merged)
    err: Tensor
    u: Tensor | None        # (B, m, 1) the system's multipliers of J before clamping at 0


def _polish(d: ipm.Data, x, s, z, y, J: Tensor | None = None,
            base: Bases | None = None) -> _Polished:
    """Solve the KKT system of the active set ``{z > s}`` of the point given (or of ``J``;
    ``base``: :func:`bases` of ``d``, where made already)."""
    n = d.Q.shape[1]
    m = 0 if z is None else z.shape[1]
    fac = dense_factor(d, s, z, J, base)
    rhs = [-d.p]
    if m:
        rhs.append(torch.where(fac.J, d.h, torch.zeros_like(d.h)))
    if d.A is not None:
        rhs.append(d.b)
    # from the iterate (0 where it is not finite): an item whose solution is not unique
    # (the epigraph variables of a neg term, say) gets the one nearest the iterate, which
    # keeps the rows outside the active set satisfied; the one nearest 0 need not
    start = [u for u in (x, z, y) if u is not None]
    start = torch.cat(start, dim=1) if len(start) > 1 else start[0]
    sol = dense_solve(fac, torch.cat(rhs, dim=1) if len(rhs) > 1 else rhs[0], adjoint=False,
                      refine=defaults.IPM_BACKWARD_REFINE_STEPS,
                      start=torch.nan_to_num(start, nan=0.0, posinf=0.0, neginf=0.0))
    px = sol[:, :n]
    pz = ps = py = u = prod = None
    if m:
        u = sol[:, n:n + m]
        pz = u.clamp(min=0.0)
        # [Qx; Gx; Ax], shared with the residuals
        prod = None if d.KA is None else ipm.matvec(d.KA, px, d.KAt)
        ps = (d.h - ipm.split(d, px, prod)[1]).clamp(min=0.0)
    if d.A is not None:
        py = sol[:, n + m:]
    r = ipm.residuals(d, px, ps, pz, py, prod)
    r = r._replace(rx=None, ry=None, rz=None, Gtz_Aty=None, sz=None, obj_scale=None)
    return _Polished(fac, (px, ps, pz, py), r, torch.maximum(torch.maximum(r.dres, r.pres),
                                                             r.gap), u)


def _finish(d, point, pol: _Polished, err, active, running, infeasible, unbounded, iters, tol,
            want_factor):
    """Return the polished point where it passes tol or its error is not above the
    loop's ``err`` (which bounds the iterate's from above), else the iterate; the
    statuses come from the residuals of what is returned."""
    better = active & ~infeasible & ~unbounded & pol.fac.ok & ((pol.err <= tol) | (pol.err <= err))
    if bool(better.all()):
        (x, s, z, y), r = pol.point, pol.r
    else:
        (x, s, z, y), r = ipm.pick(better, (pol.point, pol.r),
                                   (point, ipm.residuals(d, *point)))
    status = ipm.final_status(r, running=running, infeasible=infeasible, unbounded=unbounded,
                              tol=tol, loose=defaults.ipm_inaccurate_tol(d.Q.dtype))
    return ipm.Result(x, y, z, s, status, iters, r.pres, r.dres, r.gap,
                      pol.fac if want_factor else None)
