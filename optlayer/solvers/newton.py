"""Newton's method (damped, with Armijo backtracking) and L-BFGS for smooth problems."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from optlayer.conditions import stationary
from optlayer.solvers._base import (
    IterativeSolver,
    OptStep,
    batch_shape_of,
    hessian,
    norm,
    value_and_grad,
    vdot,
)

__all__ = ["Newton", "NewtonState", "LBFGS", "LBFGSState"]


def _armijo(fun, x, fx, g, d, args, kwargs, c1, decrease, maxls):
    """Per-item backtracking until ``f(x + s d) ≤ f(x) + c1 s ⟨g, d⟩``; returns (x⁺, s)."""
    s = torch.ones_like(fx)
    slope = vdot(g, d)
    slack = 10 * torch.finfo(x.dtype).eps * (1 + fx.abs())
    accepted = torch.zeros_like(fx, dtype=torch.bool)
    x_acc = x
    for _ in range(maxls):
        xt = x + s.unsqueeze(-1) * d
        ft = fun(xt, *args, **kwargs)
        ok = (ft <= fx + c1 * s * slope + slack) & torch.isfinite(ft)
        x_acc = torch.where((ok & ~accepted).unsqueeze(-1), xt, x_acc)
        accepted = accepted | ok
        if bool(accepted.all()):
            break
        s = torch.where(accepted, s, s * decrease)
    return torch.where(accepted.unsqueeze(-1), x_acc, x), s


class NewtonState(NamedTuple):
    """State of :class:`Newton`: ``iter_num, error (= ‖∇f(x)‖), status``, value, grad."""

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    value: torch.Tensor
    grad: torch.Tensor


@dataclass(eq=False)
class Newton(IterativeSolver):
    """Damped Newton's method for smooth ``min_x f(x, *args)`` (small ``n``).

    Direction ``d = -(∇²f(x) + δI)⁻¹ ∇f(x)`` with the Hessian from ``n`` products
    with the gradient (backward passes of one graph; ``torch.func`` JVPs when unrolling
    or under a transform) and a Cholesky factorisation; where the
    Hessian is not positive definite the damping ``δ`` grows (up to 8 times by
    ×100 from ``damping``) and, failing that, the item takes a gradient step.
    Armijo backtracking on ``f``; converged when ``‖∇f(x)‖ ≤ tol``.
    Optimality map: ``∇₁f`` (:func:`optlayer.conditions.stationary`).

    Args:
        fun: twice differentiable objective, one value per batch item.
        damping: initial ``δ`` tried when the Hessian is not positive definite.
        maxls: backtracking trials; c1: Armijo constant.

    Example:
        >>> import torch
        >>> f = lambda x, y: torch.logsumexp(x, -1) + 0.5 * ((x - y) ** 2).sum(-1)
        >>> y = torch.tensor([0.5, -0.5], dtype=torch.float64)
        >>> x = Newton(f).run(torch.zeros(2, dtype=torch.float64), y).params
        >>> bool(torch.allclose(x + torch.softmax(x, -1), y))
        True
    """

    fun: Callable
    damping: float = 1e-8
    maxls: int = 30
    c1: float = 1e-4

    family: ClassVar[str] = "newton"

    def optimality_fun(self, params, *args, **kwargs):
        """``∇₁f(x, *args)``."""
        return stationary(self.fun)(params, *args, **kwargs)

    def init_state(self, init, *args, **kwargs) -> NewtonState:
        batch = batch_shape_of(init)
        value, grad = value_and_grad(self.fun, init, *args, **kwargs)
        return NewtonState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=init.device),
            error=norm(grad),
            status=self._start_status(init, args, kwargs),
            value=value,
            grad=grad,
        )

    def _direction(self, H, g):
        n = g.shape[-1]
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        L, info = torch.linalg.cholesky_ex(H)
        ok = info == 0
        delta = self.damping * (1 + torch.diagonal(H, dim1=-2, dim2=-1).abs().amax(-1))
        for _ in range(8):
            if bool(ok.all()):
                break
            Ld, infod = torch.linalg.cholesky_ex(H + delta[..., None, None] * eye)
            fix = ~ok & (infod == 0)
            L = torch.where(fix[..., None, None], Ld, L)
            ok = ok | fix
            delta = delta * 100
        d = -torch.cholesky_solve(g.unsqueeze(-1), torch.where(ok[..., None, None], L, eye))
        d = d.squeeze(-1)
        return torch.where(ok.unsqueeze(-1), d, -g)

    def update(self, params, state, *args, **kwargs) -> OptStep:
        x, g = params, state.grad
        H = hessian(self.fun, x, *args, **kwargs)
        d = self._direction(H, g)
        x_new, _ = _armijo(self.fun, x, state.value, g, d, args, kwargs, self.c1, 0.5, self.maxls)
        value, grad = value_and_grad(self.fun, x_new, *args, **kwargs)
        return OptStep(x_new, state._replace(error=norm(grad), value=value, grad=grad))


class LBFGSState(NamedTuple):
    """State of :class:`LBFGS`: ``iter_num, error (= ‖∇f(x)‖), status``, value, grad and the
    curvature history ``s_hist, y_hist`` (``(*batch, m, n)``, newest first) with ``rho``
    (``1/⟨s, y⟩``, zero for empty slots)."""

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    value: torch.Tensor
    grad: torch.Tensor
    s_hist: torch.Tensor
    y_hist: torch.Tensor
    rho: torch.Tensor


@dataclass(eq=False)
class LBFGS(IterativeSolver):
    """Limited-memory BFGS with Armijo backtracking for smooth ``min_x f(x, *args)``.

    Two-loop recursion over the last ``history_size`` pairs ``(s, y)`` per item
    (a pair is stored only if ``⟨s, y⟩ > 0``), initial scaling
    ``γ = ⟨s, y⟩ / ⟨y, y⟩`` of the newest pair. Where the direction is not a
    descent direction the item falls back to ``-∇f``. Converged when
    ``‖∇f(x)‖ ≤ tol``; optimality map ``∇₁f``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> f = lambda x, b: 0.5 * (x * (x @ A)).sum(-1) - (b * x).sum(-1)
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> x = LBFGS(f).run(torch.zeros(2, dtype=torch.float64), b).params
        >>> bool(torch.allclose(A @ x, b))
        True
    """

    fun: Callable
    history_size: int = 10
    maxls: int = 30
    c1: float = 1e-4

    family: ClassVar[str] = "quasi_newton"

    def optimality_fun(self, params, *args, **kwargs):
        """``∇₁f(x, *args)``."""
        return stationary(self.fun)(params, *args, **kwargs)

    def init_state(self, init, *args, **kwargs) -> LBFGSState:
        batch = batch_shape_of(init)
        n = init.shape[-1]
        m = self.history_size
        value, grad = value_and_grad(self.fun, init, *args, **kwargs)
        z = torch.zeros(*batch, m, n, dtype=init.dtype, device=init.device)
        return LBFGSState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=init.device),
            error=norm(grad),
            status=self._start_status(init, args, kwargs),
            value=value,
            grad=grad,
            s_hist=z,
            y_hist=z.clone(),
            rho=torch.zeros(*batch, m, dtype=init.dtype, device=init.device),
        )

    def _direction(self, g, S, Y, rho):
        q = g
        m = S.shape[-2]
        alphas = []
        for i in range(m):  # newest first
            a = rho[..., i] * vdot(S[..., i, :], q)
            q = q - a.unsqueeze(-1) * Y[..., i, :]
            alphas.append(a)
        sy = vdot(S[..., 0, :], Y[..., 0, :])
        yy = vdot(Y[..., 0, :], Y[..., 0, :])
        has = rho[..., 0] > 0
        gamma = torch.where(has, sy / torch.where(has, yy, 1), 1 / norm(g).clamp_min(1))
        r = gamma.unsqueeze(-1) * q
        for i in reversed(range(m)):
            b = rho[..., i] * vdot(Y[..., i, :], r)
            r = r + (alphas[i] - b).unsqueeze(-1) * S[..., i, :]
        return -r

    def update(self, params, state, *args, **kwargs) -> OptStep:
        x, g = params, state.grad
        d = self._direction(g, state.s_hist, state.y_hist, state.rho)
        descent = vdot(g, d) < 0
        d = torch.where(descent.unsqueeze(-1), d, -g / norm(g).clamp_min(1).unsqueeze(-1))
        x_new, _ = _armijo(self.fun, x, state.value, g, d, args, kwargs, self.c1, 0.5, self.maxls)
        value, grad = value_and_grad(self.fun, x_new, *args, **kwargs)
        s, y = x_new - x, grad - g
        sy = vdot(s, y)
        keep = sy > torch.finfo(x.dtype).eps * norm(s) * norm(y)
        S = torch.cat([s.unsqueeze(-2), state.s_hist[..., :-1, :]], -2)
        Y = torch.cat([y.unsqueeze(-2), state.y_hist[..., :-1, :]], -2)
        rho = torch.cat([(1 / torch.where(keep, sy, 1)).unsqueeze(-1), state.rho[..., :-1]], -1)
        k = keep.unsqueeze(-1)
        new = state._replace(
            error=norm(grad),
            value=value,
            grad=grad,
            s_hist=torch.where(k.unsqueeze(-1), S, state.s_hist),
            y_hist=torch.where(k.unsqueeze(-1), Y, state.y_hist),
            rho=torch.where(k, rho, state.rho),
        )
        return OptStep(x_new, new)


