"""Primal-dual interior point for smooth convex inequality and affine equality constraints.

``min_x f(x, params_obj)  s.t.  g(x, params_ineq) ≤ 0,  A x = b``  (``params_eq = (A, b)``),

with gradients and Hessians of ``f`` and ``g`` from derivative models
(:mod:`optlayer.solvers.convex_models`: autograd by default, or data such as
``(Q, p)``, ``(G, h)`` passed by the caller). The method is the primal-dual
interior point of Boyd & Vandenberghe (§11.7) with slack variables: Newton
steps on the perturbed KKT system of ``g(x) + s = 0``, ``s∘λ = τ``, a step
kept inside ``s, λ > 0`` (fraction 0.99 to the boundary), and a backtracking
line search on the residual norm with ``g`` finite. Affine rows stay exactly
feasible; curved rows may be crossed slightly during the iterations (a trial
point strictly inside a row that the step's linearisation crossed takes
``s = -g`` for it). A phase I (minimise ``s`` s.t. ``g(x) ≤ s``) finds a strictly
feasible start when ``init`` is not one and proves infeasibility when its optimum
is positive.

Once every running item's error is below ``polish_below`` (on problems whose KKT
system has at most ``defaults.CONVEX_POLISH_MAX_SIZE`` rows), the iteration tries to
finish by Newton's method on the KKT equations of the active set ``{λ > s}`` (the
rows in it held at ``g = 0``, the others at ``λ = 0``): where the set is right, Newton
converges quadratically, so the interior point's last iterations, about a hundredfold
each, are skipped. After two Newton steps the set is corrected once (rows whose
multiplier has turned negative leave, rows the point violates join); an item stops
where the polished point passes the KKT check, and the others iterate on.
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
from optlayer.linalg._common import any_all_true, functorch_active, lu_factor
from optlayer.solvers._base import RUNNING, IterativeSolver, OptStep, batch_shape_of, norm
from optlayer.solvers.convex_models import (
    AutogradObjective,
    AutogradRows,
    NoRows,
    PhaseOneRows,
    QuadraticObjective,
    _gram,
    _mv,
    _tmv,
)
from optlayer.status import Status

__all__ = ["ConvexInteriorPoint", "InteriorPointState"]


class InteriorPointState(NamedTuple):
    """State of :class:`ConvexInteriorPoint`.

    Attributes:
        iter_num, status: as for every solver.
        error: ``max(‖r_pri‖, ‖r_dual‖, η̂)`` with the surrogate gap ``η̂ = sᵀλ``.
        gap: ``η̂`` per item (``s`` the slacks of ``g(x) + s = 0``).
        primal_residual: ``‖(Ax - b, g(x) + s)‖``; dual_residual: ``‖∇f + ∂gᵀλ + Aᵀν‖``.
    """

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    gap: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor


def _affine(x, params_eq):
    A, b = params_eq
    return _mv(A, x) - b


def _unpack(v, sizes):
    """``(x, nu, lam, s)`` views of the packed iterate ``v``."""
    n, q, r = sizes
    return v.split_with_sizes([n, q, r, r], dim=-1)


def _bcast_to(mask, t):
    """``mask (*batch)`` viewed to broadcast against ``t (*batch, ...)``."""
    return mask.reshape(mask.shape + (1,) * (t.dim() - mask.dim()))


def _pick(mask, new, old):
    """``select`` for a flat tuple of ``(*batch)`` / ``(*batch, k)`` tensors (no tree walk)."""
    nd = mask.dim()
    col = mask.unsqueeze(-1)
    return tuple(torch.where(col if a.dim() > nd else mask, a, b)
                 for a, b in zip(new, old, strict=True))


def _residuals(g, sl, lam, rd, rp):
    """``(error, gap, primal, dual)`` of a point with rows ``g``, slacks ``sl``,
    multipliers ``lam``, dual residual ``rd`` and equality residual ``rp`` (None without
    equalities): ``error = max(‖(Ax - b, g + s)‖, ‖r_dual‖, sᵀλ)``."""
    gap = (sl * lam).sum(-1)
    pr = norm(g + sl)
    if rp is not None:
        pr = torch.linalg.vector_norm(torch.stack([pr, norm(rp)], -1), dim=-1)
    dr = norm(rd)
    return torch.maximum(torch.maximum(pr, dr), gap), gap, pr, dr


def _ridge_(K):
    """Add in place the ridge of the Newton systems: ``(1 + max|diag K|) eps`` on the
    diagonal keeps directions that no term curves solvable (the scale is detached: the
    ridge carries no gradient)."""
    diag = torch.diagonal(K, dim1=-2, dim2=-1)
    diag.add_((1 + diag.detach().abs().amax(-1, keepdim=True)) * torch.finfo(K.dtype).eps)


def _boundary_step(v, dv, fraction):
    """``min(1, fraction * a)`` per item, ``a`` the largest step with ``v + a dv >= 0``
    (``v > 0``): ``fraction / max(fraction, max_i(-dv_i / v_i))``, finite everywhere (no
    infinite ratio for the entries that grow, so unrolled gradients stay finite)."""
    if not v.shape[-1]:
        return v.new_ones(v.shape[:-1])
    return fraction / (-dv / v).amax(-1).clamp_min(fraction)


@dataclass(eq=False)
class ConvexInteriorPoint(IterativeSolver):
    """Primal-dual interior point for ``min f(x) s.t. g(x) ≤ 0, Ax = b`` (f, g convex, smooth).

    The solution is ``(x, nu, lam)`` (``nu`` for ``Ax = b``, ``lam ≥ 0`` for
    ``g ≤ 0``; an absent block is an empty tensor of shape ``(*batch, 0)``).
    Optimality map: the KKT residual
    ``(∇f + ∂gᵀλ + Aᵀν, Ax - b, λ∘g(x))`` (:func:`optlayer.conditions.kkt`),
    differentiable in ``params_obj``, ``params_eq = (A, b)`` and ``params_ineq``
    where strict complementarity holds.

    In ``torch.inference_mode`` with ``implicit_diff=False`` the loop runs in it (a tenth
    less time at small sizes) and returns inference tensors; the autograd models step out
    of it for each evaluation.

    Statuses: OPTIMAL when the residuals and the gap are below ``tol``;
    INFEASIBLE when phase I proves ``min_x max_i g_i(x) > 0`` (no point satisfies
    the inequalities and equalities); NUMERICAL_ERROR when no strictly feasible
    point can be found although the optimum of phase I is ≈ 0 (Slater fails).

    Args:
        fun: ``f(x, params_obj)``, one value per batch item (``x``: ``(*batch, n)``).
        ineq_fun: ``g(x, params_ineq) -> (*batch, r)``, or None.
        mu: centring: the complementarity target is
            ``τ = max(η̂, ‖r_dual‖, ‖r_pri‖) / (mu r)``, and a tenth of that after a
            step of length ``≥ 0.9`` when the residuals are at most ``3 η̂``.
        alpha, beta: line-search sufficient decrease and shrink factors.
        polish_below: the error below which the polish on the active set is tried
            (see the module doc; again after each further hundredfold decrease); None:
            ``defaults.CONVEX_POLISH_BELOW``; 0: never.
        phase_one_fun: inequality function for phase I only, or None (``ineq_fun``).
            It must describe the same strictly feasible set, e.g. ``norm2(u) - s``
            (defined everywhere) for ``sum_squares(u) / s - s`` (smooth, but defined
            only for ``s > 0``).
        objective_model, ineq_model, phase_one_model: optional callables
            ``params_obj -> model`` / ``params_ineq -> model`` that replace autograd on
            ``fun``, ``ineq_fun`` and the phase I rows with the protocol of
            :mod:`optlayer.solvers.convex_models` (they must describe the same
            functions: ``optimality_fun`` still differentiates ``fun`` and ``ineq_fun``).

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
    polish_below: float | None = None
    phase_one_fun: Callable | None = None
    objective_model: Callable | None = None
    ineq_model: Callable | None = None
    phase_one_model: Callable | None = None

    family: ClassVar[str] = "interior_point"
    # in inference mode (without implicit_diff) the loop stays there: the autograd models
    # step out of it for each evaluation, the data models need no autograd
    inference_loop: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.maxls, int) or self.maxls < 1:
            raise ValueError(f"{self.name}: maxls must be a positive int (line-search trials "
                             f"per iteration); got {self.maxls!r}")
        if self.polish_below is not None and not self.polish_below >= 0:
            raise ValueError(f"{self.name}: polish_below must be a float >= 0 (0: no polish) "
                             f"or None; got {self.polish_below!r}")

    # -- maps -----------------------------------------------------------------------
    def optimality_fun(self, params, params_obj=None, params_eq=None, params_ineq=None):
        """KKT residual ``(∇f + ∂gᵀλ + Aᵀν, Ax - b, λ∘g(x))`` at ``params = (x, nu, lam)``."""
        F = kkt(self.fun, _affine if params_eq is not None else None, self.ineq_fun)
        return F(params, params_obj, params_eq, params_ineq)

    def _models(self, params_obj, params_ineq):
        """The objective and row models (:mod:`optlayer.solvers.convex_models`)."""
        if self.objective_model is not None:
            obj = self.objective_model(params_obj)
        else:
            obj = AutogradObjective(self.fun, params_obj)
        return obj, self._rows(params_ineq)

    def _rows(self, params_ineq, phase_one=False):
        if phase_one and self.phase_one_model is not None:
            return self.phase_one_model(params_ineq)
        if phase_one and self.phase_one_fun is not None:
            return AutogradRows(self.phase_one_fun, params_ineq)
        if self.ineq_model is not None:
            return self.ineq_model(params_ineq)
        if self.ineq_fun is not None:
            return AutogradRows(self.ineq_fun, params_ineq)
        return NoRows()

    # -- solver protocol --------------------------------------------------------------
    def _split_init(self, init, params_eq, rows, obj=None):
        """``(x, nu, lam)`` from ``init``: ``nu = 0``; ``λ∘(-g) ≈ 1`` (a centred start), with
        ``obj`` each ``λᵢ`` at least ``defaults.CONVEX_DUAL_START ‖∇f‖ / ‖∇gᵢ‖``."""
        if isinstance(init, (tuple, list)):
            if len(init) != 3:
                raise OptTypeError(f"{self.name}: init must be x or (x, nu, lam)")
            return tuple(init)
        x = init
        gx = rows.values(x)
        lam = 1.0 / (-gx).clamp_min(1e-3)  # λ∘(-g) ≈ 1 (centred start)
        if obj is not None and gx.shape[-1]:
            jn = torch.linalg.vector_norm(rows.second(x, lam)[1], dim=-1)
            gn = torch.linalg.vector_norm(obj.grad(x), dim=-1, keepdim=True)
            moves = jn > 0  # (a row that does not move with x keeps 1 / s)
            scale = torch.where(moves, gn / torch.where(moves, jn, 1.0), 0.0)
            lam = torch.maximum(lam, defaults.CONVEX_DUAL_START * scale)
        q = 0 if params_eq is None else params_eq[0].shape[-2]
        nu = x.new_zeros(x.shape[:-1] + (q,))
        return x, nu, lam

    def init_state(self, init, params_obj=None, params_eq=None, params_ineq=None):
        status = self._start_status(init[0], (params_obj, params_eq, params_ineq), {})
        return self._init_state(init, status, self._rows(params_ineq))

    def _init_state(self, init, status, rows):
        x, nu, lam = init
        batch = batch_shape_of(x)
        opts = {"dtype": x.dtype, "device": x.device}
        gap = -(rows.values(x) * lam).sum(-1)
        return InteriorPointState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=x.device),
            error=torch.full(batch, math.inf, **opts),
            status=status,
            gap=gap,
            primal_residual=torch.full(batch, math.inf, **opts),
            dual_residual=torch.full(batch, math.inf, **opts),
        )

    def update(self, params, state, params_obj=None, params_eq=None, params_ineq=None):
        """One iteration from ``params = (x, nu, lam)`` (slacks ``s = -g(x)``, so ``g(x) < 0``)."""
        obj, rows = self._models(params_obj, params_ineq)
        x, nu, lam = params
        v = torch.cat([x, nu, lam, -rows.values(x)], -1)
        sizes = (x.shape[-1], nu.shape[-1], lam.shape[-1])
        out = self._step((v, torch.zeros_like(lam[..., 0])), state, obj, rows, params_eq,
                         sizes)[0]
        return OptStep(_unpack(out.params[0], sizes)[:3], out.state)

    def _step(self, params, state, obj, rows, params_eq, sizes, derivs=None, frozen=None):
        """One iteration on ``(v, last step length)``, ``v = (x, nu, lam, s)`` packed (``s > 0``
        the slacks of ``g(x) + s = 0``); ``derivs``: ``(g, Dg, Σλ∇²g, ∇f, ∇²f)`` at ``v`` if
        known; ``frozen``: items whose step the caller discards (they take the first
        trial, so the line search runs for the others alone). Returns the step, ``g`` at
        the new point, the derivatives used at ``v`` and those at the new point (None
        unless every item took the first trial step, where they are computed in place of
        the first-order line-search evaluation). The
        arithmetic is written for few tensor operations: at the sizes where this method
        is used, their count, not their flops, sets the time."""
        v, prev = params
        n, q, r = sizes
        x, nu, lam, sl = _unpack(v, sizes)
        if derivs is None:
            derivs = (*rows.second(x, lam), *obj.grad_hess(x))
        g, J, Hg, gf, Hf = derivs
        rd = gf + _tmv(J, lam)
        eq = params_eq is not None
        if eq:
            A = params_eq[0].expand(x.shape[:-1] + params_eq[0].shape[-2:])
            rd = rd + _tmv(A, nu)
            rp = _affine(x, params_eq)
        else:
            rp = nu  # empty
        rg = g + sl
        slam = sl * lam
        gap = slam.sum(-1)

        H = Hf if Hg is None else Hg if Hf is None else Hf + Hg
        w_ratio = lam / sl
        K = _gram(J, w_ratio, H)
        # the ridge keeps directions that no term curves (a variable absent from f and
        # g, as in phase I) solvable; their gradient is zero, so they stay put (on the
        # fresh K)
        _ridge_(K)
        if eq:
            K = torch.cat([torch.cat([K, A.mT], -1),
                           torch.cat([A, A.new_zeros(A.shape[:-1] + (q,))], -1)], -2)
        LU, piv, _ = lu_factor(K)

        # Barrier weight from the surrogate gap, but no sharper than the residuals allow:
        # a gap far below the dual/primal residuals (g + s included) would drive s to 0
        # before x is feasible (tiny steps, a stall): the target follows the largest.
        resid = torch.maximum(norm(rd), norm(rg))
        if eq:
            resid = torch.maximum(resid, norm(rp))
        target = torch.maximum(gap, resid) * (1.0 / (max(r, 1) * self.mu))
        # Near the central path (the last step was long, the residuals not far above the
        # gap) a 10x sharper target (100x per iteration at mu = 10) ends the linear
        # 10x-per-iteration tail. (Residuals up to 3x the gap: over 30 batches of 32,
        # 3-7% fewer iterations than at 0.1x on robust_ls, sqrt_lasso, risk_portfolio and
        # logsumexp_constrained, every item still optimal in float64 and float32.)
        fast = (prev >= 0.9) & (resid <= 3.0 * gap)
        tau = torch.where(fast, 0.1 * target, target).unsqueeze(-1)
        rc = slam - tau

        # Newton direction d = (dx, dnu, dlam, ds) for (rd, Ax - b, g + s, s∘λ - τ):
        # ds = -rg - J dx, s∘dλ + λ∘ds = -rc; eliminated to the (x, nu) system K.
        w = (lam * rg - rc) / sl
        rhs = rd + _tmv(J, w)
        if eq:
            rhs = torch.cat([rhs, rp], -1)
        # (dx, dnu) = -K⁻¹ rhs; with Jdx = J dx: dλ = w + (λ/s) Jdx, ds = -rg - Jdx
        msol = torch.linalg.lu_solve(LU, piv, rhs.unsqueeze(-1)).squeeze(-1)
        mJdx = _mv(J, msol[..., :n])
        d = torch.cat([msol.neg(), w - w_ratio * mJdx, mJdx - rg], -1)

        # Largest step keeping λ, s > 0 (fraction 0.99 to the boundary), then backtracking
        # for g finite and a decrease of the residual norm.
        tail = n + q
        reset_floor = torch.finfo(x.dtype).eps ** 0.5
        step = _boundary_step(v[..., tail:], d[..., tail:], 0.99)
        res0 = torch.linalg.vector_norm(torch.cat([rd, rg, rc, rp], -1), dim=-1)
        slope = self.alpha * res0
        accepted = None
        best = (v, g, rd, rp)
        new_derivs = None
        for k in range(self.maxls):
            vt = v + step.unsqueeze(-1) * d
            xt, nt, lt, st = _unpack(vt, sizes)
            if k == 0:  # second order here: the next iteration needs it if all accept
                new_derivs = (*rows.second(xt, lt), *obj.grad_hess(xt))
                gt, Jt, _, gft, _ = new_derivs
                rdt = gft + _tmv(Jt, lt)
            else:
                gt, jt = rows.first(xt, lt)
                rdt = obj.grad(xt) + jt
            if eq:
                rdt = rdt + _tmv(A, nt)
                rpt = _affine(xt, params_eq)
            else:
                rpt = rp
            # A curved row that the linearised step crossed (g + s > 0: for a convex row
            # g + s grows with the square of the step) while x stays strictly inside it
            # (g < 0) gets its slack back, s = -g (smaller, still positive); otherwise the
            # residual norm rejects long steps (risk_portfolio: steps of 0.03-0.08 for ten
            # iterations). Crossings at the roundoff level of g are left alone (in float32
            # resetting them stalled the slack of an active row).
            over = gt + st
            reset = (gt < 0) & (over > (0.1 * st).clamp_min(reset_floor))
            st = torch.where(reset, -gt, st)
            vt = torch.cat([xt, nt, lt, st], -1)
            res = torch.linalg.vector_norm(torch.cat([rdt, gt + st, st * lt - tau, rpt], -1),
                                           dim=-1)
            # (a NaN or infinite residual fails the test: the bound is finite or NaN)
            ok = res <= res0 - slope * step
            if frozen is not None:
                ok = ok | frozen
            trial = (vt, gt, rdt, rpt)
            if k == 0 and bool(ok.all()):  # the common case: every item takes the first step
                best = trial
                break
            new_derivs = None
            if accepted is None:
                best, accepted = _pick(ok, trial, best), ok
            else:
                best = _pick(ok & ~accepted, trial, best)
                accepted = accepted | ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * self.beta)
        v1, g1, rd1, rp1 = best
        _, _, lam1, sl1 = _unpack(v1, sizes)
        error, gap1, pr, dr = _residuals(g1, sl1, lam1, rd1, rp1 if eq else None)
        if accepted is not None:
            # An item whose line search failed entirely cannot progress: flag it.
            error = torch.where(accepted, error, math.nan)
            step = torch.where(accepted, step, 0.0)
        new = state._replace(error=error, gap=gap1, primal_residual=pr, dual_residual=dr)
        return OptStep((v1, step), new), g1, derivs, new_derivs

    # -- phase I and run ---------------------------------------------------------------
    def _iterate(self, init, status, obj, rows, params_eq, maxiter, tol, phase_one=False):
        """The masked iteration (as :meth:`IterativeSolver._loop`) on the given models from
        the items' start ``status`` (RUNNING, or a status already final)."""
        x, nu, lam = init
        sizes = (x.shape[-1], nu.shape[-1], lam.shape[-1])
        sl = (-rows.values(x)).clamp_min(torch.finfo(x.dtype).eps)
        params = (torch.cat([x, nu, lam, sl], -1), torch.zeros_like(lam[..., 0]))
        state = self._init_state(init, status, rows)
        derivs = None
        codes = {c: torch.tensor(int(c), dtype=state.status.dtype, device=x.device)
                 for c in (Status.OPTIMAL, Status.NUMERICAL_ERROR)}
        # the polish (module doc): not in phase I, nor under torch.func transforms (its
        # decisions read values on the host), nor on systems above the size cap
        polish_at = defaults.CONVEX_POLISH_BELOW if self.polish_below is None \
            else self.polish_below
        polish = polish_at > 0 and not phase_one and not functorch_active() \
            and sum(sizes) <= defaults.CONVEX_POLISH_MAX_SIZE
        finished = None   # (items the polish finished, their points)
        for k in range(maxiter):
            active = state.status == RUNNING
            # every item running (known at a check): no masking of the step's results
            every = False
            if k % self.check_every == 0:
                if polish:  # one sync: how many items run, and the worst error among them
                    count, worst = torch.stack([active.sum().to(state.error.dtype),
                                                torch.where(active, state.error, -1.0).amax()
                                                ]).tolist()
                    running, every = count > 0, count == active.numel()
                    if running and worst <= polish_at:
                        polish_at = worst * 1e-2
                        state, finished = self._finish(params[0], state, active, finished,
                                                       obj, rows, params_eq, sizes, tol)
                        active = state.status == RUNNING
                        running, every = any_all_true(active)
                else:
                    running, every = any_all_true(active)
                if not running:
                    break
            (new_params, new_state), g1, used, nxt = self._step(
                params, state, obj, rows, params_eq, sizes, derivs,
                frozen=None if every else ~active)
            if phase_one:  # done at the first strictly feasible x: g(x) - s < -s, s < 0
                s1 = new_params[0][..., sizes[0] - 1:sizes[0]]
                found = (s1[..., 0] < 0) & ((g1[..., :-1] + s1) < 0).all(-1)
                new_state = new_state._replace(error=torch.where(found, 0.0, new_state.error))
            if every:
                derivs, params = nxt, new_params
                error, gap, pr, dr = new_state.error, new_state.gap, new_state.primal_residual, \
                    new_state.dual_residual
            else:
                # derivatives at the kept point of every item (frozen items keep theirs)
                derivs = None if nxt is None else tuple(
                    a if a is None else torch.where(_bcast_to(active, a), a, b)
                    for a, b in zip(nxt, used, strict=True))
                params = _pick(active, new_params, params)
                # the step changes error, gap and the residuals; count and classify here
                error, gap, pr, dr = _pick(
                    active,
                    (new_state.error, new_state.gap, new_state.primal_residual,
                     new_state.dual_residual),
                    (state.error, state.gap, state.primal_residual, state.dual_residual))
            # a non-finite error (NaN, +inf: errors are norms) fails `error < inf`
            verdict = torch.where(error <= tol, codes[Status.OPTIMAL],
                                  torch.where(error < math.inf, state.status,
                                              codes[Status.NUMERICAL_ERROR]))
            status = verdict if every else torch.where(active, verdict, state.status)
            state = InteriorPointState(state.iter_num + active, error, status, gap, pr, dr)
        v = params[0] if finished is None else torch.where(
            finished[0].unsqueeze(-1), finished[1], params[0])
        return _unpack(v, sizes)[:3], state

    def _finish(self, v, state, active, finished, obj, rows, params_eq, sizes, tol):
        """The polish (module doc) of the ``active`` items at ``v``: the state with the
        items whose polished point passes ``tol`` OPTIMAL (their residuals those of that
        point), and ``finished`` with those items and points added. The points are kept
        apart from the iterates (their ``s`` and ``λ`` may be 0, which the interior point's
        steps, still computed for every item, cannot take)."""
        vp, err, gap, pr, dr = self._polish(v, sizes, obj, rows, params_eq, tol, active)
        take = active & (err <= tol)
        if finished is None:
            finished = (take, vp)
        else:
            finished = (finished[0] | take, torch.where(take.unsqueeze(-1), vp, finished[1]))
        code = torch.tensor(int(Status.OPTIMAL), dtype=state.status.dtype, device=v.device)
        err, status, gap, pr, dr = _pick(
            take, (err, code.expand_as(state.status), gap, pr, dr),
            (state.error, state.status, state.gap, state.primal_residual, state.dual_residual))
        return InteriorPointState(state.iter_num, err, status, gap, pr, dr), finished

    def _polish(self, v, sizes, obj, rows, params_eq, tol, items):
        """Newton's method on the KKT equations of the active set ``{λ > s}`` at ``v``:
        ``∇f + Dgᵀλ + Aᵀν = 0``, ``g_i = 0`` on the set, ``λ_i = 0`` off it, ``Ax = b``. After
        ``defaults.CONVEX_POLISH_SWITCH`` steps the set is corrected once: rows whose
        multiplier has turned negative leave, rows the point violates by more than ``tol``
        join (that step's curvature term still holds the multipliers of the rows that
        left: no second evaluation). At most ``defaults.CONVEX_POLISH_NEWTON`` steps,
        fewer where the equations' residual of every item of ``items`` falls below
        ``tol / 10``.

        Returns:
            ``(v', error, gap, primal, dual)`` with ``v' = (x, ν, max(λ, 0), max(-g, 0))``
            packed and its residuals as :meth:`_step` reports them (``+inf`` where not
            finite).
        """
        n, q, r = sizes
        x, nu, lam, sl = _unpack(v, sizes)
        act = lam > sl
        a = act.to(x.dtype)
        lam = lam * a
        batch = x.shape[:-1]
        eq = params_eq is not None
        if eq:
            A = params_eq[0].expand(batch + params_eq[0].shape[-2:])
        off = torch.diag_embed(1.0 - a)       # rows off the set: dλ_i = 0, λ_i stays 0
        for k in range(defaults.CONVEX_POLISH_NEWTON + 1):
            g, J, Hg, gf, Hf = (*rows.second(x, lam), *obj.grad_hess(x))
            if k == defaults.CONVEX_POLISH_SWITCH:
                act = (act & (lam >= 0)) | (g > tol)
                a = act.to(x.dtype)
                lam = lam * a
                off = torch.diag_embed(1.0 - a)
            rd = gf + _tmv(J, lam)
            parts = [rd, g * a]
            if eq:
                rd = rd + _tmv(A, nu)
                parts = [rd, g * a, _affine(x, params_eq)]
            F = torch.cat(parts, -1)
            if k == defaults.CONVEX_POLISH_NEWTON \
                    or not bool(((norm(F) > 0.1 * tol) & items).any()):
                break
            H = Hf if Hg is None else Hg if Hf is None else Hf + Hg
            H = x.new_zeros(batch + (n, n)) if H is None else H.clone()
            _ridge_(H)
            Ja = J * a.unsqueeze(-1)
            top, mid = [H, Ja.mT], [Ja, off]
            if eq:
                top.append(A.mT)
                mid.append(x.new_zeros(batch + (r, q)))
            K = [torch.cat(top, -1), torch.cat(mid, -1)]
            if eq:
                K.append(torch.cat([A, x.new_zeros(batch + (q, r + q))], -1))
            LU, piv, _ = lu_factor(torch.cat(K, -2))
            d = torch.linalg.lu_solve(LU, piv, F.unsqueeze(-1)).squeeze(-1)
            x = x - d[..., :n]
            lam = lam - d[..., n:n + r]
            if eq:
                nu = nu - d[..., n + r:]
        lam = lam.clamp_min(0.0)
        rd = gf + _tmv(J, lam)               # (g, J, ∇f at the final x)
        if eq:
            rd = rd + _tmv(A, nu)
        sl = (-g).clamp_min(0.0)
        err, gap, pr, dr = _residuals(g, sl, lam, rd, _affine(x, params_eq) if eq else None)
        err = torch.where(torch.isfinite(err), err, math.inf)
        return torch.cat([x, nu, lam, sl], -1), err, gap, pr, dr

    def _phase_one(self, x0, status, params_eq, params_ineq, maxiter, tol):
        """Minimise ``s`` s.t. ``g(x) - s ≤ 0``, ``s ≥ -1``, ``Ax = b`` from a feasible (x0, s0)."""
        inner = self._rows(params_ineq, phase_one=True)
        rows = PhaseOneRows(inner)
        z0 = torch.cat([x0, inner.values(x0).amax(-1, keepdim=True) + 1.0], -1)
        cost = torch.zeros_like(z0)
        cost[..., -1] = 1.0
        eq1 = None
        if params_eq is not None:
            A, b = params_eq
            eq1 = (torch.cat([A, A.new_zeros(A.shape[:-1] + (1,))], -1), b)
        init = self._split_init(z0, eq1, rows)
        (z, _, _), st = self._iterate(
            init, status, QuadraticObjective(None, cost), rows, eq1,
            defaults.PHASE_ONE_MAXITER_FACTOR * maxiter, tol, phase_one=True)
        return z[..., :-1], z[..., -1], st

    def _loop(self, init, params_obj=None, params_eq=None, params_ineq=None):
        maxiter, tol = self._settings(self._dtype(init))
        obj, rows = self._models(params_obj, params_ineq)
        # the inputs are checked once, for phase I and the main iteration
        warm = isinstance(init, (tuple, list))
        status = self._start_status(init[0] if warm else init,
                                    (params_obj, params_eq, params_ineq), {})
        if warm or isinstance(rows, NoRows):
            return self._iterate(self._split_init(init, params_eq, rows), status, obj, rows,
                                 params_eq, maxiter, tol)
        x0 = init
        g0 = rows.values(x0)
        need = ~(g0 < 0).all(-1)
        if bool(need.any()):
            x1, s1, st1 = self._phase_one(x0, status, params_eq, params_ineq, maxiter, tol)
            x0 = torch.where(need.unsqueeze(-1), x1, x0)
            margin = math.sqrt(tol)
            # a certificate only where phase I converged to its optimum s* > 0 (a phase I
            # stopped by MAX_ITER or a numerical failure keeps that status below)
            infeasible = need & (s1 > margin) & (st1.status == int(Status.OPTIMAL))
            stuck = need & ~infeasible & ~(rows.values(x0) < 0).all(-1)
            pending = torch.where(
                infeasible, int(Status.INFEASIBLE),
                torch.where(stuck, int(Status.NUMERICAL_ERROR), -1),
            ).to(torch.int8)
            # A phase I that could not finish (equalities inconsistent, ...) keeps its status.
            unfinished = need & (st1.status != int(Status.OPTIMAL)) & ~infeasible
            pending = torch.where(unfinished, st1.status, pending)
            status = torch.where(pending >= 0, pending, status)
        start = self._split_init(x0, params_eq, rows, obj)
        return self._iterate(start, status, obj, rows, params_eq, maxiter, tol)

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
