"""Mirror descent in the KL geometry (exponentiated gradient) on simplices."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from optlayer.conditions import call_projection, kl_simplex_projection, mirror_descent_step
from optlayer.solvers._base import IterativeSolver, OptStep, batch_shape_of, norm, value_and_grad

__all__ = ["MirrorDescent", "MirrorDescentState"]


class MirrorDescentState(NamedTuple):
    """State of :class:`MirrorDescent`.

    Attributes:
        iter_num, error, status: as for every solver; ``error = ‖x⁺ - x‖ / η``.
        stepsize: the current step ``η`` per item.
    """

    iter_num: torch.Tensor
    error: torch.Tensor
    status: torch.Tensor
    stepsize: torch.Tensor


def _kl(a, b):
    """Generalised KL divergence ``Σ a log(a/b) - a + b`` per item (``0 log 0 = 0``)."""
    ratio = torch.where(a > 0, a / b, torch.ones_like(a))
    return (torch.xlogy(a, ratio) - a + b).sum(-1)


@dataclass(eq=False)
class MirrorDescent(IterativeSolver):
    """Exponentiated gradient for ``min_{x ∈ C} f(x, *args)``, C a simplex (or product of).

    Iteration (negative-entropy mirror map ``∇φ = log``, KL projection ``P``):

        x⁺ = P(log x - η∇f(x), hyperparams_proj)  (= softmax(log x - η∇f(x)) on the simplex),

    with ``η`` backtracked per item until
    ``f(x⁺) ≤ f(x) + ⟨∇f(x), x⁺ - x⟩ + KL(x⁺, x) / η`` (relative smoothness).
    Converged when ``‖x⁺ - x‖ / η ≤ tol``. The optimality map is the
    mirror-descent fixed point ``T(x) - x`` with step 1
    (:func:`optlayer.conditions.mirror_descent_step`); it is differentiable where
    the solution lies in the relative interior (``x > 0``), e.g. with an
    entropy term in ``f``.

    Args:
        fun: smooth objective, one value per batch item.
        projection: KL projection of a dual point (default: softmax onto the
            simplex of sum ``hyperparams_proj`` or 1, :func:`optlayer.projections.kl_simplex`);
            called with ``hyperparams_proj`` as :func:`optlayer.conditions.call_projection`.
        stepsize: fixed ``η > 0``, or ``<= 0`` for backtracking (default).
        maxls, decrease_factor, initial_stepsize: backtracking settings.

    Example:
        >>> import torch
        >>> c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> f = lambda x, c: (c * x).sum(-1) + (x * torch.log(x)).sum(-1)
        >>> x = MirrorDescent(f).run(torch.full((3,), 1 / 3, dtype=torch.float64), None, c).params
        >>> bool(torch.allclose(x, torch.softmax(-c, -1)))
        True
    """

    fun: Callable
    projection: Callable = kl_simplex_projection
    stepsize: float = 0.0
    maxls: int = 30
    decrease_factor: float = 0.5
    initial_stepsize: float = 1.0

    def optimality_fun(self, params, hyperparams_proj, *args, **kwargs):
        """``P(log x - ∇f(x)) - x`` (zero at an interior solution)."""
        T = mirror_descent_step(self.fun, self.projection, torch.log, 1.0)
        return T(params, hyperparams_proj, *args, **kwargs) - params

    def init_state(self, init, hyperparams_proj=None, *args, **kwargs) -> MirrorDescentState:
        batch = batch_shape_of(init)
        opts = {"dtype": init.dtype, "device": init.device}
        eta0 = self.stepsize if self.stepsize > 0 else self.initial_stepsize
        status = self._start_status(init, (hyperparams_proj, args), kwargs)
        return MirrorDescentState(
            iter_num=torch.zeros(batch, dtype=torch.long, device=init.device),
            error=torch.full(batch, math.inf, **opts),
            status=status,
            stepsize=torch.full(batch, float(eta0), **opts),
        )

    def _step(self, x, g, eta, hyper):
        return call_projection(self.projection, torch.log(x) - eta.unsqueeze(-1) * g, hyper)

    def update(self, params, state, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        x = params
        fx, g = value_and_grad(self.fun, x, *args, **kwargs)
        eta = state.stepsize
        x_new = self._step(x, g, eta, hyperparams_proj)
        if self.stepsize <= 0:
            slack = 10 * torch.finfo(x.dtype).eps * (1 + fx.abs())
            accepted = torch.zeros_like(fx, dtype=torch.bool)
            x_acc = x_new
            for _ in range(self.maxls):
                fn = self.fun(x_new, *args, **kwargs)
                ok = fn <= fx + ((x_new - x) * g).sum(-1) + _kl(x_new, x) / eta + slack
                x_acc = torch.where((ok & ~accepted).unsqueeze(-1), x_new, x_acc)
                accepted = accepted | ok
                if bool(accepted.all()):
                    break
                eta = torch.where(accepted, eta, eta * self.decrease_factor)
                x_new = self._step(x, g, eta, hyperparams_proj)
            x_new = torch.where(accepted.unsqueeze(-1), x_acc, x_new)
        error = norm(x_new - x) / eta
        return OptStep(x_new, state._replace(error=error, stepsize=eta))

    def run(self, init, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        """Solve from ``init`` (strictly positive, in C); ``hyperparams_proj`` goes to
        ``projection``, the rest to ``fun``."""
        return super().run(init, hyperparams_proj, *args, **kwargs)
