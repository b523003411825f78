"""KKT optimality maps for constrained problems (paper eq. 6, Blondel et al. 2021).

For ``argmin_z f(z, θ)`` subject to ``G(z, θ) ≤ 0`` and ``H(z, θ) = 0``, the
solution is grouped with its multipliers as ``x* = (z*, ν*, λ*)`` (``ν`` for the
equalities, ``λ ≥ 0`` for the inequalities) and is a root of

    F(z, ν, λ) = ( ∇₁f(z) + ∂₁G(z)ᵀλ + ∂₁H(z)ᵀν ,  H(z) ,  λ ∘ G(z) ).

Jacobian-transpose products are VJPs of ``G`` and ``H`` (``torch.func``), so
``G`` and ``H`` are never materialised as Jacobians. Variables have shape
``(*batch, n)``; constraint functions return ``(*batch, q)`` / ``(*batch, r)``.
"""

from __future__ import annotations

import torch

from optlayer.conditions._common import batched_grad
from optlayer.errors import OptTypeError

__all__ = ["kkt", "qp_kkt"]


def _call(fun, z, params):
    return fun(z) if params is None else fun(z, params)


def _empty(dual) -> bool:
    return dual is None or (isinstance(dual, torch.Tensor) and dual.shape[-1:] == (0,))


def _absent(dual):
    """Residual of an absent block: None, or an empty tensor for an empty dual."""
    return None if dual is None else torch.zeros_like(dual)


def kkt(fun, eq_fun=None, ineq_fun=None):
    """KKT root map of ``min f(z) s.t. G(z) ≤ 0, H(z) = 0`` (JAXopt's ``make_kkt_optimality_fun``).

    Args:
        fun: objective ``f(z, params_obj)`` (or ``f(z)`` when ``params_obj`` is None),
            one value per batch item.
        eq_fun: ``H(z, params_eq) -> (*batch, q)``, or None (no equalities).
        ineq_fun: ``G(z, params_ineq) -> (*batch, r)``, or None (no inequalities).

    Returns:
        ``F(x, params_obj=None, params_eq=None, params_ineq=None)`` where
        ``x = (z, nu, lam)`` (``nu``/``lam`` are None for an absent block); it
        returns ``(∇f + ∂Gᵀλ + ∂Hᵀν, H(z), λ∘G(z))`` with None for absent blocks
        (an absent block may also carry an empty dual of shape ``(*batch, 0)``,
        whose residual is then an empty tensor, so that every leaf is a tensor).

    Raises:
        OptTypeError: a dual block is given for an absent constraint function or
            missing for a present one.

    Example:
        >>> import torch
        >>> # min ½‖z‖² s.t. z₁ + z₂ = 1: z* = (½, ½), ν* = -½
        >>> F = kkt(lambda z: 0.5 * (z ** 2).sum(-1), eq_fun=lambda z: z.sum(-1, keepdim=True) - 1)
        >>> F((torch.tensor([0.5, 0.5]), torch.tensor([-0.5]), None))
        (tensor([0., 0.]), tensor([0.]), None)
    """

    def F(x, params_obj=None, params_eq=None, params_ineq=None):
        if not isinstance(x, (tuple, list)) or len(x) != 3:
            raise OptTypeError(
                "kkt: the solution must be a tuple (primal, dual_eq, dual_ineq); "
                f"got {type(x).__name__}",
                hint="pass None for the dual of an absent constraint block",
            )
        z, nu, lam = x
        for name, dual, cfun in (("dual_eq", nu, eq_fun), ("dual_ineq", lam, ineq_fun)):
            if cfun is None and _empty(dual):
                continue
            if (dual is None) != (cfun is None):
                have = "given" if dual is not None else "missing"
                raise OptTypeError(
                    f"kkt: {name} is {have} but the constraint function is "
                    f"{'absent' if cfun is None else 'present'}"
                )

        def lagrangian(zz):
            val = _call(fun, zz, params_obj).sum()
            if eq_fun is not None:
                val = val + (nu * _call(eq_fun, zz, params_eq)).sum()
            if ineq_fun is not None:
                val = val + (lam * _call(ineq_fun, zz, params_ineq)).sum()
            return val

        stat = batched_grad(lagrangian)(z)
        eq = _absent(nu) if eq_fun is None else _call(eq_fun, z, params_eq)
        comp = _absent(lam) if ineq_fun is None else lam * _call(ineq_fun, z, params_ineq)
        return stat, eq, comp

    return F


def _mv(M, v):
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _mtv(M, v):
    return (M.mT @ v.unsqueeze(-1)).squeeze(-1)


def qp_kkt(x, Q, p, G=None, h=None, A=None, b=None):
    """KKT residual of the QP ``min ½zᵀQz + pᵀz s.t. Gz ≤ h, Az = b``.

    .. math::
        F(z, ν, λ) = (Qz + p + Aᵀν + Gᵀλ,\\; Az - b,\\; λ ∘ (Gz - h)).

    Args:
        x: ``(z, nu, lam)`` with ``z`` of shape ``(*batch, n)``, ``nu``
            ``(*batch, q)`` or None, ``lam`` ``(*batch, r)`` or None.
        Q: ``(*batch, n, n)`` (may broadcast), p: ``(*batch, n)``.
        G, h: inequality data ``(*batch, r, n)``, ``(*batch, r)``, or None.
        A, b: equality data ``(*batch, q, n)``, ``(*batch, q)``, or None.

    Returns:
        The tuple of residuals, None where a block is absent.

    Example:
        >>> import torch
        >>> Q, p = torch.eye(2), torch.tensor([-1.0, -1.0])
        >>> A, b = torch.ones(1, 2), torch.tensor([1.0])
        >>> qp_kkt((torch.tensor([0.5, 0.5]), torch.tensor([0.5]), None), Q, p, A=A, b=b)
        (tensor([0., 0.]), tensor([0.]), None)
    """
    z, nu, lam = x
    stat = _mv(Q, z) + p
    eq = comp = None
    if A is not None:
        stat = stat + _mtv(A, nu)
        eq = _mv(A, z) - b
    if G is not None:
        stat = stat + _mtv(G, lam)
        comp = lam * (_mv(G, z) - h)
    return stat, eq, comp
