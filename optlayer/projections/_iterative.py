"""Projections computed by an iterative solver, differentiated implicitly.

Each entry solves a dual problem to tolerance without building a graph, then
re-enters autograd through :func:`optlayer.implicit.custom_root` on the dual's
optimality conditions, so gradients are exact at convergence and never
unrolled. The primal point is a closed-form function of the dual variables,
differentiated by autograd.

* ``polyhedron``: dual projected gradient (FISTA with restart) on the
  multipliers, then an active-set polish that solves the equality-constrained
  projection on the identified active set exactly.
* ``transport`` / ``birkhoff``: semismooth Newton on the dual of the
  Euclidean projection onto the transportation polytope.
* ``kl_transport`` / ``kl_birkhoff``: Sinkhorn's algorithm in the log domain.

The dual potentials of the transport problems are defined up to a constant
(``alpha + c, beta - c``); the gauge is fixed by ``beta_n = 0``. Accordingly
the derivative with respect to the column marginal ``b`` is taken along the
set where ``sum(a) = sum(b)`` holds with ``b_n`` absorbing the change: the
entry ``grad_b[..., -1]`` is zero.

Non-convergence is reported with an :class:`~optlayer.status.OptimizationWarning`
naming the worst residual.
"""

from __future__ import annotations

import warnings

import torch

from optlayer import defaults
from optlayer.implicit import custom_root
from optlayer.linalg import solve_lstsq
from optlayer.linalg._common import lu_factor, physical
from optlayer.status import OptimizationWarning

__all__ = ["polyhedron", "transport", "birkhoff", "kl_transport", "kl_birkhoff"]

_CHECK_EVERY = 10


def _done(err: torch.Tensor, tol: float) -> bool:
    """True once every item (of the whole physical batch) is within ``tol``."""
    return bool((physical(err) <= tol).all())


def _warn_if_failed(what: str, err: torch.Tensor, tol: float, iters: int) -> None:
    worst = physical(err).detach().max()
    if not bool(worst <= tol):
        warnings.warn(
            f"{what}: no convergence after {iters} iterations (worst residual "
            f"{float(worst):.3e} > tol {tol:.1e}); increase maxiter or loosen tol",
            OptimizationWarning,
            stacklevel=3,
        )


def _tol(tol, dtype):
    return defaults.tol(dtype) if tol is None else float(tol)


# --------------------------------------------------------------------------
# polyhedron {z : A z = b, G z <= h}
# --------------------------------------------------------------------------


def _stack_constraints(x, A, b, G, h):
    """``M = [A; G]`` and ``c = [b; h]`` (either block may be None)."""
    rows, rhs = [], []
    if A is not None:
        rows.append(A)
        rhs.append(b)
    if G is not None:
        rows.append(G)
        rhs.append(h)
    batch = torch.broadcast_shapes(x.shape[:-1], *[r.shape[:-2] for r in rows])
    M = torch.cat([r.expand(batch + r.shape[-2:]) for r in rows], dim=-2)
    c = torch.cat([v.expand(batch + v.shape[-1:]) for v in rhs], dim=-1)
    return M, c


def _poly_grad(nu, x, M, c):
    """Gradient of the dual objective ``0.5 ||M^T nu||^2 - nu^T (M x - c)``."""
    z = x - (M.transpose(-1, -2) @ nu.unsqueeze(-1)).squeeze(-1)
    return c - (M @ z.unsqueeze(-1)).squeeze(-1)


def _poly_fixed_point(n_eq):
    def F(nu, x, M, c, step):
        moved = nu - step.unsqueeze(-1) * _poly_grad(nu, x, M, c)
        proj = torch.cat([moved[..., :n_eq], torch.relu(moved[..., n_eq:])], dim=-1)
        return proj - nu

    return F


def _poly_polish(nu, x, M, c, n_eq):
    """Exact multipliers on the active set of ``nu`` (falls back to ``nu``)."""
    active = torch.ones_like(nu, dtype=torch.bool)
    scale = nu.abs().amax(-1, keepdim=True).clamp_min(1.0)
    active[..., n_eq:] = nu[..., n_eq:] > 1e3 * defaults.eps(nu.dtype) * scale
    d = active.to(nu.dtype)
    gram = M @ M.transpose(-1, -2)
    system = d.unsqueeze(-1) * gram * d.unsqueeze(-2) + torch.diag_embed(1 - d)
    rhs = d * ((M @ x.unsqueeze(-1)).squeeze(-1) - c)
    chol, info = torch.linalg.cholesky_ex(system)
    exact = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    z = x - (M.transpose(-1, -2) @ exact.unsqueeze(-1)).squeeze(-1)
    viol = (M @ z.unsqueeze(-1)).squeeze(-1) - c
    tol = 1e3 * defaults.eps(nu.dtype) * (1 + c.abs().amax(-1, keepdim=True))
    ok = (info == 0) & (exact[..., n_eq:] >= -tol).all(-1) & (viol[..., n_eq:] <= tol).all(-1)
    ok &= torch.isfinite(exact).all(-1)
    return torch.where(ok.unsqueeze(-1), exact, nu)


