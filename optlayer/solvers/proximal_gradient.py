"""Proximal gradient (FISTA with backtracking), projected gradient and gradient descent.

``ProximalGradient`` minimises ``f(x, *args) + g(x, hyperparams_prox)`` with
``f`` smooth and ``g`` given by its prox; ``ProjectedGradient`` is
``ProximalGradient`` with the prox made from a projection (composition, as in
JAXopt); ``GradientDescent`` is ``ProximalGradient`` with no ``g``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from optlayer.conditions import prox_from_projection, prox_grad_step
from optlayer.solvers._base import (
    IterativeSolver,
    OptStep,
    batch_shape_of,
    norm,
    value_and_grad,
    vdot,
)

__all__ = ["ProximalGradient", "ProjectedGradient", "GradientDescent", "ProxGradState"]


class ProxGradState(NamedTuple):
    """State of :class:`ProximalGradient` (every field has the batch shape in front).

    Attributes:
        iter_num: iterations run per item.
        error: ``‖y - x⁺‖ / η``, the gradient-mapping norm at the extrapolated point.
        status: :class:`optlayer.Status` per item (int8).
        stepsize: the current step ``η`` per item.
        velocity: the extrapolated point ``y`` (FISTA).
        t: the FISTA momentum scalar per item.
    """

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    stepsize: torch.Tensor
    velocity: torch.Tensor
    t: torch.Tensor


def _identity_prox(y, hyperparams=None, scaling=1.0):
    return y


@dataclass(eq=False)
class ProximalGradient(IterativeSolver):
    """FISTA with backtracking for ``min_x f(x, *args) + g(x, hyperparams_prox)``.

    Iteration (per batch item, with ``η`` found by backtracking until
    ``f(x⁺) ≤ f(y) + ⟨∇f(y), x⁺ - y⟩ + ‖x⁺ - y‖² / (2η)``):

        x⁺ = prox_{ηg}(y - η∇f(y)),  t⁺ = (1 + √(1 + 4t²)) / 2,
        y⁺ = x⁺ + ((t - 1) / t⁺)(x⁺ - x),

    with adaptive restart (``t = 1``, ``y⁺ = x⁺``) when ``⟨y - x⁺, x⁺ - x⟩ > 0``.
    Converged when the gradient mapping ``‖y - x⁺‖ / η ≤ tol``. The optimality
    map is the proximal-gradient fixed point ``T(x) = prox_g(x - ∇f(x))``
    (:func:`optlayer.conditions.prox_grad_step`, step 1).

    Args:
        fun: smooth ``f(x, *args, **kwargs)`` returning one value per batch item.
        prox: ``prox(y, hyperparams_prox, scaling)`` (JAXopt convention, as in
            :mod:`optlayer.prox`; ``scaling`` arrives as a tensor of batch shape,
            one step per item); None means ``g = 0``.
        stepsize: a fixed step ``η > 0``, or ``<= 0`` for backtracking (default).
        maxls: maximum backtracking trials per iteration.
        decrease_factor: step shrink factor of the backtracking.
        initial_stepsize: first trial step of the backtracking.
        acceleration: FISTA momentum (default True).
        (and the settings of :class:`IterativeSolver`: maxiter, tol, implicit_diff,
        implicit_solve, on_failure, check_every).

    Example:
        >>> import torch
        >>> from optlayer.prox import lasso
        >>> f = lambda x, y: 0.5 * ((x - y) ** 2).sum(-1)
        >>> y = torch.tensor([2.0, 0.3, -1.0], dtype=torch.float64)
        >>> ProximalGradient(f, lasso).run(torch.zeros(3, dtype=torch.float64), 0.5, y).params
        tensor([ 1.5000,  0.0000, -0.5000], dtype=torch.float64)
    """

    fun: Callable
    prox: Callable | None = None
    stepsize: float = 0.0
    maxls: int = 30
    decrease_factor: float = 0.5
    initial_stepsize: float = 1.0
    acceleration: bool = True

    def __post_init__(self):
        if not callable(self.fun):
            raise TypeError(f"{self.name}: fun must be callable; got {type(self.fun).__name__}")
        if self.prox is not None and not callable(self.prox):
            raise TypeError(f"{self.name}: prox must be callable or None")
        if not 0.0 < self.decrease_factor < 1.0:
            raise ValueError(f"{self.name}: decrease_factor must lie in (0, 1)")

    @property
    def _prox(self):
        return self.prox if self.prox is not None else _identity_prox

    def optimality_fun(self, params, hyperparams_prox, *args, **kwargs):
        """``T(x) - x``, ``T(x) = prox_g(x - ∇f(x), hyperparams_prox)`` (zero at the solution)."""
        T = prox_grad_step(self.fun, self._prox, 1.0)
        return T(params, hyperparams_prox, *args, **kwargs) - params

    def init_state(self, init, hyperparams_prox=None, *args, **kwargs) -> ProxGradState:
        batch = batch_shape_of(init)
        opts = {"dtype": init.dtype, "device": init.device}
        eta0 = self.stepsize if self.stepsize > 0 else self.initial_stepsize
        return ProxGradState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=init.device),
            error=torch.full(batch, math.inf, **opts),
            status=self._start_status(init, (hyperparams_prox, args), kwargs),
            stepsize=torch.full(batch, float(eta0), **opts),
            velocity=init,
            t=torch.ones(batch, **opts),
        )

    def _step(self, y, g, eta, hyperparams_prox):
        return self._prox(y - eta.unsqueeze(-1) * g, hyperparams_prox, eta)

    def _backtrack(self, y, fy, gy, eta, hyperparams_prox, args, kwargs):
        slack = 10 * torch.finfo(y.dtype).eps * (1 + fy.abs())
        accepted = torch.zeros_like(fy, dtype=torch.bool)
        x_acc = y
        for _ in range(self.maxls):
            x = self._step(y, gy, eta, hyperparams_prox)
            d = x - y
            fx = self.fun(x, *args, **kwargs)
            ok = fx <= fy + vdot(gy, d) + vdot(d, d) / (2 * eta) + slack
            new = ok & ~accepted
            x_acc = torch.where(new.unsqueeze(-1), x, x_acc)
            accepted = accepted | ok
            if bool(accepted.all()):
                return x_acc, eta
            eta = torch.where(accepted, eta, eta * self.decrease_factor)
        # Items that never passed keep the last (smallest-step) trial.
        return torch.where(accepted.unsqueeze(-1), x_acc, x), eta

    def update(self, params, state, hyperparams_prox=None, *args, **kwargs) -> OptStep:
        y = state.velocity if self.acceleration else params
        fy, gy = value_and_grad(self.fun, y, *args, **kwargs)
        eta = state.stepsize
        if self.stepsize > 0:
            x_new = self._step(y, gy, eta, hyperparams_prox)
        else:
            x_new, eta = self._backtrack(y, fy, gy, eta, hyperparams_prox, args, kwargs)
        error = norm(y - x_new) / eta
        if self.acceleration:
            t = state.t
            t_new = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
            restart = vdot(y - x_new, x_new - params) > 0
            beta = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
            velocity = x_new + beta.unsqueeze(-1) * (x_new - params)
            t_new = torch.where(restart, torch.ones_like(t), t_new)
        else:
            velocity, t_new = x_new, state.t
        new_state = state._replace(error=error, stepsize=eta, velocity=velocity, t=t_new)
        return OptStep(x_new, new_state)

    def run(self, init, hyperparams_prox=None, *args, **kwargs) -> OptStep:
        """Solve from ``init`` (``(*batch, n)``); see :meth:`IterativeSolver.run`.

        Args:
            init: initial point.
            hyperparams_prox: passed to ``prox`` (e.g. the l1 weight); differentiable.
            *args, **kwargs: passed to ``fun``.
        """
        return super().run(init, hyperparams_prox, *args, **kwargs)


_SHARED = ("maxiter", "tol", "implicit_diff", "implicit_solve", "on_failure", "check_every")


@dataclass(eq=False)
class ProjectedGradient(IterativeSolver):
    """Accelerated projected gradient for ``min_{x ∈ C(hyper)} f(x, *args)``.

    :class:`ProximalGradient` with ``prox = projection`` (the prox of the
    indicator of ``C``), so it shares FISTA, backtracking and statuses; the
    optimality map is the projected-gradient fixed point
    ``T(x) = P_C(x - ∇f(x))``.

    Args:
        fun: smooth objective, one value per batch item.
        projection: a projection onto ``C`` (e.g. from :mod:`optlayer.projections`),
            called with ``hyperparams_proj`` as :func:`optlayer.conditions.call_projection`
            (None → ``projection(y)``, a tuple → ``projection(y, *hyper)``, ...).
        stepsize, maxls, decrease_factor, initial_stepsize, acceleration: as in
            :class:`ProximalGradient`.

    Example:
        >>> import torch
        >>> f = lambda x, y: 0.5 * ((x - y) ** 2).sum(-1)
        >>> from optlayer.projections import box
        >>> y = torch.tensor([2.0, 0.3, -1.0], dtype=torch.float64)
        >>> ProjectedGradient(f, box).run(torch.zeros(3, dtype=torch.float64), (0.0, 1.0), y).params
        tensor([1.0000, 0.3000, 0.0000], dtype=torch.float64)
    """

    fun: Callable
    projection: Callable
    stepsize: float = 0.0
    maxls: int = 30
    decrease_factor: float = 0.5
    initial_stepsize: float = 1.0
    acceleration: bool = True

    def __post_init__(self):
        if not callable(self.projection):
            raise TypeError(f"{self.name}: projection must be callable")
        self._pg = ProximalGradient(
            self.fun,
            prox_from_projection(self.projection),
            stepsize=self.stepsize,
            maxls=self.maxls,
            decrease_factor=self.decrease_factor,
            initial_stepsize=self.initial_stepsize,
            acceleration=self.acceleration,
            **{k: getattr(self, k) for k in _SHARED},
        )
        self._pg._label = self.name

    def init_state(self, init, hyperparams_proj=None, *args, **kwargs) -> ProxGradState:
        return self._pg.init_state(init, hyperparams_proj, *args, **kwargs)

    def update(self, params, state, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        return self._pg.update(params, state, hyperparams_proj, *args, **kwargs)

    def optimality_fun(self, params, hyperparams_proj, *args, **kwargs):
        """``P_C(x - ∇f(x)) - x`` (zero at the solution)."""
        return self._pg.optimality_fun(params, hyperparams_proj, *args, **kwargs)

    def run(self, init, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        """Solve from ``init``; ``hyperparams_proj`` goes to ``projection``, the rest to ``fun``."""
        return self._pg.run(init, hyperparams_proj, *args, **kwargs)


@dataclass(eq=False)
class GradientDescent(IterativeSolver):
    """(Accelerated) gradient descent with backtracking for smooth ``min_x f(x, *args)``.

    :class:`ProximalGradient` with ``g = 0``; optimality map ``∇₁f`` (via the
    gradient-step fixed point ``x - ∇f(x)``). Converged when ``‖∇f(y)‖ ≤ tol``.

    Example:
        >>> import torch
        >>> f = lambda x, y: 0.5 * ((x - y) ** 2).sum(-1) + 0.5 * (x ** 2).sum(-1)
        >>> y = torch.tensor([2.0, -4.0], dtype=torch.float64)
        >>> GradientDescent(f).run(torch.zeros(2, dtype=torch.float64), y).params
        tensor([ 1., -2.], dtype=torch.float64)
    """

    fun: Callable
    stepsize: float = 0.0
    maxls: int = 30
    decrease_factor: float = 0.5
    initial_stepsize: float = 1.0
    acceleration: bool = True

    def __post_init__(self):
        self._pg = ProximalGradient(
            self.fun,
            None,
            stepsize=self.stepsize,
            maxls=self.maxls,
            decrease_factor=self.decrease_factor,
            initial_stepsize=self.initial_stepsize,
            acceleration=self.acceleration,
            **{k: getattr(self, k) for k in _SHARED},
        )
        self._pg._label = self.name

    def init_state(self, init, *args, **kwargs) -> ProxGradState:
        return self._pg.init_state(init, None, *args, **kwargs)

    def update(self, params, state, *args, **kwargs) -> OptStep:
        return self._pg.update(params, state, None, *args, **kwargs)

    def optimality_fun(self, params, *args, **kwargs):
        """``-∇f(x)`` (the gradient-step residual ``T(x) - x`` with step 1)."""
        return self._pg.optimality_fun(params, None, *args, **kwargs)

    def run(self, init, *args, **kwargs) -> OptStep:
        """Solve from ``init``; ``args``/``kwargs`` go to ``fun``."""
        return self._pg.run(init, None, *args, **kwargs)


