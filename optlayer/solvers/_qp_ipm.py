"""Batched dense primal-dual interior point kernel for convex QPs (private).

The public entry points are in :mod:`optlayer.solvers.qp`. This module holds
the tensor program: the reduced KKT factorization, the Mehrotra
predictor-corrector loop with per-item freezing, the certificate checks and
the residuals used for the status of each batch item.

Problem (every tensor has a leading batch dimension ``B``; vectors are kept as
columns ``(B, k, 1)`` so that every product is one ``bmm``)::

    minimize    1/2 x'Qx + p'x
    subject to  Gx + s = h,  s >= 0        (m inequalities, dual z >= 0)
                Ax = b                     (me equalities, dual y)

Newton system, with ``W = diag(z / s)`` and ``H = Q + G'WG``::

    [ H  A' ] [dx]   [r1]
    [ A  0  ] [dy] = [r2]

is solved with one Cholesky factorization of ``H + rho A'A + reg`` (the
``rho A'A`` term changes nothing in the solution because ``A dx = r2``) and one
of the Schur complement ``A (H + rho A'A + reg)^-1 A' + reg``; ``reg`` is a
tiny diagonal regularization (relative to the diagonal). Optional iterative
refinement against the exact operator (``defaults.IPM_REFINE_STEPS``, off by
default: residuals are recomputed from the data every iteration).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from optlayer import defaults
from optlayer.solvers import _qp_arrow as arrow_
from optlayer.status import Status

__all__ = [
    "Data", "Factor", "SplitFactor", "Result", "make_data", "pack", "factor", "kkt_solve",
    "split_factor", "split_solve", "run_ipm", "take", "merge", "watch", "residuals", "final_status",
    "infeasibility_certificate", "unbounded_certificate", "split", "amax", "boundary_fraction",
    "pick", "guarded_step", "gap_slope", "step_ladder", "matvec", "matvec_add", "augment", "stack",
    "widen", "merge_factors", "scatter", "scatter_", "with_arrow",
]

_RHO = 1.0          # weight of the augmented-Lagrangian term rho A'A
_STEP_FRACTION = 0.99


class Data(NamedTuple):
    """Batched problem data, columns for vectors; absent blocks are None.

    Stacked (:func:`pack`), ``Q``, ``G``, ``A`` are views of ``KA = [Q; G; A]`` and
    ``Gt``, ``At`` views of ``KAt = [Q G' A']``, so that ``[Q; G; A] v`` and
    ``G'z + A'y`` are one product each (:func:`matvec`). Unstacked
    (``stacked=False``, for data that is only read a few times, such as the
    original problem when its equalities are eliminated), ``KA``, ``KT`` and
    ``KAt`` are None, ``Gt`` and ``At`` transposed views, and the products are
    taken block by block.
    """

    Q: Tensor              # (B, n, n), symmetric
    p: Tensor              # (B, n, 1)
    G: Tensor | None       # (B, m, n)
    h: Tensor | None       # (B, m, 1)
    A: Tensor | None       # (B, me, n)
    b: Tensor | None       # (B, me, 1)
    Gt: Tensor | None      # (B, n, m) view
    At: Tensor | None      # (B, n, me) view
    AtA: Tensor | None     # (B, n, n) = Q + rho A'A (None without A, or before augment)
    reg_abs: Tensor        # (B, 1) absolute diagonal regularization
    reg_rel: float         # relative diagonal regularization
    KA: Tensor | None      # (B, n + m + me, n) = [Q; G; A]
    KT: Tensor | None      # (B, n, m + me) = [G' A'], a view of KAt (None without G, A)
    obj0: Tensor | None = None  # (B,) constant added to the objective (its scale in the gap)
    KAt: Tensor | None = None   # (B, n, n + m + me) = [Q G' A'], contiguous (see matvec)
    arrow: arrow_.Arrow | None = None  # the arrow structure of Q + G'WG (with_arrow)


class Factor(NamedTuple):
    """The factorization of the reduced KKT operator at one ``W``."""

    L: Tensor | arrow_.ArrowL  # (B, n, n) Cholesky factor of H + rho A'A + reg (or its
    #                            arrow factorization, where the data has one: _qp_arrow)
    Ls: Tensor | None        # (B, me, me) Cholesky factor of the Schur complement
    HinvAt: Tensor | None    # (B, n, me)
    W: Tensor | float | None  # (B, m, 1) = z / s, or 1.0 (W = I)
    ok: Tensor               # (B,) bool, False where a factorization failed


class Result(NamedTuple):
    x: Tensor
    y: Tensor | None
    z: Tensor | None
    s: Tensor | None
    status: Tensor           # (B,) int8
    iter_num: Tensor         # (B,) int64
    primal_residual: Tensor  # (B,)
    dual_residual: Tensor    # (B,)
    gap: Tensor              # (B,)
    factor: SplitFactor | None  # at the returned iterate, when asked for


def make_data(Q, p, G, h, A, b, augmented: bool = True, stacked: bool = True) -> Data:
    """Pack (B, ...) tensors into :class:`Data` (vectors become columns). With
    ``augmented=False`` the ``Q + rho A'A`` block is left out (:func:`augment` adds
    it; only the factorizations read it); with ``stacked=False`` the stacked
    matrices are (:func:`stack` adds them)."""
    eps = defaults.eps(Q.dtype)
    # max |Q| and max |rho A'A| (a PSD matrix's largest entry is on its diagonal),
    # without a temporary of Q's size
    scale = 1.0 + torch.maximum(Q.amax(dim=(1, 2)), Q.amin(dim=(1, 2)).neg())
    p = p.unsqueeze(-1)
    if G is not None:
        h = h.unsqueeze(-1)
    if A is not None:
        b = b.unsqueeze(-1)
        scale = scale + _RHO * A.square().sum(dim=1).amax(dim=1)
    reg_abs = (defaults.IPM_REG_FACTOR * eps) * scale
    d = pack(Q, p, G, h, A, b, None, reg_abs.unsqueeze(-1), defaults.IPM_REG_FACTOR * eps,
             stacked=stacked)
    return augment(d) if augmented else d


def augment(d: Data) -> Data:
    """``d`` with ``AtA = Q + rho A'A`` (what the factorizations need with equalities)."""
    if d.A is None or d.AtA is not None:
        return d
    return d._replace(AtA=torch.baddbmm(d.Q, d.At, d.A, alpha=_RHO))