def polyhedron(
    x: torch.Tensor,
    A: torch.Tensor | None,
    b: torch.Tensor | None,
    G: torch.Tensor | None,
    h: torch.Tensor | None,
    *,
    tol: float | None = None,
    maxiter: int | None = None,
) -> torch.Tensor:
    """Projection onto ``{z : A z = b, G z <= h}`` (either block may be None).

    Solves the dual ``min_{nu = (lam, mu), mu >= 0} 0.5 ||M^T nu||^2 -
    nu^T (M x - c)`` with ``M = [A; G]``, ``c = [b; h]``, and returns
    ``z = x - M^T nu``. Gradients come from implicit differentiation of the
    dual's projected-gradient fixed point. Assumes ``M`` has full row rank on
    the active set (unique multipliers) and the set is nonempty.

    Args:
        x: shape ``(..., n)``.
        A, b: equalities, ``(..., p, n)`` and ``(..., p)``, or None.
        G, h: inequalities, ``(..., q, n)`` and ``(..., q)``, or None.
        tol: tolerance on the dual fixed-point residual (default per dtype).
        maxiter: iteration cap (default ``MAXITER["first_order"]``).
    """
    if (A is None) != (b is None) or (G is None) != (h is None):
        raise ValueError("polyhedron: pass A with b and G with h (or None for both)")
    if A is None and G is None:
        return x
    n_eq = 0 if A is None else A.shape[-2]
    M, c = _stack_constraints(x, A, b, G, h)
    with torch.no_grad():
        gram = M @ M.transpose(-1, -2)
        step = 1.0 / torch.linalg.eigvalsh(gram)[..., -1]
    tol_ = _tol(tol, x.dtype)
    cap = maxiter or defaults.MAXITER["first_order"]
    F = _poly_fixed_point(n_eq)

    # Redundant active constraints leave the multipliers non-unique; z is
    # invariant along those directions, so a minimum-norm solve suffices.
    @custom_root(F, solve=solve_lstsq)
    def solve(nu0, x, M, c, step):
        nu, y, t = nu0, nu0, 1.0
        err = torch.full(x.shape[:-1], float("inf"), dtype=x.dtype, device=x.device)
        k = 0
        while k < cap:
            moved = y - step.unsqueeze(-1) * _poly_grad(y, x, M, c)
            new = torch.cat([moved[..., :n_eq], torch.relu(moved[..., n_eq:])], dim=-1)
            t_new = 0.5 * (1 + (1 + 4 * t * t) ** 0.5)
            y = new + ((t - 1) / t_new) * (new - nu)
            # adaptive restart (O'Donoghue & Candes) when momentum points uphill
            restart = ((y - new) * (new - nu)).sum(-1, keepdim=True) < 0
            y = torch.where(restart, new, y)
            nu, t = new, t_new
            k += 1
            if k % _CHECK_EVERY == 0:
                polished = _poly_polish(nu, x, M, c, n_eq)
                err = F(polished, x, M, c, step).abs().amax(-1)
                if _done(err, tol_):
                    nu = polished
                    break
        else:
            nu = _poly_polish(nu, x, M, c, n_eq)
            err = F(nu, x, M, c, step).abs().amax(-1)
        _warn_if_failed("polyhedron projection", err, tol_, k)
        return nu

    nu0 = torch.zeros(c.shape, dtype=x.dtype, device=x.device)
    nu = solve(nu0, x, M, c, step)
    return x - (M.transpose(-1, -2) @ nu.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------
# transportation polytope, Euclidean
# --------------------------------------------------------------------------


def _plan(X, alpha, beta):
    return torch.relu(X - alpha.unsqueeze(-1) - beta.unsqueeze(-2))


def _split(u, m):
    """Potentials ``(alpha, beta)`` from ``u = (alpha, beta[:-1])`` (``beta_n = 0``)."""
    alpha = u[..., :m]
    beta = torch.cat([u[..., m:], torch.zeros_like(u[..., :1])], dim=-1)
    return alpha, beta


def _transport_F(u, X, a, b):
    alpha, beta = _split(u, X.shape[-2])
    P = _plan(X, alpha, beta)
    return torch.cat([P.sum(-1) - a, (P.sum(-2) - b)[..., :-1]], dim=-1)


def _dual_value(X, alpha, beta, a, b):
    """The dual objective and the size of its terms (the scale of its rounding: the
    terms cancel near the solution, so the value alone can be far smaller)."""
    q = 0.5 * (_plan(X, alpha, beta) ** 2).sum((-1, -2))
    la, lb = (alpha * a).sum(-1), (beta * b).sum(-1)
    return q + la + lb, q + la.abs() + lb.abs()


def _check_marginals(what, a, b, need_positive):
    a, b = physical(a), physical(b)
    bad = (a < 0).any() | (b < 0).any() if not need_positive else (a <= 0).any() | (b <= 0).any()
    if bool(bad):
        sign = "positive" if need_positive else "nonnegative"
        raise ValueError(f"{what}: the marginals a and b must be {sign}")
    gap = (a.sum(-1) - b.sum(-1)).abs()
    scale = a.abs().sum(-1).clamp_min(1.0)
    if bool((gap > 1e3 * defaults.eps(a.dtype) * scale).any()):
        raise ValueError(
            f"{what}: the marginals must have equal sums (sum(a) = sum(b)); "
            f"largest mismatch {float(gap.max()):.3e}"
        )


def _transport_inputs(what, X, a, b, need_positive):
    """Broadcast ``X (..., m, n)``, ``a (..., m)``, ``b (..., n)`` to one batch and check them."""
    m, n = X.shape[-2], X.shape[-1]
    batch = torch.broadcast_shapes(X.shape[:-2], a.shape[:-1], b.shape[:-1])
    X, a, b = X.expand(batch + (m, n)), a.expand(batch + (m,)), b.expand(batch + (n,))
    with torch.no_grad():
        _check_marginals(what, a, b, need_positive=need_positive)
    return X, a, b, batch


def transport(
    X: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, tol=None, maxiter=None
) -> torch.Tensor:
    """Projection onto ``{P >= 0 : P 1 = a, P^T 1 = b}`` (Frobenius norm).

    The solution is ``P = max(X - alpha 1^T - 1 beta^T, 0)`` where the
    potentials minimise the dual ``0.5 ||max(X - alpha - beta, 0)||^2 +
    <alpha, a> + <beta, b>``, found by a damped semismooth Newton method.

    Args:
        X: shape ``(..., m, n)``.
        a: row marginal ``(..., m)``, ``b``: column marginal ``(..., n)``;
            nonnegative, ``sum(a) = sum(b)``.
    """
    X, a, b, batch = _transport_inputs("transport projection", X, a, b, need_positive=False)
    m, n = X.shape[-2], X.shape[-1]
    tol_ = _tol(tol, X.dtype)
    cap = maxiter or defaults.MAXITER["newton"] * 4

    # The support graph of the plan may split into several components, each
    # with its own gauge (alpha + c, beta - c); the plan is invariant along
    # them, so the minimum-norm solve of the singular system is exact for P.
    @custom_root(_transport_F, solve=solve_lstsq)
    def solve(u0, X, a, b):
        u = u0
        scale = 1.0 + a.abs().amax(-1)
        err = _transport_F(u, X, a, b).abs().amax(-1) / scale
        k = 0
        eye = torch.eye(m + n - 1, dtype=X.dtype, device=X.device)
        while k < cap and not _done(err, tol_):
            alpha, beta = _split(u, m)
            S = (X - alpha.unsqueeze(-1) - beta.unsqueeze(-2) > 0).to(X.dtype)
            g = _transport_F(u, X, a, b)
            # generalised Hessian of the dual in (alpha, beta[:-1])
            Sr = S[..., :-1]
            H = torch.cat(
                [
                    torch.cat([torch.diag_embed(S.sum(-1)), Sr], dim=-1),
                    torch.cat([Sr.transpose(-1, -2), torch.diag_embed(S.sum(-2)[..., :-1])], -1),
                ],
                dim=-2,
            )
            # Regularised semismooth Newton: the shift ||g|| keeps the step
            # bounded where a row or column has an empty support and vanishes
            # at the solution, so the local convergence stays superlinear.
            shift = 1e-12 + g.abs().amax(-1)
            H = H + shift[..., None, None] * eye
            LU, piv, _ = lu_factor(H)
            d = torch.linalg.lu_solve(LU, piv, g.unsqueeze(-1)).squeeze(-1)
            # g = P 1 - a = -grad(dual), so the Newton step is u + H^{-1} g.
            # Backtrack on the dual value.
            f0, size = _dual_value(X, alpha, beta, a, b)
            step = torch.ones_like(f0)
            for _ in range(30):
                cand = u + step.unsqueeze(-1) * d
                fa, fb = _split(cand, m)
                # a rise within the rounding of the terms is no rise (near the solution
                # the terms cancel and a full Newton step changes f by less than that)
                worse = _dual_value(X, fa, fb, a, b)[0] > f0 + 1e-14 * size
                if not bool(physical(worse).any()):
                    break
                step = torch.where(worse, 0.5 * step, step)
            u = u + step.unsqueeze(-1) * d
            err = _transport_F(u, X, a, b).abs().amax(-1) / scale
            k += 1
        _warn_if_failed("transport projection", err, tol_, k)
        return u

    u0 = torch.zeros(batch + (m + n - 1,), dtype=X.dtype, device=X.device)
    u = solve(u0, X, a, b)
    alpha, beta = _split(u, m)
    return _plan(X, alpha, beta)


def birkhoff(X: torch.Tensor, *, tol=None, maxiter=None) -> torch.Tensor:
    """Projection onto the Birkhoff polytope (doubly stochastic matrices).

    ``transport(X, 1, 1)`` for square ``X`` of shape ``(..., n, n)``.
    """
    if X.shape[-1] != X.shape[-2]:
        raise ValueError(f"birkhoff: expected square matrices; got shape {tuple(X.shape)}")
    ones = torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)
    return transport(X, ones, ones, tol=tol, maxiter=maxiter)


