"""Batched dual active-set method for small strictly convex QPs (private).

For a small problem whose ``Q`` is positive definite, Goldfarb and Idnani's dual
method (Math. Programming 27, 1983) needs about as many iterations as there are
active constraints at the solution, each one solve of an equality-constrained QP
(EQP), and ends on a point that solves the KKT system of its active set to
rounding: fewer tensor operations than an interior point, where each operation
costs more than its arithmetic.

The iterate is dual feasible throughout: ``x`` minimizes the objective subject to
the equalities and the working set ``W`` of inequalities held as equalities, with
multipliers ``u_W >= 0``. An iteration picks the most violated inequality ``j``
(a *target*) and moves along the line of points that keep ``W`` tight and keep
stationarity while ``u_j`` grows. That line runs from the current point to the
solution of the EQP on ``W + {j}``, so the step is one solve and an
interpolation: the full step adds ``j`` to ``W``; a multiplier of ``W`` that
would turn negative first stops the step short and leaves ``W`` (the target
stays). An item is done when no inequality outside ``W`` is violated.

Every EQP is the active-set KKT matrix of :mod:`optlayer.solvers._qp_dense`
(inactive rows ``u_i = 0``, the same tiny regularization), factored by LU, one
batched factorization per iteration; the last one, that of the final working
set, serves the backward pass. Items whose ``Q`` is not positive definite,
whose factorization fails, or which do not finish within ``2 m + 10``
iterations (or ``maxiter``) are left without a verdict, as are items whose
final point fails the KKT check recomputed from the data: the interior point
solves them again (:func:`optlayer.solvers.qp._run`). So this method only ever
reports OPTIMAL; infeasibility and unboundedness are the interior point's to
certify.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from optlayer import defaults
from optlayer.solvers import _qp_dense as dense
from optlayer.solvers import _qp_ipm as ipm
from optlayer.status import Status

__all__ = ["applies", "run_active"]


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
    mask of the inequality rows, the identity, the signs of the regularization (+ on
    x, - on the constraint rows), and 0, 1, inf and the index -1 as tensors (a Python
    number is made a tensor at each use)."""
    k = n + m + me
    row = torch.arange(k, device=device).view(1, k, 1)
    sign = torch.ones(k, dtype=dtype, device=device)
    sign[n:] = -1.0
    consts = tuple(torch.tensor(c, dtype=dtype, device=device) for c in (0.0, 1.0, math.inf))
    return (row, (row >= n) & (row < n + m), torch.eye(k, dtype=dtype, device=device), sign,
            *consts, torch.tensor(-1, dtype=torch.int64, device=device))


def run_active(d: ipm.Data, *, active: Tensor, tol: float, maxiter: int,
               want_factor: bool) -> ipm.Result | None:
    """The dual active-set method on the items where ``active`` is True (``d``
    stacked), at most ``maxiter`` iterations. Items it leaves without a verdict
    have status MAX_ITER; the others are OPTIMAL at a point whose KKT residuals,
    recomputed from the data, pass ``tol``. None where no item to solve has a
    positive definite ``Q``."""
    Q = d.Q
    B, n, _ = Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    dev, dtype = Q.device, Q.dtype
    k = n + m + me
    pd = torch.linalg.cholesky_ex(Q).info == 0     # strictly convex: the method applies
    todo = active & pd
    if not bool(todo.any()):
        return None
    # The EQP on a working set W: the rows of the inequalities outside W become
    # u_i = 0 (their columns may stay: they multiply u_i = 0), regularized as in
    # _qp_dense.dense_factor (+delta on x, -delta on the rows held as equalities).
    # ``held`` (B, k, 1) marks the rows of the system kept: x, W and the equalities.
    row, ineq, eye, sign, zero, one, inf, none = _fixed(n, m, me, dtype, dev)
    K0 = dense._base(d)
    K0.diagonal(dim1=1, dim2=2).add_(d.reg_abs.view(B, 1) * sign)
    rhs0 = torch.cat([t for t in (-d.p, d.h, d.b) if t is not None], dim=1)

    def eqp(held: Tensor):
        """``(K, LU, pivots, info, solution)`` of the EQP on the rows ``held``."""
        K = torch.where(held, K0, eye)
        LU, piv, info = torch.linalg.lu_factor_ex(K)
        return K, LU, piv, info, torch.linalg.lu_solve(LU, piv, torch.where(held, rhs0, zero))

    held = ~ineq.expand(B, k, 1)
    K, LU, piv, info, v = eqp(held)           # the minimizer on the equalities alone
    steps = []
    if m:
        # K0 v - hk on an inequality row i is G_i x - h_i - delta u_i: the violation
        # where i is not in W (u_i = 0); the rows held are not looked at
        hk = torch.where(ineq, rhs0, zero)
        target = none.expand(B, 1, 1)
        thr = (0.1 * tol) * (1.0 + ipm.amax(d.h))         # a violation worth a step
        thr = torch.where(todo, thr, inf).view(B, 1, 1)   # items not to solve never start
        for _ in range(min(2 * m + 10, maxiter)):
            # items without a target pick the most violated inequality outside W
            viol = torch.baddbmm(hk, K0, v, beta=-1.0)
            top, pick = viol.masked_fill(held, -math.inf).max(dim=1, keepdim=True)
            target = torch.where((target < 0) & (top > thr), pick, target)
            running = target >= 0               # none left: done
            if not bool(running.any()):
                break
            # Items that are done solve their own EQP again: the same system, the same
            # solution, so any step leaves them unchanged. A failed factorization makes
            # the item's point NaN: it finds no target and stops (its KKT check fails).
            cand = held | (row == target)
            K, LU, piv, info, sol = eqp(cand)
            # the step toward the EQP's solution stops where a multiplier of W reaches 0
            shrink = held & ineq & (sol < zero)
            first, drop = torch.where(shrink, v / (v - sol), inf).min(dim=1, keepdim=True)
            v = torch.lerp(v, sol, torch.clamp(first, zero, one))
            # a full step adds the target to W; a short one drops the blocking row
            short = first < one
            held = torch.where(short, held & (row != drop), cand)
            target = torch.where(short, target, none)
            steps.append(running)
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
    if m:   # an item still on its way to a target at the iteration cap is not done
        passed = passed & (target < 0).view(B)
    status = torch.where(passed, int(Status.OPTIMAL), int(Status.MAX_ITER)).to(torch.int8)
    fac = None
    if want_factor:
        # the last EQP's factorization is that of the final working set wherever the
        # point passed (its items took a full step or were done); its transpose is
        # the backward's system (dense_grad_solve zeroes the multipliers off W)
        fac = dense.DenseFactor(LU, piv, K, W if m else None, info == 0)
    iters = torch.cat(steps, dim=1).sum(dim=(1, 2)) if steps else \
        torch.zeros(B, dtype=torch.int64, device=dev)
    return ipm.Result(x, y, z, s, status, iters, r.pres, r.dres, r.gap, fac)