def with_arrow(d: Data) -> Data:
    """``d`` with the arrow structure of ``Q + G'WG`` where it pays (:mod:`_qp_arrow`: the
    factorizations of the reduced kernel then eliminate its diagonal block first)."""
    if d.G is None or d.arrow is not None:
        return d
    return d._replace(arrow=arrow_.detect(_qa(d), d.G))


def _qa(d: Data) -> Tensor:
    """The block the factorizations start from: ``Q``, or ``Q + rho A'A``."""
    if d.A is None:
        return d.Q
    if d.AtA is None:
        raise RuntimeError("internal: equality-constrained data factored without "
                           "_qp_ipm.augment")
    return d.AtA


def pack(Q, p, G, h, A, b, AtA, reg_abs, reg_rel, obj0=None, stacked: bool = True) -> Data:
    """Build :class:`Data` from column-vector data (see there for ``stacked``)."""
    if not stacked:
        return Data(Q, p, G, h, A, b, None if G is None else G.transpose(1, 2),
                    None if A is None else A.transpose(1, 2), AtA, reg_abs, reg_rel, None,
                    None, obj0, None)
    blocks = [M for M in (G, A) if M is not None]
    if not blocks:
        return Data(Q, p, None, None, None, None, None, None, AtA, reg_abs, reg_rel, Q, None,
                    obj0, Q)
    KA = torch.cat([Q] + blocks, dim=1)
    KAt = torch.cat([Q] + [M.transpose(1, 2) for M in blocks], dim=2)
    return _views(KA, KAt, Q.shape[1], 0 if G is None else G.shape[1], p, h, b, AtA, reg_abs,
                  reg_rel, obj0)


def _views(KA, KAt, n, m, p, h, b, AtA, reg_abs, reg_rel, obj0) -> Data:
    """:class:`Data` whose matrices are views of the stacks ``KA`` and ``KAt``."""
    G = None if h is None else KA[:, n:n + m]
    A = None if b is None else KA[:, n + m:]
    KT = KAt[:, :, n:]
    Gt = None if G is None else KT[:, :, :m]
    At = None if A is None else KT[:, :, m:]
    return Data(KA[:, :n], p, G, h, A, b, Gt, At, AtA, reg_abs, reg_rel, KA, KT, obj0, KAt)


def stack(d: Data) -> Data:
    """``d`` with its stacked matrices (:func:`pack`)."""
    if d.KA is not None:
        return d
    return pack(d.Q, d.p, d.G, d.h, d.A, d.b, d.AtA, d.reg_abs, d.reg_rel, d.obj0)


def matvec(M: Tensor, v: Tensor, Mt: Tensor | None) -> Tensor:
    """``M @ v`` for ``(B, r, c)`` matrices and ``(B, c, 1)`` columns; where the
    transpose ``Mt`` is kept and ``M`` is not tiny (``MATVEC_TRANSPOSED_MIN``
    entries), as the row-vector product ``v' @ Mt``, which measured up to twice
    as fast for batched matrix-vector products on CPU (same values to rounding)."""
    if Mt is None or M.shape[1] * M.shape[2] < defaults.MATVEC_TRANSPOSED_MIN:
        return M @ v
    return torch.bmm(v.transpose(1, 2), Mt).transpose(1, 2)


def matvec_add(c: Tensor, M: Tensor, v: Tensor, Mt: Tensor | None, alpha: float = 1.0):
    """``c + alpha M @ v``, computed as :func:`matvec` does."""
    if Mt is None or M.shape[1] * M.shape[2] < defaults.MATVEC_TRANSPOSED_MIN:
        return torch.baddbmm(c, M, v, alpha=alpha)
    return torch.baddbmm(c.transpose(1, 2), v.transpose(1, 2), Mt, alpha=alpha).transpose(1, 2)


def factor(d: Data, W: Tensor | float | None, boost: Tensor | None = None) -> Factor:
    """Factor ``[[Q + G'WG, A'], [A, 0]]`` (regularized; see the module doc;
    ``W`` is ``(B, m, 1)``, or the number 1.0 for ``W = I``; ``boost`` (B, 1)
    multiplies the absolute regularization per item)."""
    reg_abs = d.reg_abs if boost is None else d.reg_abs * boost
    if W is not None and d.arrow is not None:
        L, ok = arrow_.factor(d.arrow, W, reg_abs, d.reg_rel)
    else:
        QA = _qa(d)
        if W is not None:
            H = torch.baddbmm(QA, d.G.transpose(1, 2), d.G if isinstance(W, float) else d.G * W)
        else:
            H = QA.clone()
        diag = H.diagonal(dim1=1, dim2=2)
        diag.add_(diag.abs() * d.reg_rel + reg_abs)
        L, info = torch.linalg.cholesky_ex(H)
        ok = info == 0
    Ls = HinvAt = None
    if d.A is not None:
        HinvAt = _chol_solve(L, d.At)
        S = d.A @ HinvAt
        sdiag = S.diagonal(dim1=1, dim2=2)
        sdiag.add_(sdiag.abs() * d.reg_rel + d.reg_abs * d.reg_rel)
        Ls, info_s = torch.linalg.cholesky_ex(S)
        ok = ok & (info_s == 0)
    return Factor(L, Ls, HinvAt, W, ok)


def _chol_solve(L: Tensor | arrow_.ArrowL, r: Tensor) -> Tensor:
    if isinstance(L, arrow_.ArrowL):
        return arrow_.solve(L, r)
    t = torch.linalg.solve_triangular(L, r, upper=False)
    return torch.linalg.solve_triangular(L.transpose(1, 2), t, upper=True)


def _lower_solve(L: Tensor | arrow_.ArrowL, r: Tensor) -> Tensor:
    """``L^-1 r`` (with an arrow factorization, in its order of the columns)."""
    if isinstance(L, arrow_.ArrowL):
        return arrow_.lower_solve(L, r)
    return torch.linalg.solve_triangular(L, r, upper=False)


def _upper_solve(L: Tensor | arrow_.ArrowL, y: Tensor) -> Tensor:
    """``L^-T y``: ``H^-1 r = _upper_solve(L, _lower_solve(L, r))``."""
    if isinstance(L, arrow_.ArrowL):
        return arrow_.upper_solve(L, y)
    return torch.linalg.solve_triangular(L.transpose(1, 2), y, upper=True)


