"""Smooth unconstrained optimality maps: stationarity, gradient descent and Newton.

For ``x*(θ) = argmin_x f(x, θ)`` with ``f`` twice differentiable (paper eqs. 4,
5 and 15, Blondel et al. 2021):

* ``F(x, θ) = ∇₁f(x, θ)`` (root map);
* ``T(x, θ) = x - η ∇₁f(x, θ)`` (gradient-descent fixed point, any ``η > 0``);
* ``T(x, θ) = x - [∇₁²f(x, θ)]⁻¹ ∇₁f(x, θ)`` (Newton fixed point).
"""

from __future__ import annotations

import torch

from optlayer.conditions._common import batched_grad, batched_hessian

__all__ = ["stationary", "gradient_step", "newton_step"]


def stationary(fun):
    """Root map ``F(x, *args, **kwargs) = ∇₁f(x, *args, **kwargs)``.

    Args:
        fun: smooth objective ``f(x, *args, **kwargs)`` returning one value per
            batch item (``x`` has shape ``(*batch, n)``).

    Returns:
        ``F`` with the signature of ``fun``, zero exactly at the stationary points.

    Example:
        >>> import torch
        >>> F = stationary(lambda x, y: 0.5 * ((x - y) ** 2).sum(-1))
        >>> y = torch.tensor([1.0, 2.0])
        >>> F(y, y)
        tensor([0., 0.])
    """
    return batched_grad(fun)


def gradient_step(fun, stepsize: float = 1.0):
    """Fixed-point map ``T(x, *args) = x - η ∇₁f(x, *args)`` (``η = stepsize > 0``).

    Its fixed points are the stationary points of ``f`` for every ``η > 0``,
    and ``I - ∂₁T = η ∇₁²f``, so implicit derivatives do not depend on ``η``.

    Args:
        fun: smooth objective (per batch item).
        stepsize: ``η``.

    Returns:
        ``T(x, *args, **kwargs)`` shaped like ``x``.
    """
    grad = batched_grad(fun)

    def T(x, *args, **kwargs):
        return x - stepsize * grad(x, *args, **kwargs)

    return T


def newton_step(fun):
    """Newton fixed-point map ``T(x, *args) = x - [∇₁²f(x, *args)]⁻¹ ∇₁f(x, *args)``.

    The Hessian is built from ``n`` JVPs of the gradient (``torch.func``) and
    factorised by Cholesky (it must be positive definite near the solution, as
    for a strictly convex ``f``). At a stationary point ``∂₁T = 0``.

    Args:
        fun: twice differentiable objective (per batch item), ``x`` of shape ``(*batch, n)``.

    Returns:
        ``T(x, *args, **kwargs)`` shaped like ``x``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> T = newton_step(lambda x: 0.5 * x @ A @ x - b @ x)
        >>> x = T(torch.zeros(2, dtype=torch.float64))  # exact in one step
        >>> bool(torch.allclose(A @ x, b))
        True
    """
    grad = batched_grad(fun)

    def T(x, *args, **kwargs):
        g = grad(x, *args, **kwargs)
        H = batched_hessian(fun, x, *args, **kwargs)
        L = torch.linalg.cholesky(H)
        return x - torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)

    return T
