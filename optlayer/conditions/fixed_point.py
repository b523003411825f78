"""Fixed-point optimality maps of first-order methods (paper eqs. 7, 9, 11, 16).

For ``x*(θ) = argmin_x f(x, θ) + g(x, θ)`` with ``f`` smooth, every map ``T``
below has ``x*`` as a fixed point, ``T(x*, θ) = x*``, for any step ``η > 0``; use
them with :func:`optlayer.custom_fixed_point`, or ``T(x) - x`` with
``custom_root``. Variables are ``(*batch, n)``; objectives return one value per
batch item. Proximal operators follow the JAXopt convention
``prox(y, hyperparams, scaling)`` = ``argmin_x ½‖x - y‖² + scaling · g(x, hyperparams)``;
projections are those of :mod:`optlayer.projections`, called with the solver's
hyperparameters by :func:`optlayer.conditions.call_projection` (None → no
extra argument, a tuple → positional arguments, e.g. ``(lower, upper)``).
"""

from __future__ import annotations

import torch

from optlayer.conditions._common import batched_grad, call_projection
from optlayer.projections import kl_simplex

__all__ = [
    "prox_grad_step",
    "proj_grad_step",
    "prox_from_projection",
    "mirror_descent_step",
    "kl_simplex_projection",
    "block_prox_grad_step",
]


def prox_grad_step(fun, prox, stepsize: float = 1.0):
    """Proximal-gradient fixed point ``T(x) = prox_{ηg}(x - η∇₁f(x, *args), hyper)``.

    Args:
        fun: smooth part ``f(x, *args, **kwargs)``, one value per batch item.
        prox: ``prox(y, hyperparams_prox, scaling)``.
        stepsize: ``η > 0`` (any value gives the same fixed points).

    Returns:
        ``T(x, hyperparams_prox, *args, **kwargs)`` shaped like ``x``.

    Example:
        >>> import torch
        >>> soft = lambda y, lam, s: torch.sign(y) * torch.clamp(y.abs() - lam * s, min=0)
        >>> T = prox_grad_step(lambda x, y: 0.5 * ((x - y) ** 2).sum(-1), soft)
        >>> y = torch.tensor([2.0, 0.3])
        >>> T(torch.tensor([1.5, 0.0]), 0.5, y)  # lasso solution: soft-threshold of y
        tensor([1.5000, 0.0000])
    """
    grad = batched_grad(fun)

    def T(x, hyperparams_prox, *args, **kwargs):
        y = x - stepsize * grad(x, *args, **kwargs)
        return prox(y, hyperparams_prox, stepsize)

    return T


def prox_from_projection(projection):
    """The prox of the indicator of a set: ``prox(y, hyper, scaling) = P_C(y; hyper)``.

    Example:
        >>> import torch
        >>> from optlayer.projections import nonneg
        >>> prox = prox_from_projection(nonneg)
        >>> prox(torch.tensor([-1.0, 2.0]), None, 0.3)
        tensor([0., 2.])
    """

    def prox(y, hyperparams=None, scaling=1.0):
        return call_projection(projection, y, hyperparams)

    return prox


def proj_grad_step(fun, projection, stepsize: float = 1.0):
    """Projected-gradient fixed point ``T(x) = P_C(x - η∇₁f(x, *args), hyper)``.

    :func:`prox_grad_step` with the prox :func:`prox_from_projection` of ``projection``.

    Returns:
        ``T(x, hyperparams_proj, *args, **kwargs)``.
    """
    return prox_grad_step(fun, prox_from_projection(projection), stepsize)


def kl_simplex_projection(y, hyperparams=None):
    """KL projection onto the probability simplex from the dual point ``y``: ``softmax(y)``.

    It is ``argmin_{x ∈ Δ} KL(x, exp(y))`` (the mirror map ``∇φ*(y) = exp(y)``
    of the negative entropy, then the KL projection onto the simplex).
    ``hyperparams`` (the simplex ``value``, default 1) scales the result.
    """
    return kl_simplex(y) if hyperparams is None else kl_simplex(y, hyperparams)


def _log(x):
    return torch.log(x)


def mirror_descent_step(fun, projection=kl_simplex_projection, mapping=_log, stepsize=1.0):
    """Mirror-descent fixed point ``T(x) = proj^φ_C(∇φ(x) - η∇₁f(x, *args), hyper)``.

    With the defaults (``φ(x) = ⟨x, log x - 1⟩``, ``∇φ = log``, KL projection
    onto the simplex) this is the exponentiated-gradient map
    ``T(x) = softmax(log x - η∇₁f(x))``, whose fixed points in the relative
    interior of the simplex are the minimisers of ``f`` over the simplex.

    Args:
        fun: smooth objective, one value per batch item.
        projection: Bregman projection of the dual point ``y`` (e.g.
            :func:`optlayer.projections.kl_simplex`), called as in :func:`call_projection`.
        mapping: the mirror map ``∇φ``.
        stepsize: ``η > 0``.

    Returns:
        ``T(x, hyperparams_proj, *args, **kwargs)``.

    Example:
        >>> import torch
        >>> c = torch.tensor([1.0, 2.0, 3.0])
        >>> T = mirror_descent_step(lambda x: (c * x).sum(-1) + (x * torch.log(x)).sum(-1))
        >>> x = torch.softmax(-c, -1)  # entropy-regularised minimiser
        >>> bool(torch.allclose(T(x, None), x))
        True
    """
    grad = batched_grad(fun)

    def T(x, hyperparams_proj, *args, **kwargs):
        y = mapping(x) - stepsize * grad(x, *args, **kwargs)
        return call_projection(projection, y, hyperparams_proj)

    return T


def block_prox_grad_step(fun, prox, stepsize=1.0):
    """Block proximal-gradient fixed point (paper eq. 16) for ``x = (x_1, ..., x_m)``.

    ``T(x)_j = [prox_{η_j g}]_j(x_j - η_j [∇₁f(x)]_j, hyper_j)`` for a block-separable
    ``g``. ``prox`` is one prox used for every block or a sequence of one per
    block; ``stepsize`` a float or one per block; ``hyperparams_prox`` one value
    or one per block (a tuple of the same length as ``x``).

    Returns:
        ``T(x, hyperparams_prox, *args, **kwargs)`` returning a tuple of blocks.
    """

    def grad_fn(x, *args, **kwargs):
        return torch.func.grad(lambda xs: fun(xs, *args, **kwargs).sum())(x)

    def T(x, hyperparams_prox, *args, **kwargs):
        x = tuple(x)
        m = len(x)
        proxes = list(prox) if isinstance(prox, (list, tuple)) else [prox] * m
        steps = list(stepsize) if isinstance(stepsize, (list, tuple)) else [stepsize] * m
        if isinstance(hyperparams_prox, (list, tuple)) and len(hyperparams_prox) == m:
            hypers = list(hyperparams_prox)
        else:
            hypers = [hyperparams_prox] * m
        g = grad_fn(x, *args, **kwargs)
        return tuple(
            proxes[j](x[j] - steps[j] * g[j], hypers[j], steps[j]) for j in range(m)
        )

    return T