def _solve_once(d: Data, f: Factor, r1: Tensor, r2: Tensor | None):
    if d.A is None:
        return _chol_solve(f.L, r1), None
    u0 = _chol_solve(f.L, matvec_add(r1, d.At, r2, d.A, alpha=_RHO))
    w = _chol_solve(f.Ls, matvec_add(-r2, d.A, u0, d.At))
    return torch.baddbmm(u0, f.HinvAt, w, alpha=-1.0), w


def split(d: Data, v: Tensor, prod: Tensor | None = None):
    """``[Q; G; A] @ v`` split into ``(Qv, Gv, Av)`` (None for absent blocks); ``prod``,
    where given, is the stacked product, already computed."""
    if d.KA is None:
        return tuple(None if M is None else M @ v for M in (d.Q, d.G, d.A))
    if prod is None:
        prod = matvec(d.KA, v, d.KAt)
    n = d.Q.shape[1]
    m = 0 if d.G is None else d.G.shape[1]
    Gv = None if d.G is None else prod[:, n:n + m]
    Av = None if d.A is None else prod[:, n + m:]
    return prod[:, :n], Gv, Av


def dual_product(d: Data, z: Tensor | None, y: Tensor | None) -> Tensor:
    """``G'z + A'y`` (one product on stacked data; ``d`` must have ``G`` or ``A``)."""
    if d.KA is None:
        if d.G is not None and d.A is not None:
            return torch.baddbmm(d.Gt @ z, d.At, y)
        return d.Gt @ z if d.G is not None else d.At @ y
    KGA = d.KA[:, d.Q.shape[1]:]                 # [G; A], the transpose of KT
    if d.G is not None and d.A is not None:
        return matvec(d.KT, torch.cat([z, y], dim=1), KGA)
    return matvec(d.KT, z if d.G is not None else y, KGA)


def kkt_matvec(d: Data, W: Tensor | None, u: Tensor, w: Tensor | None):
    """The exact operator ``[[Q + G'WG, A'], [A, 0]]`` applied to ``(u, w)``."""
    Qu, Gu, Au = split(d, u)
    if W is None and d.A is None:
        return Qu, None
    return Qu + dual_product(d, None if W is None else W * Gu, w), Au


def kkt_solve(d: Data, f: Factor, r1: Tensor, r2: Tensor | None, refine: int = 1):
    """Solve the reduced KKT system with ``refine`` steps of iterative refinement."""
    u, w = _solve_once(d, f, r1, r2)
    for _ in range(refine):
        k1, k2 = kkt_matvec(d, f.W, u, w)
        e1 = r1 - k1
        e2 = None if d.A is None else r2 - k2
        du, dw = _solve_once(d, f, e1, e2)
        u = u + du
        if d.A is not None:
            w = w + dw
    return u, w


def amax(v: Tensor) -> Tensor:
    """``max |v|`` per item of a ``(B, k, 1)`` tensor, NaN where it has a NaN (the
    value of ``vector_norm(ord=inf)``, which measured 2-5x slower)."""
    return v.abs().amax(dim=(1, 2))


class _Res(NamedTuple):
    rx: Tensor
    ry: Tensor | None
    rz: Tensor | None
    Gtz_Aty: Tensor | None
    dres: Tensor
    pres: Tensor
    gap: Tensor
    sz: Tensor | None
    obj_scale: Tensor


def residuals(d: Data, x, s, z, y, prod: Tensor | None = None) -> _Res:
    """KKT residuals at an iterate, each normalized by the size of its terms.

    ``dres = |Qx + p + G'z + A'y|_inf / (1 + max |term|_inf)``,
    ``pres`` likewise for ``Ax - b`` and ``Gx + s - h``, and
    ``gap = s'z / max(1, |1/2 x'Qx + p'x + obj0|)``. ``prod``: ``[Q; G; A] x``
    where the caller has it (see :func:`split`).
    """
    Qx, Gx, Ax = split(d, x, prod)
    rx = Qx + d.p
    terms = [Qx, d.p]      # the largest term of each row block: one amax of the columns
    dual = pres = gap = obj_scale = None
    ry = rz = sz = None
    if d.G is not None or d.A is not None:
        dual = dual_product(d, z, y)
        terms.append(dual)
        rx = rx + dual
    dres = amax(rx) / (1.0 + amax(torch.cat(terms, dim=2)))
    if d.G is not None:
        rz = Gx + s - d.h
        pres = amax(rz) / (1.0 + amax(torch.cat([Gx, s, d.h], dim=2)))
        sz = (s * z).sum(dim=(1, 2))
        obj = (x * (0.5 * Qx + d.p)).sum(dim=(1, 2))
        if d.obj0 is not None:
            obj = obj + d.obj0
        obj_scale = obj.abs().clamp(min=1.0)
        gap = sz / obj_scale
    if d.A is not None:
        ry = Ax - d.b
        pe = amax(ry) / (1.0 + amax(torch.cat([Ax, d.b], dim=2)))
        pres = pe if pres is None else torch.maximum(pres, pe)
    if pres is None:
        pres = torch.zeros_like(dres)
    if gap is None:
        gap, obj_scale = torch.zeros_like(dres), torch.ones_like(dres)
    return _Res(rx, ry, rz, dual, dres, pres, gap, sz, obj_scale)


def _newton(d: Data, f: Factor, r: _Res, rc_over_s: Tensor | None, refine: int,
            full: bool = False):
    """Direction ``(dx, ds, dz, dy, prod)`` for residuals ``r`` and complementarity
    target ``rc / s``; ``prod = [Q; G; A] dx`` with ``full`` (else None)."""
    r1 = -r.rx
    if d.G is not None:
        r1 = matvec_add(r1, d.Gt, f.W * r.rz - rc_over_s, d.G, alpha=-1.0)
    r2 = None if d.A is None else -r.ry
    dx, dy = kkt_solve(d, f, r1, r2, refine)
    prod = matvec(d.KA, dx, d.KAt) if full else None
    if d.G is None:
        return dx, None, None, dy, prod
    Gdx = split(d, dx, prod)[1] if full else matvec(d.G, dx, d.Gt)
    dz = f.W * (Gdx + r.rz) - rc_over_s
    ds = -r.rz - Gdx
    return dx, ds, dz, dy, prod


def boundary_fraction(err: Tensor) -> Tensor:
    """Fraction of the step to the boundary: ``1 - min(0.01, max(err, sqrt(eps)))``.

    Far from the solution 0.99; near it ``1 - err``, which makes the last
    iterations converge superlinearly; never closer than ``sqrt(eps)`` of the
    dtype (float32 iterates that close to the boundary break the factorization).
    """
    floor = defaults.eps(err.dtype) ** 0.5
    return 1.0 - err.clamp(min=floor, max=1.0 - _STEP_FRACTION)