# --------------------------------------------------------------------------
# transportation polytope, KL (Sinkhorn)
# --------------------------------------------------------------------------


def _sinkhorn_round(g, X, log_a, log_b):
    f = log_a - torch.logsumexp(X + g.unsqueeze(-2), dim=-1)
    g_new = log_b - torch.logsumexp(X + f.unsqueeze(-1), dim=-2)
    return f, g_new


def _sinkhorn_T(g, X, log_a, log_b):
    """One Sinkhorn round on the column potential, gauge-fixed by ``g_n = 0``."""
    _, g_new = _sinkhorn_round(g, X, log_a, log_b)
    return g_new - g_new[..., -1:]


def _sinkhorn_F(g, X, log_a, log_b):
    return _sinkhorn_T(g, X, log_a, log_b) - g


def kl_transport(
    X: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, tol=None, maxiter=None
) -> torch.Tensor:
    """KL projection of ``exp(X)`` onto ``{P >= 0 : P 1 = a, P^T 1 = b}``.

    ``argmin_P KL(P, exp(X))`` is ``P = exp(f 1^T + X + 1 g^T)`` with the
    potentials of Sinkhorn's fixed point ``f = log a - LSE_rows(X + g)``,
    ``g = log b - LSE_cols(X + f)``, iterated in the log domain. Marginals
    must be positive with equal sums.
    """
    X, a, b, batch = _transport_inputs("kl_transport projection", X, a, b, need_positive=True)
    n = X.shape[-1]
    log_a, log_b = torch.log(a), torch.log(b)
    tol_ = _tol(tol, X.dtype)
    cap = maxiter or 20 * defaults.MAXITER["fixed_point"]

    @custom_root(_sinkhorn_F)
    def solve(g0, X, log_a, log_b):
        g = g0
        k = 0
        err = torch.full(batch, float("inf"), dtype=X.dtype, device=X.device)
        while k < cap:
            g = _sinkhorn_T(g, X, log_a, log_b)
            k += 1
            if k % _CHECK_EVERY == 0:
                err = _sinkhorn_F(g, X, log_a, log_b).abs().amax(-1)
                if _done(err, tol_):
                    break
        _warn_if_failed("kl_transport projection (Sinkhorn)", err, tol_, k)
        return g

    g0 = torch.zeros(batch + (n,), dtype=X.dtype, device=X.device)
    g = solve(g0, X, log_a, log_b)
    f, _ = _sinkhorn_round(g, X, log_a, log_b)
    return torch.exp(f.unsqueeze(-1) + X + g.unsqueeze(-2))


def kl_birkhoff(X: torch.Tensor, *, tol=None, maxiter=None) -> torch.Tensor:
    """KL projection of ``exp(X)`` onto the Birkhoff polytope (Sinkhorn normalisation)."""
    if X.shape[-1] != X.shape[-2]:
        raise ValueError(f"kl_birkhoff: expected square matrices; got shape {tuple(X.shape)}")
    ones = torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)
    return kl_transport(X, ones, ones, tol=tol, maxiter=maxiter)
