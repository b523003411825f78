"""The proximal-operator catalog: ``optlayer.prox.<name>(x, hyper..., scaling=1.0)``.

JAXopt's convention: ``prox(x, hyper, scaling) = argmin_z 0.5 ||z - x||^2 +
scaling * g(z)``, where ``g`` is the function named by the entry and ``hyper``
its hyperparameters. Each entry works over the last dimension and broadcasts
over leading batch dimensions; hyperparameters may be numbers or tensors
broadcasting against the batch (one value per batch item has shape ``(...,)``
for the scalar weights). All entries are closed forms, differentiable by
autograd in ``x``, the hyperparameters and ``scaling``, with finite gradients
at kinks.

Example:
    >>> import torch
    >>> from optlayer import prox
    >>> prox.lasso(torch.tensor([3.0, -0.5]), 1.0)
    tensor([2., -0.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optlayer.projections import box as _box
from optlayer.projections import l1_ball as _l1_ball

__all__ = [
    "none",
    "lasso",
    "nonneg_lasso",
    "elastic_net",
    "group_lasso",
    "ridge",
    "nonneg_ridge",
    "linf",
    "box_indicator",
    "from_projection",
]


def _weight(value, x: torch.Tensor) -> torch.Tensor:
    """A scalar-per-item weight as a tensor broadcasting over the last dim of ``x``."""
    w = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return w.unsqueeze(-1) if w.dim() > 0 else w


def _soft_threshold(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.relu(x.abs() - thresh)


def none(x: torch.Tensor, hyperparams=None, scaling=1.0) -> torch.Tensor:
    """Prox of ``g = 0``: the identity."""
    return x


def lasso(x: torch.Tensor, l1reg=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of ``g(z) = l1reg * ||z||_1``: soft thresholding.

    ``z = sign(x) * max(|x| - scaling * l1reg, 0)``.
    """
    return _soft_threshold(x, _weight(l1reg, x) * _weight(scaling, x))


def nonneg_lasso(x: torch.Tensor, l1reg=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of ``g(z) = l1reg * ||z||_1 + indicator(z >= 0)``.

    ``z = max(x - scaling * l1reg, 0)``.
    """
    return torch.relu(x - _weight(l1reg, x) * _weight(scaling, x))


def elastic_net(x: torch.Tensor, l1reg=1.0, l2reg=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of ``g(z) = l1reg * ||z||_1 + 0.5 * l2reg * ||z||_2^2``.

    ``z = sign(x) * max(|x| - scaling * l1reg, 0) / (1 + scaling * l2reg)``.
    """
    s = _weight(scaling, x)
    return _soft_threshold(x, _weight(l1reg, x) * s) / (1 + s * _weight(l2reg, x))


def ridge(x: torch.Tensor, l2reg=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of ``g(z) = 0.5 * l2reg * ||z||_2^2``: ``z = x / (1 + scaling * l2reg)``."""
    return x / (1 + _weight(scaling, x) * _weight(l2reg, x))


def nonneg_ridge(x: torch.Tensor, l2reg=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of ``g(z) = 0.5 * l2reg * ||z||_2^2 + indicator(z >= 0)``.

    ``z = max(x, 0) / (1 + scaling * l2reg)``.
    """
    return torch.relu(x) / (1 + _weight(scaling, x) * _weight(l2reg, x))


def _group_norms(x: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Per-coordinate norm of the coordinate's group, shape of ``x`` (no NaN at 0)."""
    if groups is None:
        sq = (x * x).sum(-1, keepdim=True)
    else:
        groups = torch.as_tensor(groups, device=x.device)
        if groups.shape != x.shape[-1:] or groups.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                "group_lasso: groups must be an integer tensor of shape (n,) giving the "
                f"group id of each coordinate; got shape {tuple(groups.shape)}"
            )
        groups = groups.long()
        n_groups = int(groups.max()) + 1
        per = torch.zeros(x.shape[:-1] + (n_groups,), dtype=x.dtype, device=x.device)
        per = per.index_add(-1, groups, x * x)
        sq = per.index_select(-1, groups)
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, 1.0)), 0.0)


def group_lasso(x: torch.Tensor, l2reg=1.0, scaling=1.0, groups=None) -> torch.Tensor:
    """Prox of ``g(z) = l2reg * sum_G ||z_G||_2`` (block soft thresholding).

    ``z_G = max(1 - scaling * l2reg / ||x_G||, 0) * x_G`` for each group ``G``;
    with ``groups=None`` the whole vector is one group.

    Args:
        x: shape ``(..., n)``.
        l2reg: weight, scalar or ``(...)``.
        scaling: prox step, scalar or ``(...)``.
        groups: optional integer tensor ``(n,)``, the group id (0, 1, ...) of
            each coordinate.
    """
    norms = _group_norms(x, groups)
    thresh = _weight(l2reg, x) * _weight(scaling, x)
    keep = norms > thresh
    factor = torch.where(keep, 1 - thresh / torch.where(keep, norms, 1.0), 0.0)
    return factor * x


def linf(x: torch.Tensor, radius=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of ``g(z) = radius * ||z||_inf``, via Moreau's decomposition.

    The conjugate of ``radius * ||.||_inf`` is the indicator of the l1 ball of
    that radius, so ``z = x - P_{||.||_1 <= scaling * radius}(x)``.
    """
    r = torch.as_tensor(radius, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(scaling, dtype=x.dtype, device=x.device)
    return x - _l1_ball(x, r * s)


def box_indicator(x: torch.Tensor, lower=0.0, upper=1.0, scaling=1.0) -> torch.Tensor:
    """Prox of the indicator of ``{lower <= z <= upper}``: clipping (``scaling`` unused)."""
    return _box(x, lower, upper)


def from_projection(projection: Callable) -> Callable:
    """The prox of the indicator of a set, given its projection.

    ``from_projection(proj)(x, hyperparams, scaling)`` returns
    ``proj(x, *hyperparams)`` (``hyperparams`` a tuple, a single value, or
    None); the prox of an indicator does not depend on ``scaling``.

    Example:
        >>> from optlayer import projections
        >>> prox_simplex = from_projection(projections.simplex)
        >>> prox_simplex(torch.tensor([0.2, 0.4]), 1.0)
        tensor([0.4000, 0.6000])
    """
    if not callable(projection):
        raise TypeError(f"from_projection expects a projection function; got {projection!r}")

    def prox(x, hyperparams=None, scaling=1.0):
        if hyperparams is None:
            return projection(x)
        if isinstance(hyperparams, tuple):
            return projection(x, *hyperparams)
        return projection(x, hyperparams)

    prox.__name__ = f"prox_{getattr(projection, '__name__', 'projection')}"
    prox.__doc__ = f"Prox of the indicator of the set of {prox.__name__[5:]}."
    return prox