def _max_step(s, z, ds, dz, fraction) -> Tensor:
    """Largest ``alpha <= 1`` with ``s + alpha ds, z + alpha dz >= (1 - fraction)(s, z)``."""
    worst = torch.minimum((ds / s).amin(dim=(1, 2)), (dz / z).amin(dim=(1, 2)))
    return (-fraction / worst.clamp(max=-fraction)).view(-1, 1, 1)


def step_ladder(like: Tensor) -> Tensor:
    """``defaults.IPM_STEP_LADDER`` as a ``(1, K)`` tensor of ``like``'s dtype and
    device, for :func:`guarded_step` (made once per loop: a tensor built from a
    Python list on a GPU is a copy the host waits for)."""
    return torch.tensor(defaults.IPM_STEP_LADDER, dtype=like.dtype,
                        device=like.device).view(1, -1)


def gap_slope(s: Tensor, z: Tensor, ds: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
    """``(g1, g2)`` per item ``(B,)``: ``(s + c ds)'(z + c dz) = s'z + c g1 + c^2 g2``."""
    g1 = (torch.addcmul(s * dz, z, ds)).sum(dim=(1, 2))
    return g1, (ds * dz).sum(dim=(1, 2))


def guarded_step(a: Tensor, ladder: Tensor, sz0: Tensor, g1: Tensor, g2: Tensor,
                 lin: Tensor, gap_scale: Tensor) -> Tensor:
    """The step ``a`` along a direction ``(ds, dz)``, shortened where it would grow
    the gap unpaid.

    The new point is ``(s, z) + c (ds, dz)``, and its complementarity the quadratic
    ``s'z + c g1 + c^2 g2`` (``sz0 = s'z`` and :func:`gap_slope`). Along a Newton
    direction the linear residuals (``lin``, the larger of the normalized primal
    and dual residuals) shrink by ``1 - c``, while Mehrotra's corrector can make
    the gap grow. Growth is what early steps of an infeasible iterate often
    need, but on some feasible QPs the steps then cycle between two gaps and
    the loop never converges. So the gap (``s'z / gap_scale``) may grow only in
    proportion to the residual a step removes: of ``c = a * ladder``
    (:func:`step_ladder`) the largest with
    ``gap(c) <= (1 - c / 100) gap(0) + IPM_GAP_GROWTH * c * lin`` is returned
    (the smallest when none is). Per item ``(B, 1, 1)``; ``a`` may be negative
    (a step ``-|a|`` along the direction).
    """
    B, K = a.shape[0], ladder.shape[1]
    c = a.view(B, 1) * ladder
    sz0 = sz0.view(B, 1)
    gap = torch.addcmul(sz0, c, torch.addcmul(g1.view(B, 1), c, g2.view(B, 1)))
    frac = c.abs()
    allowed = torch.addcmul((1.0 - 0.01 * frac) * sz0, frac, (lin * gap_scale).view(B, 1),
                            value=defaults.IPM_GAP_GROWTH)
    rank = torch.arange(K, device=a.device)
    first = torch.where(gap <= allowed, rank, K - 1).amin(dim=1, keepdim=True)
    return c.gather(1, first).view(B, 1, 1)


def infeasibility_certificate(d: Data, Gtz_Aty: Tensor, z, y, eps_inf: float) -> Tensor:
    """True where ``(z, y)`` certify ``{x : Gx <= h, Ax = b}`` is empty.

    Farkas: ``z >= 0``, ``G'z + A'y = 0`` and ``h'z + b'y < 0``. Accepted when
    ``|G'z + A'y|_inf <= eps_inf * (-(h'z + b'y))``: then every feasible x has
    ``|x|_1 >= 1 / eps_inf``.
    """
    c = -(d.h * z).sum(dim=(1, 2))
    if d.A is not None:
        c = c - (d.b * y).sum(dim=(1, 2))
    return (c > 0) & (amax(Gtz_Aty) <= eps_inf * c)


def unbounded_certificate(d: Data, dx, prods, eps_inf: float) -> Tensor:
    """True where ``dx`` is a ray of unboundedness.

    ``Q dx = 0``, ``A dx = 0``, ``G dx <= 0`` and ``p'dx < 0``, accepted when the
    violations are at most ``eps_inf * (-p'dx)``: then every primal-dual
    solution would have ``|x|_1 + |z|_1 + |y|_1 >= 1 / eps_inf``.
    """
    c = -(d.p * dx).sum(dim=(1, 2))
    Qdx, Gdx, Adx = prods
    viol = amax(Qdx)
    if Adx is not None:
        viol = torch.maximum(viol, amax(Adx))
    if Gdx is not None:
        viol = torch.maximum(viol, Gdx.clamp(min=0).amax(dim=(1, 2)))
    return (c > 0) & (viol <= eps_inf * c)


def _initial_point(d: Data):
    """CVXOPT's start: least-squares point with W = I, then shift s, z inside."""
    f = factor(d, None if d.G is None else 1.0)
    r1 = -d.p if d.G is None else matvec_add(-d.p, d.Gt, d.h, d.G)
    x, y = kkt_solve(d, f, r1, d.b, refine=0)      # a starting point: no refinement
    if d.G is None:
        return x, None, None, y
    s = d.h - matvec(d.G, x, d.Gt)
    z = -s
    s = s + _shift(s)
    z = z + _shift(z)
    return x, s, z, y


def _shift(v: Tensor) -> Tensor:
    a = -v.amin(dim=(1, 2), keepdim=True)
    return torch.where(a >= 0, 1.0 + a, torch.zeros_like(a))


def _where(mask: Tensor, new: Tensor | None, old: Tensor | None):
    return None if new is None else torch.where(mask, new, old)


def take(d: Data, idx: Tensor) -> Data:
    """The items ``idx`` of the batch ``d`` (of stacked data, its stacks selected)."""
    def t(v):
        return None if v is None else v.index_select(0, idx)
    if d.KA is None or d.KT is None:
        out = pack(t(d.Q), t(d.p), t(d.G), t(d.h), t(d.A), t(d.b), t(d.AtA), t(d.reg_abs),
                   d.reg_rel, t(d.obj0), stacked=d.KA is not None)
    else:
        m = 0 if d.G is None else d.G.shape[1]
        out = _views(t(d.KA), t(d.KAt), d.Q.shape[1], m, t(d.p), t(d.h), t(d.b), t(d.AtA),
                     t(d.reg_abs), d.reg_rel, t(d.obj0))
    return out if d.arrow is None else out._replace(arrow=arrow_.take(d.arrow, idx))


def violation_floor(d: Data, tol: float) -> Tensor:
    """Per item ``(B,)``, the violation of an inequality row worth a change of the active
    set (the active-set rules of ``_qp_active``, ``_qp_schur`` and the polish's
    corrections): a tenth of ``tol``, relative to ``1 + max |h|``."""
    return (0.1 * tol) * (1.0 + amax(d.h))


def put(full: Tensor, idx: Tensor, part: Tensor) -> Tensor:
    """``full`` with the items ``idx`` replaced by ``part``, in ``full``'s memory layout: a
    batch of column-major matrices (LAPACK's factors) stays column-major, which the
    solves read without a transposed copy (``index_copy`` alone returns a row-major
    tensor: an LU solve of 32 33 x 33 systems took 110 us instead of 30)."""
    if full.dim() == 3 and full.stride(-2) == 1 and full.stride(-1) > 1:
        return full.mT.index_copy(0, idx, part.mT).mT
    return full.index_copy(0, idx, part)


def merge(res: Result, idx: Tensor, again: Result) -> Result:
    """``res`` with the items ``idx`` replaced by ``again`` (``again``'s
    iterations added to theirs; the factors must be of one type)."""
    def one(a, b):
        return None if a is None else put(a, idx, b)

    fac = res.factor
    if isinstance(fac, SplitFactor):
        fac = merge_factors(fac, idx, again.factor)
    elif fac is not None:
        fac = type(fac)(*(one(a, b) for a, b in zip(fac, again.factor, strict=True)))
    return Result(*(one(a, b) for a, b in zip(res[:5], again[:5], strict=True)),
                  res.iter_num.index_add(0, idx, again.iter_num),
                  *(one(a, b) for a, b in zip(res[6:9], again[6:9], strict=True)), fac)


def gather(state, idx):
    """The items ``idx`` of a tuple of batched tensors (None and nested tuples kept; a
    named tuple keeps its type)."""
    vals = [None if v is None else gather(v, idx) if isinstance(v, tuple)
            else v.index_select(0, idx) for v in state]
    return type(state)(*vals) if hasattr(state, "_fields") else tuple(vals)


def scatter(full, idx, part):
    """``full`` with the items ``idx`` replaced by ``part`` (tuples as in :func:`gather`;
    a named tuple keeps its type)."""
    vals = [None if f is None else scatter(f, idx, p) if isinstance(f, tuple)
            else put(f, idx, p) for f, p in zip(full, part, strict=True)]
    return type(full)(*vals) if hasattr(full, "_fields") else tuple(vals)


def scatter_(full, idx, part):
    """:func:`scatter` in place: the items ``idx`` of ``full``'s tensors are overwritten by
    ``part``'s and ``full`` is returned. For a batch that nothing else reads: it copies
    the items, where :func:`scatter` copies every tensor of the batch (the factors
    included: 80 of the 480 us of lad_regression's correction of two items)."""
    for f, p in zip(full, part, strict=True):
        if isinstance(f, tuple):
            scatter_(f, idx, p)
        elif f is not None:
            f.index_copy_(0, idx, p)
    return full


def watch(err: Tensor, track: tuple | None):
    """Per item, True where an iterate is hopeless: its error grew
    ``IPM_DIVERGED`` times over its first one (seen on infeasible problems
    whose certificate the normal equations cannot resolve), or has not halved
    its best in ``IPM_STALL_ITERS`` iterations (float32 near ``W ~ 1/eps``).
    ``track = (first, best, since)`` per item, None on the first call; returns
    ``(hopeless, track)``."""
    if track is None:
        return torch.zeros_like(err, dtype=torch.bool), (err, err, torch.zeros_like(err))
    first, best, since = track
    better = err < 0.5 * best
    best = torch.where(better, err, best)
    since = torch.where(better, 0.0, since + 1.0)
    hopeless = (err > defaults.IPM_DIVERGED * first) | (since >= defaults.IPM_STALL_ITERS)
    return hopeless, (first, best, since)


def _scatter_mask(B: int, idx: Tensor, part: Tensor) -> Tensor:
    return torch.zeros(B, dtype=torch.bool, device=idx.device).index_copy(0, idx, part)


def run_ipm(d: Data, *, active: Tensor, tol: float, maxiter: int,
            want_factor: bool, give_up: bool = False) -> Result:
    """Mehrotra predictor-corrector on every item where ``active`` is True.

    The iterations stop at ``max(tol, IPM_POLISH_AT)``; the polish on the
    active set (:func:`_polish`) then usually solves the KKT system to
    rounding. Items whose polished point does not pass ``tol`` resume the
    iterations down to ``tol`` and are polished again. Statuses come from the
    residuals of the returned point (:func:`final_status`).
    """
    dtype, dev = d.Q.dtype, d.Q.device
    B = d.Q.shape[0]
    m = 0 if d.G is None else d.G.shape[1]
    x, s, z, y = _initial_point(d)
    status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.int8, device=dev)
    iters = torch.zeros(B, dtype=torch.int64, device=dev)
    stop = max(tol, defaults.IPM_POLISH_AT) if m else tol
    state, running = _iterate(d, (x, s, z, y, status, iters), active, stop, tol, maxiter,
                              give_up)
    point, r, err, fac = _polish(d, state)
    if stop > tol:
        retry = (state[4] == int(Status.OPTIMAL)) & ~(err <= tol)
        if bool(retry.any()):
            x, s, z, y, status, iters = state
            status = torch.where(retry, int(Status.MAX_ITER), status)
            left = maxiter - int(iters.max())
            state, again = _iterate(d, (x, s, z, y, status, iters), retry, tol, tol, left,
                                    give_up)
            running = running | again
            # polish the retried items again (only them: the others keep theirs)
            idx = torch.nonzero(retry).view(-1)
            p2, r2, e2, f2 = _polish(take(d, idx), gather(state, idx))
            point = scatter(point, idx, p2)
            r = scatter(r, idx, r2)
            err = err.index_copy(0, idx, e2)
            fac = merge_factors(fac, idx, f2)
    x, s, z, y = point
    status = state[4]
    status = final_status(r, running=running, infeasible=status == int(Status.INFEASIBLE),
                          unbounded=status == int(Status.UNBOUNDED), tol=tol,
                          loose=defaults.ipm_inaccurate_tol(dtype))
    return Result(x, y, z, s, status, state[5], r.pres, r.dres, r.gap,
                  fac if want_factor else None)


