"""Fixed-point iteration and Anderson acceleration for ``x = T(x, *args)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from optlayer.solvers._base import IterativeSolver, OptStep, batch_shape_of, norm

__all__ = ["FixedPointIteration", "AndersonAcceleration", "FixedPointState", "AndersonState"]


class FixedPointState(NamedTuple):
    """State of :class:`FixedPointIteration`: ``error = ‖T(x) - x‖`` at the previous iterate."""

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor


def _check_callable(obj, name, what):
    if not callable(obj):
        raise TypeError(f"{what}: {name} must be callable; got {type(obj).__name__}")


@dataclass(eq=False)
class FixedPointIteration(IterativeSolver):
    """Plain iteration ``x⁺ = T(x, *args)`` for a contraction ``T``.

    Converged when ``‖T(x) - x‖ ≤ tol``. Optimality map ``T(x) - x``
    (implicit derivative ``∂x* = (I - ∂₁T)⁻¹ ∂₂T``, as ``custom_fixed_point``).

    Example:
        >>> import torch
        >>> T = lambda x, c: 0.5 * torch.cos(x) + c
        >>> x = FixedPointIteration(T).run(torch.zeros(1, dtype=torch.float64),
        ...                                torch.tensor([0.1], dtype=torch.float64)).params
        >>> bool(torch.allclose(x, 0.5 * torch.cos(x) + 0.1))
        True
    """

    fixed_point_fun: Callable

    family: ClassVar[str] = "fixed_point"

    def __post_init__(self):
        _check_callable(self.fixed_point_fun, "fixed_point_fun", self.name)

    def optimality_fun(self, params, *args, **kwargs):
        """``T(x, *args) - x``."""
        return self.fixed_point_fun(params, *args, **kwargs) - params

    def init_state(self, init, *args, **kwargs) -> FixedPointState:
        batch = batch_shape_of(init)
        return FixedPointState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=init.device),
            error=torch.full(batch, math.inf, dtype=init.dtype, device=init.device),
            status=self._start_status(init, args, kwargs),
        )

    def update(self, params, state, *args, **kwargs) -> OptStep:
        x_new = self.fixed_point_fun(params, *args, **kwargs)
        return OptStep(x_new, state._replace(error=norm(x_new - params)))


class AndersonState(NamedTuple):
    """State of :class:`AndersonAcceleration`: the last ``history_size`` iterates ``x_hist``
    and residuals ``r_hist = T(x) - x`` (``(*batch, m, n)``) with a ``valid`` mask."""

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    x_hist: torch.Tensor
    r_hist: torch.Tensor
    valid: torch.Tensor


@dataclass(eq=False)
class AndersonAcceleration(IterativeSolver):
    """Anderson acceleration (type II) of the fixed-point iteration ``x = T(x, *args)``.

    With residuals ``r_i = T(x_i) - x_i`` of the last ``m`` iterates, solve
    ``min_α ‖Σ α_i r_i‖²`` s.t. ``Σ α_i = 1`` (regularised by ``ridge``) and set
    ``x⁺ = Σ α_i (x_i + β r_i)``. Converged when ``‖T(x) - x‖ ≤ tol``;
    optimality map ``T(x) - x``.

    Args:
        fixed_point_fun: ``T(x, *args, **kwargs)`` shaped like ``x``.
        history_size: ``m``.
        beta: mixing parameter ``β``.
        ridge: Tikhonov term added to the Gram matrix (relative to its scale).

    Example:
        >>> import torch
        >>> A = torch.tensor([[0.9, 0.05], [0.0, 0.8]], dtype=torch.float64)
        >>> T = lambda x, b: x @ A.T + b
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> x = AndersonAcceleration(T).run(torch.zeros(2, dtype=torch.float64), b).params
        >>> bool(torch.allclose(x, torch.linalg.solve(torch.eye(2, dtype=A.dtype) - A, b)))
        True
    """

    fixed_point_fun: Callable
    history_size: int = 5
    beta: float = 1.0
    ridge: float = 1e-10

    family: ClassVar[str] = "fixed_point"

    def __post_init__(self):
        _check_callable(self.fixed_point_fun, "fixed_point_fun", self.name)
        if self.history_size < 1:
            raise ValueError(f"{self.name}: history_size must be at least 1")

    def optimality_fun(self, params, *args, **kwargs):
        """``T(x, *args) - x``."""
        return self.fixed_point_fun(params, *args, **kwargs) - params

    def init_state(self, init, *args, **kwargs) -> AndersonState:
        batch = batch_shape_of(init)
        m, n = self.history_size, init.shape[-1]
        z = torch.zeros(*batch, m, n, dtype=init.dtype, device=init.device)
        return AndersonState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=init.device),
            error=torch.full(batch, math.inf, dtype=init.dtype, device=init.device),
            status=self._start_status(init, args, kwargs),
            x_hist=z,
            r_hist=z.clone(),
            valid=torch.zeros(*batch, m, dtype=torch.bool, device=init.device),
        )

    def update(self, params, state, *args, **kwargs) -> OptStep:
        x = params
        r = self.fixed_point_fun(x, *args, **kwargs) - x
        X = torch.cat([x.unsqueeze(-2), state.x_hist[..., :-1, :]], -2)
        R = torch.cat([r.unsqueeze(-2), state.r_hist[..., :-1, :]], -2)
        valid = torch.cat([torch.ones_like(state.valid[..., :1]), state.valid[..., :-1]], -1)
        G = R @ R.mT
        scale = torch.diagonal(G, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(x.dtype).tiny)
        diag = torch.where(valid, self.ridge * scale.unsqueeze(-1), 1e8 * scale.unsqueeze(-1))
        G = G + torch.diag_embed(diag)
        ones = torch.ones_like(diag).unsqueeze(-1)
        a, _ = torch.linalg.solve_ex(G, ones)
        a = a.squeeze(-1) * valid
        a = a / a.sum(-1, keepdim=True)
        x_new = (a.unsqueeze(-1) * (X + self.beta * R)).sum(-2)
        ok = torch.isfinite(x_new).all(-1, keepdim=True)
        x_new = torch.where(ok, x_new, x + self.beta * r)
        new = state._replace(error=norm(r), x_hist=X, r_hist=R, valid=valid)
        return OptStep(x_new, new)
