"""Primal-dual interior point for smooth convex inequality and affine equality constraints.

``min_x f(x, params_obj)  s.t.  g(x, params_ineq) ≤ 0,  A x = b``  (``params_eq = (A, b)``),

with gradients and Hessians of ``f`` and ``g`` from ``torch.func``. The method
is the primal-dual interior point of Boyd & Vandenberghe (§11.7): Newton steps
on the perturbed KKT system, a step kept inside ``λ > 0`` and ``g < 0``, and a
backtracking line search on the residual norm. A phase I (minimise ``s`` s.t.
``g(x) ≤ s``) finds a strictly feasible start when ``init`` is not one and
proves infeasibility when its optimum is positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from optlayer import defaults
from optlayer.conditions import kkt
from optlayer.errors import OptTypeError
from optlayer.solvers._base import (
    IterativeSolver,
    OptStep,
    batch_shape_of,
    hessian,
    norm,
    select,
    value_and_grad,
)
from optlayer.status import Status

__all__ = ["ConvexInteriorPoint", "InteriorPointState"]


class InteriorPointState(NamedTuple):
    """State of :class:`ConvexInteriorPoint`.

    Attributes:
        iter_num, status: as for every solver.
        error: ``max(‖r_pri‖, ‖r_dual‖, η̂)`` with the surrogate gap ``η̂ = -g(x)ᵀλ``.
        gap: ``η̂`` per item.
        primal_residual: ``‖Ax - b‖``; dual_residual: ``‖∇f + ∂gᵀλ + Aᵀν‖``.
    """

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    gap: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor


def _mv(M, v):
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _affine(x, params_eq):
    A, b = params_eq
    return _mv(A, x) - b


@dataclass(eq=False)
class ConvexInteriorPoint(IterativeSolver):
    """Primal-dual interior point for ``min f(x) s.t. g(x) ≤ 0, Ax = b`` (f, g convex, smooth).

    The solution is ``(x, nu, lam)`` (``nu`` for ``Ax = b``, ``lam ≥ 0`` for
    ``g ≤ 0``; an absent block is an empty tensor of shape ``(*batch, 0)``).
    Optimality map: the KKT residual
    ``(∇f + ∂gᵀλ + Aᵀν, Ax - b, λ∘g(x))`` (:func:`optlayer.conditions.kkt`),
    differentiable in ``params_obj``, ``params_eq = (A, b)`` and ``params_ineq``
    where strict complementarity holds.

    Statuses: OPTIMAL when the residuals and the gap are below ``tol``;
    INFEASIBLE when phase I proves ``min_x max_i g_i(x) > 0`` (no point satisfies
    the inequalities and equalities); NUMERICAL_ERROR when no strictly feasible
    point can be found although the optimum of phase I is ≈ 0 (Slater fails).

    Args:
        fun: ``f(x, params_obj)``, one value per batch item (``x``: ``(*batch, n)``).
        ineq_fun: ``g(x, params_ineq) -> (*batch, r)``, or None.
        mu: barrier parameter growth factor.
        alpha, beta: line-search sufficient decrease and shrink factors.
        phase_one_fun: inequality function for phase I only, or None (``ineq_fun``).
            It must describe the same strictly feasible set, e.g. ``norm2(u) - s``
            (defined everywhere) for ``sum_squares(u) / s - s`` (smooth, but defined
            only for ``s > 0``).

    Example:
        >>> import torch
        >>> f = lambda x, c: (c * x).sum(-1)               # min cᵀx  s.t.  ‖x‖² ≤ 1
        >>> g = lambda x, r: (x ** 2).sum(-1, keepdim=True) - r
        >>> c = torch.tensor([3.0, 4.0], dtype=torch.float64)
        >>> x, nu, lam = ConvexInteriorPoint(f, g).run(torch.zeros(2, dtype=torch.float64),
        ...                                            c, None, 1.0).params
        >>> x
        tensor([-0.6000, -0.8000], dtype=torch.float64)
    """

    fun: Callable
    ineq_fun: Callable | None = None
    mu: float = 10.0
    alpha: float = 0.01
    beta: float = 0.5
    maxls: int = 50
    phase_one_fun: Callable | None = None

    family: ClassVar[str] = "interior_point"

    # -- maps -----------------------------------------------------------------------
    def _g(self, x, params_ineq):
        if self.ineq_fun is None:
            return x.new_zeros(x.shape[:-1] + (0,))
        return self.ineq_fun(x, params_ineq)

    def optimality_fun(self, params, params_obj=None, params_eq=None, params_ineq=None):
        """KKT residual ``(∇f + ∂gᵀλ + Aᵀν, Ax - b, λ∘g(x))`` at ``params = (x, nu, lam)``."""
        F = kkt(self.fun, _affine if params_eq is not None else None, self.ineq_fun)
        return F(params, params_obj, params_eq, params_ineq)

    def _lagrangian(self, z, lam, params_obj, params_ineq):
        """``f(z) + λᵀg(z)`` per item."""
        val = self.fun(z, params_obj)
        if self.ineq_fun is not None:
            val = val + (lam * self.ineq_fun(z, params_ineq)).sum(-1)
        return val

    def _lagrangian_grad(self, x, nu, lam, params_obj, params_eq, params_ineq):
        _, gr = value_and_grad(self._lagrangian, x, lam, params_obj, params_ineq)
        if params_eq is not None:
            gr = gr + _mv(params_eq[0].mT, nu)
        return gr

    def _jac_g(self, x, params_ineq):
        r = self._g(x, params_ineq).shape[-1]
        if r == 0:
            return x.new_zeros(x.shape[:-1] + (0, x.shape[-1]))
        _, vjp = torch.func.vjp(lambda z: self.ineq_fun(z, params_ineq), x)
        eye = torch.eye(r, dtype=x.dtype, device=x.device)
        rows = torch.func.vmap(lambda e: vjp(e.expand(x.shape[:-1] + (r,)))[0])(eye)
        return rows.movedim(0, -2)

    def _residuals(self, x, nu, lam, t, params_obj, params_eq, params_ineq):
        gx = self._g(x, params_ineq)
        rd = self._lagrangian_grad(x, nu, lam, params_obj, params_eq, params_ineq)
        rc = -lam * gx - 1.0 / t.unsqueeze(-1)
        rp = _affine(x, params_eq) if params_eq is not None else x.new_zeros(x.shape[:-1] + (0,))
        return gx, rd, rc, rp

    # -- solver protocol --------------------------------------------------------------
    def _split_init(self, init, params_eq, params_ineq):
        if isinstance(init, (tuple, list)):
            if len(init) != 3:
                raise OptTypeError(f"{self.name}: init must be x or (x, nu, lam)")
            return tuple(init)
        x = init
        gx = self._g(x, params_ineq)
        lam = 1.0 / (-gx).clamp_min(1e-3)  # λ∘(-g) ≈ 1 (centred start)
        q = 0 if params_eq is None else params_eq[0].shape[-2]
        nu = x.new_zeros(x.shape[:-1] + (q,))
        return x, nu, lam

    def init_state(self, init, params_obj=None, params_eq=None, params_ineq=None):
        x, nu, lam = init
        batch = batch_shape_of(x)
        opts = {"dtype": x.dtype, "device": x.device}
        gap = -(self._g(x, params_ineq) * lam).sum(-1)
        return InteriorPointState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=x.device),
            error=torch.full(batch, math.inf, **opts),
            status=self._start_status(x, (params_obj, params_eq, params_ineq), {}),
            gap=gap,
            primal_residual=torch.full(batch, math.inf, **opts),
            dual_residual=torch.full(batch, math.inf, **opts),
        )

    def update(self, params, state, params_obj=None, params_eq=None, params_ineq=None):
        x, nu, lam = params
        P = (params_obj, params_eq, params_ineq)
        r = lam.shape[-1]
        n = x.shape[-1]
        gx, rd, _, rp = self._residuals(x, nu, lam, torch.ones_like(lam[..., 0]), *P)
        gap = -(gx * lam).sum(-1)
        # Barrier weight from the surrogate gap, but no sharper than the residuals allow:
        # a gap far below the dual/primal residual would pin x to the boundary of g <= 0
        # (tiny steps, a stall), so the centring target follows the largest of the three.
        target = torch.maximum(gap, torch.maximum(norm(rd), norm(rp)))
        t = self.mu * max(r, 1) / target.clamp_min(torch.finfo(x.dtype).tiny)
        rc = -lam * gx - 1.0 / t.unsqueeze(-1)
        Dg = self._jac_g(x, params_ineq)

        H = hessian(self._lagrangian, x, lam, params_obj, params_ineq)
        w = -lam / gx  # > 0 in the interior
        Hred = H + Dg.mT @ (w.unsqueeze(-1) * Dg)
        # A tiny ridge keeps directions that no term curves (a variable absent from
        # f and g, as in phase I) solvable; their gradient is zero, so they stay put.
        scale = torch.diagonal(Hred, dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
        ridge = torch.finfo(x.dtype).eps * (1 + scale)
        Hred = Hred + torch.diag_embed(ridge.expand(x.shape))
        rhs = -rd - _mv(Dg.mT, rc / gx)
        if params_eq is not None:
            A = params_eq[0].expand(x.shape[:-1] + params_eq[0].shape[-2:])
            q = A.shape[-2]
            top = torch.cat([Hred, A.mT], -1)
            bot = torch.cat([A, A.new_zeros(A.shape[:-1] + (q,))], -1)
            K = torch.cat([top, bot], -2)
            sol, _ = torch.linalg.solve_ex(K, torch.cat([rhs, -rp], -1))
            dx, dnu = sol[..., :n], sol[..., n:]
        else:
            dx, _ = torch.linalg.solve_ex(Hred, rhs)
            dnu = nu
        dlam = (rc - lam * _mv(Dg, dx)) / gx

        # Largest step keeping λ > 0, then backtracking for g < 0 and residual decrease.
        ratio = torch.where(dlam < 0, -lam / torch.where(dlam < 0, dlam, -1), math.inf)
        smax = torch.cat([torch.ones_like(gap).unsqueeze(-1), ratio], -1).amin(-1)
        s = 0.99 * smax
        res0 = torch.sqrt((rd**2).sum(-1) + (rc**2).sum(-1) + (rp**2).sum(-1))
        accepted = torch.zeros_like(gap, dtype=torch.bool)
        best = (x, nu, lam)
        for _ in range(self.maxls):
            sc = s.unsqueeze(-1)
            xt, lt = x + sc * dx, lam + sc * dlam
            nt = nu + sc * dnu if params_eq is not None else nu
            gt, rdt, rct, rpt = self._residuals(xt, nt, lt, t, *P)
            res = torch.sqrt((rdt**2).sum(-1) + (rct**2).sum(-1) + (rpt**2).sum(-1))
            feas = (gt < 0).all(-1)
            ok = feas & (res <= (1 - self.alpha * s) * res0) & torch.isfinite(res)
            best = select(ok & ~accepted, (xt, nt, lt), best)
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            s = torch.where(accepted, s, s * self.beta)
        x1, nu1, lam1 = best
        gx1, rd1, _, rp1 = self._residuals(x1, nu1, lam1, t, *P)
        gap1 = -(gx1 * lam1).sum(-1)
        pr, dr = norm(rp1), norm(rd1)
        error = torch.maximum(torch.maximum(pr, dr), gap1)
        # An item whose line search failed entirely cannot progress: flag it.
        error = torch.where(accepted, error, torch.full_like(error, math.nan))
        new = state._replace(error=error, gap=gap1, primal_residual=pr, dual_residual=dr)
        return OptStep((x1, nu1, lam1), new)

    # -- phase I and run ---------------------------------------------------------------
    def _phase_one(self, x0, params_eq, params_ineq, tol):
        """Minimise ``s`` s.t. ``g(x) - s ≤ 0``, ``s ≥ -1``, ``Ax = b`` from a feasible (x0, s0)."""
        g = self.phase_one_fun or self.ineq_fun
        s0 = g(x0, params_ineq).amax(-1, keepdim=True) + 1.0

        def f1(z, _p):
            return z[..., -1]

        def g1(z, p):
            s = z[..., -1:]
            return torch.cat([g(z[..., :-1], p) - s, -s - 1.0], -1)

        eq1 = None
        if params_eq is not None:
            A, b = params_eq
            eq1 = (torch.cat([A, A.new_zeros(A.shape[:-1] + (1,))], -1), b)
        maxiter = defaults.MAXITER["interior_point"] if self.maxiter is None else self.maxiter
        solver = _PhaseOne(
            f1, g1, mu=self.mu, alpha=self.alpha, beta=self.beta, maxls=self.maxls,
            maxiter=defaults.PHASE_ONE_MAXITER_FACTOR * maxiter, tol=tol,
            implicit_diff=False, on_failure="ignore", check_every=self.check_every,
        )
        z0 = torch.cat([x0, s0], -1)
        init = solver._split_init(z0, eq1, params_ineq)
        (z, _, _), st = solver._loop(init, None, eq1, params_ineq)
        return z[..., :-1], z[..., -1], st

    def _loop(self, init, params_obj=None, params_eq=None, params_ineq=None):
        x0 = init[0] if isinstance(init, (tuple, list)) else init
        if isinstance(init, (tuple, list)) or self.ineq_fun is None:
            return super()._loop(self._split_init(init, params_eq, params_ineq), params_obj,
                                 params_eq, params_ineq)
        _, tol = self._settings(x0.dtype)
        g0 = self._g(x0, params_ineq)
        need = ~(g0 < 0).all(-1)
        phase_status = None
        if bool(need.any()):
            x1, s1, st1 = self._phase_one(x0, params_eq, params_ineq, tol)
            x0 = torch.where(need.unsqueeze(-1), x1, x0)
            margin = math.sqrt(tol)
            infeasible = need & (s1 > margin)
            stuck = need & ~infeasible & ~(self._g(x0, params_ineq) < 0).all(-1)
            phase_status = torch.where(
                infeasible, int(Status.INFEASIBLE),
                torch.where(stuck, int(Status.NUMERICAL_ERROR), -1),
            ).to(torch.int8)
            # A phase I that could not finish (equalities inconsistent, ...) keeps its status.
            unfinished = need & (st1.status != int(Status.OPTIMAL)) & ~infeasible
            phase_status = torch.where(unfinished, st1.status, phase_status)
        start = self._split_init(x0, params_eq, params_ineq)
        if phase_status is None:
            return super()._loop(start, params_obj, params_eq, params_ineq)
        self._pending = phase_status
        try:
            return super()._loop(start, params_obj, params_eq, params_ineq)
        finally:
            self._pending = None

    def _start_status(self, init, args, kwargs) -> torch.Tensor:
        status = super()._start_status(init, args, kwargs)
        pending = getattr(self, "_pending", None)
        if pending is not None:
            status = torch.where(pending >= 0, pending, status)
        return status

    def run(self, init, params_obj=None, params_eq=None, params_ineq=None) -> OptStep:
        """Solve from ``init`` (``x0``, or ``(x0, nu0, lam0)`` with ``g(x0) < 0``, ``lam0 > 0``).

        Args:
            init: starting point; need not be feasible (phase I runs where ``g(x0) ≥ 0``).
            params_obj: passed to ``fun``.
            params_eq: ``(A, b)`` with ``A`` of shape ``(*batch, q, n)``, or None.
            params_ineq: passed to ``ineq_fun``.

        Returns:
            ``OptStep((x, nu, lam), state)``.
        """
        return super().run(init, params_obj, params_eq, params_ineq)




@dataclass(eq=False)
class _PhaseOne(ConvexInteriorPoint):
    """Phase I of :class:`ConvexInteriorPoint` on ``z = (x, s)``: an item is done as soon
    as ``s < 0`` (then ``g(x) ≤ s < 0``: a strictly feasible start); otherwise it runs
    to the optimum ``s*``, and ``s* > 0`` certifies infeasibility."""

    def update(self, params, state, *args):
        out = super().update(params, state, *args)
        found = out.params[0][..., -1] < 0
        error = torch.where(found, torch.zeros_like(out.state.error), out.state.error)
        return OptStep(out.params, out.state._replace(error=error))