def _polish(d: Data, state):
    """Solve the KKT system of the active set ``J = {z > s}`` at each item's point
    (the factorization is the one the backward pass needs anyway) and keep the
    polished point where its error is not worse. Returns the point, its
    residuals and error, and the factorization."""
    x, s, z, y, status, _ = state
    m = 0 if z is None else z.shape[1]
    fac = split_factor(d, s, z)
    solved = (status == int(Status.OPTIMAL)) | (status == int(Status.OPTIMAL_INACCURATE)) \
        | (status == int(Status.MAX_ITER))
    px, pz, py = split_solve(d, fac, -d.p, d.h, d.b, refine=defaults.IPM_POLISH_REFINE_STEPS)
    ps = None
    if m:
        pz = pz.clamp(min=0.0)
        ps = (d.h - matvec(d.G, px, d.Gt)).clamp(min=0.0)
    r1 = residuals(d, px, ps, pz, py)
    r0 = residuals(d, x, s, z, y)
    e1 = torch.maximum(torch.maximum(r1.dres, r1.pres), r1.gap)
    e0 = torch.maximum(torch.maximum(r0.dres, r0.pres), r0.gap)
    better = solved & (e1 <= e0) & fac.ok
    point, r = pick(better, ((px, ps, pz, py), r1), ((x, s, z, y), r0))
    return point, r, torch.where(better, e1, e0), fac


