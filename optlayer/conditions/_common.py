"""Shared helpers of the optimality maps: batched gradients and Hessians.

Convention used by every map in :mod:`optlayer.conditions`: a variable ``x``
has shape ``(*batch, n)`` and an objective ``fun(x, *args, **kwargs)`` returns
one value per batch item (shape ``batch``; a 0-d tensor when unbatched). Items
are independent, so the gradient of ``fun(...).sum()`` is the per-item gradient.
"""

from __future__ import annotations

import torch

from optlayer.linalg._common import functorch_active

__all__ = ["batched_grad", "batched_hessian", "call_projection"]


def batched_grad(fun):
    """``∇₁ fun`` for a per-item objective: the gradient of the batch sum.

    By ``torch.func.grad``; where ``x`` is a tensor that requires grad, grad mode is on
    and no ``torch.func`` transform is active (an implicit backward differentiating
    ``F``), by ``torch.autograd.grad`` with ``create_graph`` instead: the same values and
    graph, for a fraction of the dispatch overhead at layer sizes.

    Args:
        fun: ``fun(x, *args, **kwargs)`` returning a tensor of batch shape.

    Returns:
        ``g(x, *args, **kwargs)`` of the shape of ``x`` (a tensor or a tuple of tensors).

    Example:
        >>> import torch
        >>> g = batched_grad(lambda x: (x ** 2).sum(-1))
        >>> g(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([[2., 4.],
                [6., 8.]])
    """

    def total(x, *args, **kwargs):
        return fun(x, *args, **kwargs).sum()

    transformed = torch.func.grad(total)

    def grad(x, *args, **kwargs):
        if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()) \
                or functorch_active():
            return transformed(x, *args, **kwargs)
        value = total(x, *args, **kwargs)
        if not value.requires_grad:  # fun does not depend on x
            return torch.zeros_like(x)
        return torch.autograd.grad(value, x, create_graph=True, allow_unused=True,
                                   materialize_grads=True)[0]

    return grad


def batched_hessian(fun, x, *args, **kwargs) -> torch.Tensor:
    """``∇₁² fun(x)`` of shape ``(*batch, n, n)``: ``n`` JVPs of the gradient in one ``vmap``.

    Args:
        fun: per-item objective (see module docstring).
        x: point of shape ``(*batch, n)``.

    Returns:
        The Hessian of each item, ``H[..., i, j] = ∂²f/∂x_i∂x_j``.
    """
    grad = batched_grad(fun)
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)

    def column(e):
        return torch.func.jvp(lambda z: grad(z, *args, **kwargs), (x,), (e.expand_as(x),))[1]

    cols = torch.func.vmap(column)(eye)  # (n, *batch, n): cols[j] = H e_j
    return cols.movedim(0, -1)


def call_projection(projection, y, hyperparams):
    """Call a projection of :mod:`optlayer.projections` with solver hyperparameters.

    ``None`` → ``projection(y)``; a tuple/list → ``projection(y, *hyperparams)``
    (e.g. ``(lower, upper)`` for ``box``); a dict → ``projection(y, **hyperparams)``;
    anything else → ``projection(y, hyperparams)`` (e.g. ``value`` for ``simplex``).

    Example:
        >>> import torch
        >>> from optlayer.projections import box
        >>> call_projection(box, torch.tensor([-1.0, 0.5, 2.0]), (0.0, 1.0))
        tensor([0.0000, 0.5000, 1.0000])
    """
    if hyperparams is None:
        return projection(y)
    if isinstance(hyperparams, (tuple, list)):
        return projection(y, *hyperparams)
    if isinstance(hyperparams, dict):
        return projection(y, **hyperparams)
    return projection(y, hyperparams)
