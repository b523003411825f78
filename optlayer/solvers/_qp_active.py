"""Batched active-set methods for small strictly convex QPs (private).

For a small problem whose ``Q`` is positive definite, an active-set method
solves a handful of equality-constrained QPs (EQPs) and ends on a point that
solves the KKT system of its working set to rounding: fewer tensor operations
than an interior point, where each operation costs more than its arithmetic.
Two rules pick the working sets ``W`` (inequalities held as equalities; the
equalities are always held):

1. The primal-dual active-set rule (Hintermueller, Ito and Kunisch, SIAM J.
   Optim. 13, 2003), first: the next ``W`` keeps the rows of the last one
   whose multiplier is nonnegative and takes every inequality the last EQP
   solution violates. A set that reproduces itself is optimal (``u_W >= 0``,
   nothing violated). It changes many rows at once, so it usually settles in
   a few EQPs, but on problems far from an M-matrix it can cycle; it gets
   ``defaults.ACTIVE_SET_PDAS_ITERS`` iterations.
2. Goldfarb and Idnani's dual method (Math. Programming 27, 1983) finishes the
   items whose set has not settled, from a dual feasible point: the rows of
   their ``W`` with a negative multiplier leave (all at once, until none is
   left: ``W`` only shrinks). Its iterate stays dual feasible: ``x``
   minimizes the objective with ``W`` tight, ``u_W >= 0``. An iteration picks
   the most violated inequality ``j`` (a *target*) and moves along the line of
   points that keep ``W`` tight and keep stationarity while ``u_j`` grows. That
   line runs from the current point to the solution of the EQP on ``W + {j}``,
   so the step is one solve and an interpolation: the full step adds ``j`` to
   ``W``; a multiplier of ``W`` that would turn negative first stops the step
   short and leaves ``W`` (the target stays). An item is done when no
   inequality outside ``W`` is violated; it takes about one iteration per row
   that ends active, and cannot cycle.

Every EQP is the active-set KKT matrix of :mod:`optlayer.solvers._qp_dense`
(inactive rows ``u_i = 0``, the same tiny regularization), factored by LU, one
batched factorization per iteration; the last one, that of the final working
set, serves the backward pass. Items whose ``Q`` is not positive definite,
whose factorization fails, or which do not finish within ``2 m + 10``
iterations of the dual method (or ``maxiter`` in all) are left without a
verdict, as are items whose final point fails the KKT check recomputed from
the data: the interior point solves them again
(:func:`optlayer.solvers.qp._run`). So this module only ever reports OPTIMAL;
infeasibility and unboundedness are the interior point's to certify.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from optlayer import defaults
from optlayer.linalg._common import lu_factor
from optlayer.solvers import _qp_dense as dense
from optlayer.solvers import _qp_ipm as ipm
from optlayer.status import Status

__all__ = ["applies", "run_active", "set_changes"]


def applies(n: int, m: int, me: int, batch: int) -> bool:
    """Whether a batch of this size is solved by the active-set method first: few
    inequalities (its iterations grow with the number that end active, the most over
    the batch) and a small full system (one LU of ``n + m + me`` rows per iteration).
    The thresholds in :mod:`optlayer.defaults` are measured crossovers."""
    k = n + m + me
    return (m <= defaults.ACTIVE_SET_MAX_ROWS
            and batch * k * k <= defaults.ACTIVE_SET_MAX_WORK)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)    # ordinary tensors, whichever mode the first call runs in
def _fixed(n: int, m: int, me: int, dtype, device):
    """What every call at these sizes uses, made once: the row index ``(1, k, 1)``, the
    mask of the inequality rows, the identity, and 0, 1, inf and the index -1 as
    tensors (a Python number is made a tensor at each use)."""
    k = n + m + me
    row = torch.arange(k, device=device).view(1, k, 1)
    consts = tuple(torch.tensor(c, dtype=dtype, device=device) for c in (0.0, 1.0, math.inf))
    return (row, (row >= n) & (row < n + m), torch.eye(k, dtype=dtype, device=device),
            *consts, torch.tensor(-1, dtype=torch.int64, device=device))


def run_active(d: ipm.Data, *, active: Tensor, tol: float, maxiter: int,
               want_factor: bool) -> ipm.Result | None:
    """The active-set methods (module doc) on the items where ``active`` is True
    (``d`` stacked), at most ``maxiter`` iterations. Items it leaves without a verdict
    have status MAX_ITER; the others are OPTIMAL at a point whose KKT residuals,
    recomputed from the data, pass ``tol``. None where no item to solve has a
    positive definite ``Q``."""
    Q = d.Q
    B, n, _ = Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    dev, dtype = Q.device, Q.dtype
    k = n + m + me
    # strictly convex: the method applies; a zero on the diagonal (the epigraph variables
    # of an LP-shaped problem) rules an item out without the factorization
    todo = active & (Q.diagonal(dim1=1, dim2=2).amin(dim=1) > 0)
    if not bool(todo.any()):
        return None
    todo = todo & (torch.linalg.cholesky_ex(Q).info == 0)
    if not bool(todo.any()):
        return None
    # The EQP on a working set W: the rows of the inequalities outside W become
    # u_i = 0 (their columns may stay: they multiply u_i = 0), regularized as in
    # _qp_dense.dense_factor (+delta on x, -delta on the rows held as equalities).
    # ``held`` (B, k, 1) marks the rows of the system kept: x, W and the equalities.
    row, ineq, eye, zero, one, inf, none = _fixed(n, m, me, dtype, dev)
    Kb, K0 = dense.bases(d)
    rhs0 = torch.cat([t for t in (-d.p, d.h, d.b) if t is not None], dim=1)

    eqp = functools.partial(_eqp, K0, rhs0, eye, zero)
    start = ~ineq.expand(B, k, 1)
    fac = eqp(start)                          # the minimizer on the equalities alone
    held, v, iters = start, fac[-1], torch.zeros(B, dtype=torch.int64, device=dev)
    fac = fac[:-1]
    if m:
        # K0 v - hk on an inequality row i is G_i x - h_i - delta u_i: the violation
        # where i is not in W (u_i = 0); the rows held are not looked at
        hk = torch.where(ineq, rhs0, zero)
        thr = ipm.violation_floor(d, tol)                  # a violation worth a step
        thr = torch.where(todo, thr, inf).view(B, 1, 1)   # items not to solve never start
        cap = min(defaults.ACTIVE_SET_PDAS_ITERS, maxiter)
        held, v, settled, fac, iters = _pdas(K0, hk + thr, ineq, held, v, cap, eqp, fac)
        if not bool(settled.all()):     # the rule cycled on some items: (module doc) 2.
            idx = torch.nonzero(~settled).view(-1)
            part = (K0, rhs0, hk, thr, held, v)
            if idx.shape[0] < B:
                part = tuple(t.index_select(0, idx) for t in part)
            out = _finish(*part, (row, ineq, eye, zero, one, inf, none), maxiter - cap)
            if idx.shape[0] < B:
                held, v, *fac = (ipm.put(a, idx, b) for a, b in
                                 zip((held, v, *fac), out[:6], strict=True))
            else:
                held, v, *fac = out[:6]
            iters = iters.index_add(0, idx, out[6])
            settled = settled.index_copy(0, idx, out[7])
    K, LU, piv, info = fac
    # one refinement step on the unregularized system of the final working set: the
    # regularization leaves its rows off by delta u_W, which grows with the data's scale
    # (nnls with A and t times 10: 7e-10 relative, above tol, on every item)
    v = v + torch.linalg.lu_solve(LU, piv, torch.baddbmm(torch.where(held, rhs0, zero),
                                                         torch.where(held, Kb, eye), v,
                                                         alpha=-1.0))
    W = held[:, n:n + m]
    x = v[:, :n]
    z = s = y = None
    if m:
        z = torch.where(W, v[:, n:n + m], 0.0).clamp(min=0.0)
        s = (d.h - ipm.matvec(d.G, x, d.Gt)).clamp(min=0.0)
    if me:
        y = v[:, n + m:]
    r = ipm.residuals(d, x, s, z, y)
    err = torch.maximum(torch.maximum(r.dres, r.pres), r.gap)
    passed = err <= tol
    if m:   # an item still on its way at the iteration cap is not done
        passed = passed & settled
    status = torch.where(passed, int(Status.OPTIMAL), int(Status.MAX_ITER)).to(torch.int8)
    fac = None
    if want_factor:
        # the last EQP's factorization is that of the final working set wherever the
        # point passed (its items were settled); its transpose is the backward's
        # system (dense_grad_solve zeroes the multipliers off W)
        fac = dense.DenseFactor(LU, piv, K, W if m else None, info == 0)
    return ipm.Result(x, y, z, s, status, iters, r.pres, r.dres, r.gap, fac)


def _eqp(K0, rhs0, eye, zero, held: Tensor):
    """``(K, LU, pivots, info, solution)`` of the EQP on the rows ``held``."""
    K = torch.where(held, K0, eye)
    LU, piv, info = lu_factor(K)
    return K, LU, piv, info, torch.linalg.lu_solve(LU, piv, torch.where(held, rhs0, zero))


def _finish(K0, rhs0, hk, thr, held, v, fixed, left):
    """Goldfarb and Idnani's dual method, in at most ``left`` iterations, for the
    items whose primal-dual active set did not settle (module doc, 2.: their
    ``W`` first loses its rows with a negative multiplier, until none is left).
    Returns ``(held, v, K, LU, pivots, info)``, the iterations per item and
    whether each item is done."""
    row, ineq, eye, zero, one, inf, none = fixed
    eqp = functools.partial(_eqp, K0, rhs0, eye, zero)
    fac = None
    drops = torch.zeros(v.shape[0], dtype=torch.int64, device=v.device)
    for _ in range(min(ineq.shape[1], left)):
        neg = held & ineq & (v < zero)
        if not bool(neg.any()):
            break
        held = held ^ neg
        *fac, v = eqp(held)
        drops = drops + neg.any(dim=1).view(-1)
        left -= 1
    held, v, done, fac, steps = _dual(K0, hk, thr, (row, ineq, zero, one, inf, none), held, v,
                                      min(2 * ineq.shape[1] + 10, left), eqp, fac)
    if fac is None:       # (neither loop solved an EQP: that of the set reached)
        *fac, _ = eqp(held)
    return held, v, *fac, drops + steps, done


def _pdas(K0, hk_thr, ineq, held, v, cap, eqp, fac):
    """At most ``cap`` iterations of the primal-dual active-set rule from the EQP
    solution ``v`` on ``held``: the next working set keeps the rows of ``W`` whose
    multiplier is nonnegative and adds every row violated by more than the
    threshold (``K0 v - hk_thr >= 0`` off ``W``). A working set that reproduces
    itself is optimal (``u_W >= 0``, nothing violated). Returns the last working
    set and solution, ``settled`` (B,) where it reproduced itself, the last
    factorization and the number of working-set changes per item."""
    B = v.shape[0]
    other = ~ineq
    sets = [held]
    settled = None
    for _ in range(cap):
        new = (torch.where(held, v, torch.baddbmm(hk_thr, K0, v, beta=-1.0)) >= 0) | other
        if torch.equal(new, held):      # every item settled (the loop's one host sync)
            settled = torch.ones(B, dtype=torch.bool, device=v.device)
            break
        held = new
        *fac, v = eqp(held)
        sets.append(held)
    if settled is None:                 # the cap: which items reproduce their set
        new = (torch.where(held, v, torch.baddbmm(hk_thr, K0, v, beta=-1.0)) >= 0) | other
        settled = (new == held).all(dim=1).view(B)
    return held, v, settled, fac, set_changes(sets)


def set_changes(sets: list[Tensor]) -> Tensor:
    """The number of changes per item in a sequence of working sets ``(B, k, 1)`` of
    the primal-dual active-set rule (an item's set, once it reproduces itself,
    stays: the same EQP again)."""
    B = sets[0].shape[0]
    if len(sets) == 1:
        return torch.zeros(B, dtype=torch.int64, device=sets[0].device)
    hist = torch.stack(sets)
    return (hist[1:] != hist[:-1]).any(dim=2).view(len(sets) - 1, B).sum(dim=0)


def _dual(K0, hk, thr, fixed, held, v, cap, eqp, fac):
    """At most ``cap`` iterations of Goldfarb and Idnani's dual method (module doc)
    from the dual feasible ``(held, v)`` (``fixed``: what :func:`_fixed` made).
    Returns the last working set and point, whether each item is done (no target
    left, no row violated), the last factorization and the number of iterations
    per item."""
    row, ineq, zero, one, inf, none = fixed
    B = v.shape[0]
    target = none.expand(B, 1, 1)
    steps = []
    done = None
    for _ in range(cap):
        # items without a target pick the most violated inequality outside W
        viol = torch.baddbmm(hk, K0, v, beta=-1.0)
        top, pick = viol.masked_fill(held, -math.inf).max(dim=1, keepdim=True)
        target = torch.where((target < 0) & (top > thr), pick, target)
        running = target >= 0               # none left: done
        if not bool(running.any()):
            done = torch.ones(B, dtype=torch.bool, device=v.device)
            break
        # Items that are done solve their own EQP again: the same system, the same
        # solution, so any step leaves them unchanged. A failed factorization makes
        # the item's point NaN: it finds no target and stops (its KKT check fails).
        cand = held | (row == target)
        *fac, sol = eqp(cand)
        # the step toward the EQP's solution stops where a multiplier of W reaches 0
        shrink = held & ineq & (sol < zero)
        first, drop = torch.where(shrink, v / (v - sol), inf).min(dim=1, keepdim=True)
        v = torch.lerp(v, sol, torch.clamp(first, zero, one))
        # a full step adds the target to W; a short one drops the blocking row
        short = first < one
        held = torch.where(short, held & (row != drop), cand)
        target = torch.where(short, target, none)
        steps.append(running)
    if done is None:    # the cap: done where no target is left and none is violated
        top = torch.baddbmm(hk, K0, v, beta=-1.0).masked_fill(held, -math.inf).amax(dim=1)
        done = (target < 0).view(B) & ~(top > thr.view(B, 1)).view(B)
    count = torch.cat(steps, dim=1).sum(dim=(1, 2)) if steps else \
        torch.zeros(B, dtype=torch.int64, device=v.device)
    return held, v, done, fac, count