def pick(mask: Tensor, new, old):
    """``(point, residuals)`` of ``new`` where ``mask`` (per item), else of ``old``;
    ``point`` a tuple of ``(B, k, 1)`` tensors or None, residuals a :class:`_Res`."""
    def sel(a, b):
        return None if a is None else torch.where(mask.view((-1,) + (1,) * (a.dim() - 1)), a, b)

    point = tuple(sel(a, b) for a, b in zip(new[0], old[0], strict=True))
    return point, _Res(*(sel(a, b) for a, b in zip(new[1], old[1], strict=True)))


def _iterate(d: Data, state, active: Tensor, stop: float, tol: float, maxiter: int,
             give_up: bool):
    """The Mehrotra loop from ``state = (x, s, z, y, status, iters)`` on the items
    where ``active``; items stop when their error is at most ``stop`` (OPTIMAL,
    provisional), a certificate passes (INFEASIBLE / UNBOUNDED) or their
    factorization keeps failing (NUMERICAL_ERROR or OPTIMAL_INACCURATE): an item
    whose factorization fails takes no step and retries with its absolute
    regularization multiplied by ``IPM_REG_BOOST``, at most ``IPM_REG_RETRIES``
    times. One host sync per iteration. Returns the new state and the mask of
    items still running.
    """
    dtype = d.Q.dtype
    B = d.Q.shape[0]
    eps_inf = defaults.ipm_infeasibility_tol(dtype)
    loose = defaults.ipm_inaccurate_tol(dtype)
    m = 0 if d.G is None else d.G.shape[1]
    refine_steps = defaults.IPM_REFINE_STEPS
    x, s, z, y, status, iters = state
    boost = torch.ones_like(x[:, :1, 0])             # (B, 1) regularization multiplier
    ladder = step_ladder(x)
    active = active.clone()
    code = {k: torch.tensor(int(k), dtype=torch.int8, device=d.Q.device) for k in Status}
    # Compaction: once at most half of the working items are active, the loop
    # continues on the active ones only (frozen items are written back to the
    # full-batch tensors). ``idx`` maps working items to batch items.
    full_d, idx, full = d, None, None
    track = None       # for give_up: see watch()
    # [Q; G; A] x, updated along each step from the direction's product (which the
    # step needs anyway), so the residuals take no product with x. Exact up to
    # rounding; the polish and the final statuses recompute the residuals.
    KAx = matvec(d.KA, x, d.KAt)

    def settle(mask, st):
        nonlocal status, active
        mask = mask & active
        status = torch.where(mask, code[st], status)
        active = active & ~mask

    # Items whose factorization or direction failed take no step; their retry
    # (or verdict) is settled after the next host sync, and only when some item
    # failed: at their unchanged point the next residuals are the same.
    broken = None
    for it in range(maxiter + 1):
        r = residuals(d, x, s, z, y, KAx)
        err = torch.maximum(torch.maximum(r.dres, r.pres), r.gap)
        settle(~(err < math.inf), Status.NUMERICAL_ERROR)              # inf or NaN
        settle(err <= stop, Status.OPTIMAL)
        if m:
            settle(infeasibility_certificate(d, r.Gtz_Aty, z, y, eps_inf), Status.INFEASIBLE)
        if give_up:
            hopeless, track = watch(err, track)
            settle(hopeless, Status.NUMERICAL_ERROR)
        # the one host sync per iteration: worst residual, count of active items and
        # of items that failed in the last iteration
        sync = [torch.where(active, err, -1.0).max(), active.sum(dtype=err.dtype)]
        if broken is not None:
            sync.append(broken.sum(dtype=err.dtype))
        worst, count, *failed = torch.stack(sync).tolist()
        if failed and failed[0] > 0:
            retry = broken & (boost.view(-1) < defaults.IPM_REG_BOOST ** defaults.IPM_REG_RETRIES)
            boost = torch.where(retry.view(-1, 1), boost * defaults.IPM_REG_BOOST, boost)
            settle(broken & ~retry & (err <= loose), Status.OPTIMAL_INACCURATE)
            settle(broken & ~retry, Status.NUMERICAL_ERROR)
        if it == maxiter or worst < 0:
            break
        nw = active.shape[0]
        if nw >= defaults.IPM_COMPACT_MIN_BATCH and count <= nw // 2:
            state = (x, s, z, y, status, iters, boost, track, KAx)
            full = state if full is None else scatter(full, idx, state)
            keep = torch.nonzero(active).view(-1)
            idx = keep if idx is None else idx[keep]
            d = take(full_d, idx)
            x, s, z, y, status, iters, boost, track, KAx = gather(full, idx)
            active = torch.ones(idx.shape[0], dtype=torch.bool, device=idx.device)
            r = residuals(d, x, s, z, y, KAx)
            err = torch.maximum(torch.maximum(r.dres, r.pres), r.gap)
            B = idx.shape[0]
        refine = 0 if worst > defaults.IPM_REFINE_BELOW else refine_steps
        W = None if m == 0 else z / s
        f = factor(d, W, boost)
        if m:
            # predictor (affine scaling), then Mehrotra's centering corrector
            dx, ds, dz, dy, _ = _newton(d, f, r, z, refine)
            a = _max_step(s, z, ds, dz, 1.0)
            mu = (r.sz / m).view(-1, 1, 1)
            mu_aff = ((s + a * ds) * (z + a * dz)).sum(dim=(1, 2), keepdim=True) / m
            sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3
            # floor the centering target a decade below the gap tolerance:
            # pushing s'z further only worsens the conditioning of W
            floor = (0.1 * tol / m) * r.obj_scale.view(-1, 1, 1)
            rc_over_s = (s * z + ds * dz - torch.maximum(sigma * mu, floor)) / s
            dx, ds, dz, dy, KAdx = _newton(d, f, r, rc_over_s, refine, full=True)
            a = _max_step(s, z, ds, dz, boundary_fraction(err))
            a = guarded_step(a, ladder, r.sz, *gap_slope(s, z, ds, dz),
                             torch.maximum(r.dres, r.pres), r.obj_scale)
        else:
            dx, ds, dz, dy, KAdx = _newton(d, f, r, None, refine, full=True)
            a = torch.ones(B, 1, 1, dtype=dtype, device=d.Q.device)
        finite = amax(dx) < math.inf
        if it % 2 == 1 or it + 1 >= maxiter:   # every other iteration
            unb = unbounded_certificate(d, dx, split(d, dx, KAdx), eps_inf)
            settle(unb & finite, Status.UNBOUNDED)
        broken = ~(f.ok & finite)
        act = (active & ~broken).view(-1, 1, 1)
        x = torch.where(act, torch.addcmul(x, a, dx), x)
        KAx = torch.where(act, torch.addcmul(KAx, a, KAdx), KAx)
        y = _where(act, None if y is None else torch.addcmul(y, a, dy), y)
        if m:
            s = torch.where(act, torch.addcmul(s, a, ds), s)
            z = torch.where(act, torch.addcmul(z, a, dz), z)
        iters = iters + active.to(iters.dtype)

    if full is not None:
        x, s, z, y, status, iters, _, _, _ = scatter(full, idx, (x, s, z, y, status, iters,
                                                                 boost, track, KAx))
        active = _scatter_mask(full_d.Q.shape[0], idx, active)
    return (x, s, z, y, status, iters), active


