"""A convex quadratic objective under one convex quadratic row: Newton on its multiplier.

``min_x ½xᵀQx + pᵀx  s.t.  g(x) = ½xᵀPx + qᵀx + c ≤ 0``  (``Q`` positive definite,
``P`` positive semidefinite), per batch item.

The problem has one multiplier ``λ ≥ 0``. For each ``λ`` the Lagrangian's minimiser is
``x(λ) = -(Q + λP)⁻¹(p + λq)``, and the dual's derivative is ``h(λ) = g(x(λ))``, a
nonincreasing function. The solution is ``x(0)`` where ``h(0) ≤ 0`` (the row is
inactive); elsewhere it is ``x(λ*)`` at the root ``h(λ*) = 0``: the secular equation of
trust-region methods. Newton's method finds that root, applied as Moré and Sorensen do
to ``ψ(λ) = (h(λ) + κ)^(-1/2)`` with ``κ = -min_x g(x)`` (for ``g = ‖Fx - t‖² - r²`` that
is ``1 / ‖Fx(λ) - t‖``, nearly linear in ``λ``). In the coordinates ``y = VᵀLᵀx``
(``Q = LLᵀ``, ``L⁻¹PL⁻ᵀ = V diag(d) Vᵀ``: one Cholesky factorization and one
eigendecomposition per call) ``yᵢ(λ) = -(aᵢ + λbᵢ) / (1 + λdᵢ)`` and
``h(λ) + κ = Σᵢ wᵢ / (1 + λdᵢ)²`` with ``wᵢ ≥ 0``: each iteration is a few elementwise
operations, ``ψ`` is concave (as for trust regions), and from ``λ = 0`` the iterates
increase to the root without passing it, quadratically at the end (4 to 9 iterations at
the robust_ls example's sizes, against 10 to 12 for Newton on ``h`` itself, and 12 to 13
interior point steps). Where ``g`` is unbounded below (``q`` outside the range of ``P``,
``κ = ∞``) the iteration is Newton on ``h``, convex there.

This covers what it can certify, and says so per item: an item whose ``Q`` is not
positive definite (its Cholesky factorization fails), whose row has no strictly feasible
point to a margin (``κ`` not above roundoff), or whose iteration does not reach ``tol``
gets ``Status.NUMERICAL_ERROR``; its caller hands such items to the general interior point
(:class:`~optlayer.solvers.ConvexInteriorPoint`, which certifies infeasibility). Items
are OPTIMAL when each part of the KKT error ``max(‖Qx + p + λ(Px + q)‖, g(x)₊, λ|g(x)|)``
is within ``tol`` (absolute, as the interior point's) or within the roundoff of its
terms; ``x`` comes from one factorization of ``Q + λP`` at the final ``λ``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from optlayer import defaults
from optlayer.status import Status

__all__ = ["OneRowSolution", "solve_one_quadratic_row"]


class OneRowSolution(NamedTuple):
    """Result of :func:`solve_one_quadratic_row`: ``x (B, n)``, the multiplier
    ``lam (B, 1)``, ``status (B,)`` (OPTIMAL or NUMERICAL_ERROR, see the module doc), the
    Newton ``iterations`` per item and the KKT ``error`` per item."""

    x: Tensor
    lam: Tensor
    status: Tensor
    iterations: Tensor
    error: Tensor


def _bmv(M: Tensor, v: Tensor) -> Tensor:
    return torch.bmm(M, v.unsqueeze(-1)).squeeze(-1)


def _eigen_form(Q, p, P, q):
    """The problem in the coordinates ``y = VᵀLᵀx`` (``Q = LLᵀ``, ``L⁻¹PL⁻ᵀ = V diag(d) Vᵀ``):
    ``min ½|y|² + aᵀy  s.t.  ½ Σ dᵢyᵢ² + bᵀy + c ≤ 0``. Returns ``(d, a, b, info)``
    (``info`` nonzero where ``Q`` is not positive definite)."""
    L, info = torch.linalg.cholesky_ex(Q)
    n = P.shape[-1]
    # (an item whose Q is not definite takes L = I: its data stay finite for eigh, and
    # the item is declined)
    L = torch.where((info == 0).view(-1, 1, 1), L, torch.eye(n, dtype=L.dtype, device=L.device))
    Li = torch.linalg.solve_triangular(L, torch.cat([P, p.unsqueeze(-1), q.unsqueeze(-1)], -1),
                                       upper=False)
    M = torch.linalg.solve_triangular(L, Li[..., :n].mT, upper=False)   # L⁻¹PL⁻ᵀ
    d, V = torch.linalg.eigh(M)
    ab = torch.bmm(V.mT, Li[..., n:])
    return d.clamp_min(0.0), ab[..., 0], ab[..., 1], info


def _kappa(d, b, c):
    """``-min_y (½ Σ dᵢyᵢ² + bᵀy + c)``: ``½ Σ bᵢ²/dᵢ - c`` where ``b`` vanishes (to
    roundoff) on the null space of ``diag(d)``, ``+inf`` where it does not (the row falls
    without bound along it)."""
    eps = torch.finfo(d.dtype).eps
    big = d > (d.shape[-1] * eps) * d.amax(-1, keepdim=True).clamp_min(eps)
    inside = torch.where(big, 0.0, b.abs()).amax(-1) <= math.sqrt(eps) * (
        1.0 + torch.linalg.vector_norm(b, dim=-1))
    k = 0.5 * torch.where(big, b * b / torch.where(big, d, 1.0), 0.0).sum(-1) - c
    return torch.where(inside, k, math.inf)


def _row(d, a, b, c, lam, one):
    """``(g, -h')`` at ``λ``: with ``uᵢ = (aᵢ + λbᵢ) / (1 + λdᵢ)`` (``y = -u``) and the row's
    gradient ``bᵢ - dᵢuᵢ``, ``g = c - ½ Σ uᵢ(2bᵢ - dᵢuᵢ)`` and
    ``-h' = Σ (bᵢ - dᵢuᵢ)² / (1 + λdᵢ)``."""
    lc = lam.unsqueeze(-1)
    den = torch.addcmul(one, lc, d)
    u = torch.addcmul(a, lc, b).div_(den)
    gy = torch.addcmul(b, d, u, value=-1.0)
    g = torch.add(c, (u * (gy + b)).sum(-1), alpha=-0.5)
    return g, (gy * gy).div_(den).sum(-1)


def solve_one_quadratic_row(Q: Tensor, p: Tensor, P: Tensor, q: Tensor, c: Tensor, *,
                            tol: float, maxiter: int = defaults.MAXITER["newton"]
                            ) -> OneRowSolution:
    """Solve ``min ½xᵀQx + pᵀx s.t. ½xᵀPx + qᵀx + c ≤ 0`` for a batch (module doc).

    Args:
        Q, P: ``(B, n, n)`` symmetric, ``Q`` positive definite and ``P`` positive
            semidefinite where the item is to be solved here.
        p, q: ``(B, n)``.
        c: ``(B,)``.
        tol: the KKT error an item must reach to be OPTIMAL.
        maxiter: Newton iterations at most.

    Returns:
        :class:`OneRowSolution`.
    """
    B = p.shape[0]
    eps = torch.finfo(p.dtype).eps
    try:
        d, a, b, info = _eigen_form(Q, p, P, q)
    except torch.linalg.LinAlgError:    # (eigh did not converge: every item declined)
        nan = p.new_full((B,), math.nan)
        return OneRowSolution(torch.full_like(p, math.nan), nan.unsqueeze(-1),
                              torch.full((B,), int(Status.NUMERICAL_ERROR), dtype=torch.int8,
                                         device=p.device),
                              torch.zeros(B, dtype=torch.int64, device=p.device), nan)
    kappa = _kappa(d, b, c)                  # +inf where g is unbounded below
    one = torch.ones_like(d)
    lam = p.new_zeros(B)
    g, mdh = _row(d, a, b, c, lam, one)
    # an item is solved here where Q is definite and the row has a strictly feasible
    # point to a margin (the general interior point certifies the rest)
    finite = torch.isfinite(kappa)
    usable = (info == 0) & (kappa > math.sqrt(eps) * (1.0 + c.abs()))
    active = usable & (g > 0)
    inv_kappa = torch.where(finite, 1.0 / kappa, 0.0)
    # g is converged at its roundoff (eps times its terms, which |c| and kappa bound near
    # the root) or at |g| <= tol / (10 (1 + lam)), which bounds |g| and lam |g| by tol / 10;
    # a non-finite g stops its item (declined below)
    noise = 16 * eps * (c.abs() + torch.where(finite, kappa, 0.0))
    iters = torch.zeros(B, dtype=torch.int64, device=p.device)
    for _ in range(maxiter):
        done = ~active | ~(g.abs() > torch.maximum(noise, (0.1 * tol) / (1.0 + lam)))
        if bool(done.all()):
            break
        iters += ~done
        # Newton on psi = (g + kappa)^(-1/2): with s = (g + kappa) / kappa the step is
        # -g / h' * 2s / (1 + sqrt(s)) (Newton on h itself where kappa is infinite: s = 1).
        # psi is concave (g + kappa = sum_i w_i / (1 + lam d_i)^2, w_i >= 0, as for trust
        # regions; h is convex where kappa is infinite), so from h > 0 the steps increase
        # lam to the root without passing it, up to roundoff there
        sr = torch.addcmul(one[:, 0], g, inv_kappa).clamp_min(eps)
        step = g / mdh * (2.0 * sr / (1.0 + sr.sqrt()))
        lam = torch.where(done, lam, lam + step)
        g, mdh = _row(d, a, b, c, lam, one)
    # x from the original data at the final multiplier (one factorization: the
    # transformed coordinates lose accuracy with the conditioning of Q)
    L, info = torch.linalg.cholesky_ex(torch.addcmul(Q, lam.view(-1, 1, 1), P))
    x = torch.cholesky_solve(torch.addcmul(p, lam.unsqueeze(-1), q).neg_().unsqueeze(-1),
                             L).squeeze(-1)
    Px, Qx = _bmv(P, x), _bmv(Q, x)
    half, lin = 0.5 * (x * Px).sum(-1), (q * x).sum(-1)
    g = half + lin + c
    lc = lam.unsqueeze(-1)
    stat = torch.linalg.vector_norm(Qx + p + lc * (Px + q), dim=-1)
    gap = lam * g.abs()
    error = torch.maximum(stat, torch.maximum(g.clamp_min(0.0), gap))
    # OPTIMAL: each residual within tol or within the roundoff of its terms (16 eps times
    # their size: a row of terms ~1e7 is not computed to 1e-10)
    norm = torch.linalg.vector_norm
    g_floor = 16 * eps * (half.abs() + lin.abs() + c.abs())
    s_floor = 16 * eps * (norm(Qx, dim=-1) + norm(p, dim=-1)
                          + lam * (norm(Px, dim=-1) + norm(q, dim=-1)))
    ok = usable & (info == 0) & (stat <= s_floor.clamp_min(tol)) \
        & (g <= g_floor.clamp_min(tol)) & (gap <= (lam * g_floor).clamp_min(tol))
    status = torch.where(ok, int(Status.OPTIMAL), int(Status.NUMERICAL_ERROR)).to(torch.int8)
    return OneRowSolution(x, lam.unsqueeze(-1), status, iters, error)
