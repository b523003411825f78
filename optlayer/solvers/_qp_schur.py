"""The primal-dual active-set rule on the dual Schur complement, for large batches (private).

For a problem without equality constraints (or with them eliminated,
:mod:`_qp_elim`) whose ``Q`` is positive definite, every equality-constrained QP
(EQP) on a working set ``W`` of inequalities is a system in the multipliers
alone. With ``Q = LL'``, the unconstrained minimizer ``x0 = -Q^-1 p``,
``V = L^-1 G'`` and the dual Hessian ``S = V'V = G Q^-1 G'``::

    S_WW u_W = (G x0 - h)_W,    x = x0 - L^-T V u,    Gx - h = (G x0 - h) - S u

(``u = 0`` off ``W``). So after one Cholesky factorization of ``Q`` and one
product for ``S``, an iteration of the rule of :mod:`_qp_active` (keep the rows
of ``W`` whose multiplier is nonnegative, take every violated row) is one
Cholesky factorization of ``S_WW`` (the rows of ``W`` gathered first, padded
with unit rows to the largest ``|W|`` of the batch), one solve and one
product: ``|W|`` rows where an interior point iteration factors ``n``, and
about half as many iterations.

The final factorization serves the backward pass as it is: it is the
:class:`_qp_ipm.SplitFactor` of the active-set KKT system with ``L`` the
Cholesky factor of ``Q`` (no augmentation), the constraints of ``W`` in their
own order and the others dummy rows. Items whose ``Q`` is not positive
definite, whose factorization fails, whose set does not settle within
``defaults.ACTIVE_SET_PDAS_ITERS`` iterations (the rule can cycle) or whose
final point fails the KKT check recomputed from the data are left without a
verdict (MAX_ITER) for the interior point; this module only ever reports
OPTIMAL.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optlayer import defaults
from optlayer.solvers import _qp_active as active_set
from optlayer.solvers import _qp_ipm as ipm
from optlayer.status import Status

__all__ = ["applies", "run_schur"]


def applies(d: ipm.Data) -> bool:
    """Whether the rule runs first: inequality constraints and no equality
    constraints left, and ``ACTIVE_SET_PDAS_ITERS`` not zero."""
    return d.G is not None and d.A is None and defaults.ACTIVE_SET_PDAS_ITERS > 0


def run_schur(d: ipm.Data, *, active: Tensor, tol: float, maxiter: int,
              want_factor: bool) -> ipm.Result | None:
    """The rule on the items where ``active`` is True (``d`` without equality
    constraints), at most ``min(ACTIVE_SET_PDAS_ITERS, maxiter)`` iterations.
    Items left without a verdict have status MAX_ITER; the others are OPTIMAL at a
    point whose KKT residuals, recomputed from the data, pass ``tol``. None where
    no item to solve has a positive definite ``Q``."""
    B, n, _ = d.Q.shape
    m = d.G.shape[1]
    dev = d.Q.device
    L, info = torch.linalg.cholesky_ex(d.Q)     # (not regularized: a test of definiteness)
    todo = active & (info == 0)
    if not bool(todo.any()):
        return None
    t0 = torch.linalg.solve_triangular(L, -d.p, upper=False)
    x0 = torch.linalg.solve_triangular(L.transpose(1, 2), t0, upper=True)   # -Q^-1 p
    V = torch.linalg.solve_triangular(L, d.Gt, upper=False)                 # (B, n, m)
    S = V.transpose(1, 2) @ V
    Sd = S.diagonal(dim1=1, dim2=2)
    Sd.add_(Sd.abs() * d.reg_rel + d.reg_abs * d.reg_rel)
    r = ipm.matvec_add(-d.h, d.G, x0, d.Gt)                                 # G x0 - h
    thr = ipm.violation_floor(d, tol)                   # a violation worth a step
    thr = torch.where(todo, thr, torch.inf).view(B, 1, 1)   # items not to solve never start
    r_thr = r - thr
    held = torch.zeros(B, m, 1, dtype=torch.bool, device=dev)
    u = torch.zeros_like(r)
    eye = torch.eye(m, dtype=S.dtype, device=dev)
    Ls, ok = eye.expand(B, m, m), todo
    order = torch.arange(m, device=dev).expand(B, m)
    Jk = held

    def next_set(held, u):
        """The rows of W with u >= 0 and every row violated past the threshold."""
        return torch.where(held, u, torch.baddbmm(r_thr, S, u, alpha=-1.0)) >= 0

    sets = [held]
    settled = None
    for _ in range(min(defaults.ACTIVE_SET_PDAS_ITERS, maxiter)):
        new = next_set(held, u)
        # the loop's one host sync: whether every item settled, and the largest |W|
        count = new.sum(dim=1)
        same, most = torch.stack([(new == held).all().to(count.dtype), count.max()]).tolist()
        if same:
            settled = torch.ones(B, dtype=torch.bool, device=dev)
            break
        held = new
        # the rows of W first (in their order), k = the largest |W| over the batch;
        # the other rows of the first k are dummies (a unit diagonal, no coupling)
        k = max(1, int(most))
        order = torch.sort((~held).view(B, m).to(torch.uint8), dim=1, stable=True).indices
        rows = order[:, :k].unsqueeze(-1)
        Jk = held.gather(1, rows)
        flat = (rows * m + rows.transpose(1, 2)).view(B, k * k)    # one gather, not two
        Sk = S.view(B, m * m).gather(1, flat).view(B, k, k)
        Ls, info_s = torch.linalg.cholesky_ex(torch.where(Jk & Jk.transpose(1, 2), Sk,
                                                          eye[:k, :k]))
        ok = info_s == 0
        uk = torch.cholesky_solve(torch.where(Jk, r.gather(1, rows), 0.0), Ls)
        u = torch.zeros_like(r).scatter_(1, rows, uk)
        sets.append(held)
    if settled is None:                 # the cap: which items reproduce their set
        settled = (next_set(held, u) == held).all(dim=1).view(B)
    x = torch.linalg.solve_triangular(L.transpose(1, 2), torch.baddbmm(t0, V, u, alpha=-1.0),
                                      upper=True)
    z = u.clamp(min=0.0)
    s = (d.h - ipm.matvec(d.G, x, d.Gt)).clamp(min=0.0)
    res = ipm.residuals(d, x, s, z, None)
    err = torch.maximum(torch.maximum(res.dres, res.pres), res.gap)
    passed = (err <= tol) & settled & todo & ok
    status = torch.where(passed, int(Status.OPTIMAL), int(Status.MAX_ITER)).to(torch.int8)
    iters = active_set.set_changes(sets)
    fac = None
    if want_factor:
        # the active-set KKT system of W: L of Q (no rows added, c = 0), the rows of
        # W first as the constraints, then the dummies of the last factorization
        # (zero columns of V, unit rows of Ls)
        k = Jk.shape[1]
        Vk = V.gather(2, order[:, :k].unsqueeze(1).expand(B, n, k)) * Jk.transpose(1, 2)
        fac = ipm.SplitFactor(L, Ls, Vk, torch.zeros_like(u), held, order, Jk, ok & todo)
    return ipm.Result(x, None, z, s, status, iters, res.pres, res.dres, res.gap, fac)