def final_status(r: _Res, *, running: Tensor, infeasible: Tensor, unbounded: Tensor,
                 tol: float, loose: float) -> Tensor:
    """The status of each returned point from its recomputed residuals ``r``.

    One rule each, later rules winning: NUMERICAL_ERROR by default (the loop
    stopped without a verdict); OPTIMAL_INACCURATE where the error passes the
    loose tolerance; MAX_ITER where the loop was still running and it does
    not; OPTIMAL where the independent KKT check passes ``tol`` at the
    returned point (however it was reached); INFEASIBLE / UNBOUNDED where a
    certificate passed.
    """
    err = torch.maximum(torch.maximum(r.dres, r.pres), r.gap)
    status = torch.full(err.shape, int(Status.NUMERICAL_ERROR), dtype=torch.int8,
                        device=err.device)
    rules = ((err <= loose, Status.OPTIMAL_INACCURATE),
             (running & ~(err <= loose), Status.MAX_ITER),
             (err <= tol, Status.OPTIMAL),
             (infeasible, Status.INFEASIBLE),
             (unbounded, Status.UNBOUNDED))
    for mask, st in rules:
        status = torch.where(mask, int(st), status)
    return status


# --------------------------------------------------------------------------
# the factorization kept for the backward pass
# --------------------------------------------------------------------------
#
# Near a solution, W = z / s is huge (~1e12) for active constraints and tiny
# for inactive ones, so the reduced operator Q + G'WG gives derivatives only to
# about 1e-6. The backward pass instead takes the active set J = {i : z_i > s_i}
# at the returned point and solves the KKT system of its limit (the derivative
# of the solution map wherever strict complementarity holds):
#
#     [ Q    G_J'  A' ] [dx  ]   [a1  ]
#     [ G_J  0     0  ] [dz_J] = [a3_J]       dz_i = 0 for i not in J
#     [ A    0     0  ] [dy  ]   [a2  ]
#
# by the Schur complement of C = [G_J; A] in Hc = Q + G_J'G_J + rho A'A (the
# added terms vanish on the solution since G_J dx = a3_J and A dx = a2). Rows
# not in J are kept as dummies (zero row, unit diagonal, zero right side) so
# that every item has the same shape. With Hc = L L' and V = L^-1 C', the Schur
# complement is V'V + E and the solve needs V, not C or Hc^-1 C'.
#
# Only k of the m inequality rows enter C: each item's active rows first (in
# the order ``order``), then dummies, k the largest number of active rows in
# the batch (at n = 50, batch 128: at most 31 of 50, and the factorization
# took 3.0-4.6 instead of 8.4-11.4 ms). Dummy rows are decoupled (zero row and
# column, unit diagonal), so a factor is widened to more rows by inserting
# them (:func:`widen`), which lets factors of different k be merged.


class SplitFactor(NamedTuple):
    L: Tensor | arrow_.ArrowL  # (B, n, n) Cholesky of Hc + rho A'A + reg (or its arrow
    #                            factorization, _qp_arrow, without equalities)
    Ls: Tensor | None      # (B, k + me, k + me) Cholesky of V'V + E
    V: Tensor | None       # (B, n, k + me) = L^-1 C', C = [rows of J * G; A] (rows in the
    #                        order of an arrow factorization's columns)
    c: Tensor | None       # (B, m, 1) = 1.0 on J, else 0.0
    J: Tensor | None       # (B, m, 1) bool, z > s
    order: Tensor | None   # (B, m) the inequality rows, active first; C has the first k
    Jk: Tensor | None      # (B, k, 1) bool, J on those k rows (False on dummies)
    ok: Tensor             # (B,) bool


def split_factor(d: Data, s: Tensor | None, z: Tensor | None) -> SplitFactor:
    """Factor the active-set KKT system above at the point ``(s, z)`` (one host
    sync, for the number of active rows)."""
    QA = _qa(d)
    C = E = c = J = order = Jk = None
    if d.G is not None:
        B, m, n = d.G.shape
        J = z > s
        c = J.to(z.dtype)
        k = max(1, int(J.sum(dim=1).max()))
        order = torch.sort((~J).view(B, m).to(torch.uint8), dim=1, stable=True).indices
        rows = order[:, :k].unsqueeze(-1)
        Jk = J.gather(1, rows)
        E = 1.0 - Jk.to(z.dtype)           # 1 on the dummy rows, 0 on active ones
        if d.arrow is not None and d.A is None:    # (_qp_arrow: its diagonal block first)
            L, ok = arrow_.factor(d.arrow, c, d.reg_abs, d.reg_rel)
            V, S = arrow_.active_gram(d.arrow, L, rows.view(B, k), Jk)
            return _split_schur(d, L, ok, V, S, E, c, J, order, Jk)
        H = torch.baddbmm(QA, d.G.transpose(1, 2), d.G * c)
        C = d.G.gather(1, rows.expand(B, k, n)) * Jk
        if d.A is not None:
            C = torch.cat([C, d.A], dim=1)
            E = torch.cat([E, torch.zeros_like(d.b)], dim=1)
    else:
        H = QA.clone()
        if d.A is not None:
            C, E = d.A, torch.zeros_like(d.b)
    diag = H.diagonal(dim1=1, dim2=2)
    diag.add_(diag.abs() * d.reg_rel + d.reg_abs)
    L, info = torch.linalg.cholesky_ex(H)
    ok = info == 0
    if C is None:
        return SplitFactor(L, None, None, c, J, order, Jk, ok)
    V = torch.linalg.solve_triangular(L, C.transpose(1, 2), upper=False)
    return _split_schur(d, L, ok, V, V.transpose(1, 2) @ V, E, c, J, order, Jk)


def _split_schur(d: Data, L, ok, V, S, E, c, J, order, Jk) -> SplitFactor:
    """:func:`split_factor`'s end: the Schur complement ``S = V'V`` with ``E`` and the
    regularization on its diagonal, factored."""
    sdiag = S.diagonal(dim1=1, dim2=2)
    sdiag.add_(E.squeeze(-1))
    sdiag.add_(sdiag.abs() * d.reg_rel + d.reg_abs * d.reg_rel)
    Ls, info_s = torch.linalg.cholesky_ex(S)
    return SplitFactor(L, Ls, V, c, J, order, Jk, ok & (info_s == 0))


def widen(f: SplitFactor, k: int) -> SplitFactor:
    """``f`` with ``k`` inequality rows in its Schur complement (at least its own):
    the next rows of ``order`` are inserted as dummies (zero columns of ``V``, unit
    rows of ``Ls``; decoupled rows leave the rest of a Cholesky factor unchanged)."""
    if f.Jk is None or f.Jk.shape[1] == k:
        return f
    k0 = f.Jk.shape[1]
    B, n, w = f.V.shape
    me = w - k0
    V = torch.cat([f.V[:, :, :k0], f.V.new_zeros(B, n, k - k0), f.V[:, :, k0:]], dim=2)
    Ls = f.Ls.new_zeros(B, k + me, k + me)
    Ls[:, :k0, :k0] = f.Ls[:, :k0, :k0]
    Ls[:, k:, :k0] = f.Ls[:, k0:, :k0]
    Ls[:, k:, k:] = f.Ls[:, k0:, k0:]
    Ls.diagonal(dim1=1, dim2=2)[:, k0:k] = 1.0
    Jk = torch.cat([f.Jk, f.Jk.new_zeros(B, k - k0, 1)], dim=1)
    return f._replace(V=V, Ls=Ls, Jk=Jk)


def merge_factors(full: SplitFactor, idx: Tensor, part: SplitFactor) -> SplitFactor:
    """``full`` with the items ``idx`` replaced by ``part`` (both widened to the
    larger number of rows)."""
    if full.Jk is not None:
        k = max(full.Jk.shape[1], part.Jk.shape[1])
        full, part = widen(full, k), widen(part, k)
    return SplitFactor(*(None if a is None else arrow_.put(a, idx, b, put)
                         if isinstance(a, arrow_.ArrowL) else put(a, idx, b)
                         for a, b in zip(full, part, strict=True)))


def _split_once(d: Data, f: SplitFactor, a1, a3, a2):
    r1 = a1
    if d.G is not None:
        r1 = matvec_add(r1, d.Gt, f.c * a3, d.G)               # + G'c a3
    if d.A is not None:
        r1 = matvec_add(r1, d.At, a2, d.A, alpha=_RHO)         # + rho A'a2 (A dx = a2)
    if f.V is None:
        return _chol_solve(f.L, r1), None, None
    parts, k = [], 0
    if d.G is not None:
        k = f.Jk.shape[1]
        rows = f.order[:, :k].unsqueeze(-1)
        parts.append(torch.where(f.Jk, a3.gather(1, rows), 0.0))
    if d.A is not None:
        parts.append(a2)
    rc = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    # u0 = Hc^-1 r1 = L^-T t; C u0 = V't; dx = u0 - Hc^-1 C' lam = L^-T (t - V lam)
    t = _lower_solve(f.L, r1)
    lam = _chol_solve(f.Ls, torch.baddbmm(-rc, f.V.transpose(1, 2), t))
    dx = _upper_solve(f.L, torch.baddbmm(t, f.V, lam, alpha=-1.0))
    dz = dy = None
    if d.G is not None:
        lamJ = torch.zeros_like(a3).scatter_(1, rows, torch.where(f.Jk, lam[:, :k], 0.0))
        dz = f.c * (matvec(d.G, dx, d.Gt) - a3) + lamJ
    if d.A is not None:
        dy = lam[:, k:]
    return dx, dz, dy


def split_solve(d: Data, f: SplitFactor, a1, a3, a2, refine: int):
    """Solve the active-set KKT system (see the comment above) for ``(dx, dz, dy)``."""
    dx, dz, dy = _split_once(d, f, a1, a3, a2)
    for _ in range(refine):
        Qu, Gu, Au = split(d, dx)
        e1 = a1 - Qu
        if d.G is not None or d.A is not None:
            e1 = e1 - dual_product(d, dz, dy)
        e3 = None if d.G is None else torch.where(f.J, a3 - Gu, torch.zeros_like(a3))
        e2 = None if d.A is None else a2 - Au
        ddx, ddz, ddy = _split_once(d, f, e1, e3, e2)
        dx = dx + ddx
        dz = None if dz is None else dz + ddz
        dy = None if dy is None else dy + ddy
    return dx, dz, dy
