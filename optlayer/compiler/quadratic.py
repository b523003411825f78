"""Quadratic smooth parts: detect them in the IR, read ``(Q, p)`` off the lowered ``f``.

When every smooth term of a plan is at most quadratic in the variables
(least squares, ridge, quadratic forms, linear terms), the smooth part is
``f(z) = 1/2 z'Qz + p'z + c`` with ``Q (B, N, N)`` and ``p (B, N)`` torch
functions of the parameters. The solvers then iterate on matrix products
instead of walking the expression tape, the Lipschitz constant of ``grad f``
is ``lambda_max(Q)`` (one batched ``eigvalsh``), and the implicit backward
differentiates ``(Q, p)`` once per call instead of the tape per product.

``Q`` and ``p`` come from the terms' coefficients
(:class:`optlayer.compiler.coefficients.QuadraticModel`, :meth:`Program.quad`) where they
cover the terms, else from ``N + 1`` gradient evaluations in one batched call
(:func:`quadratic_data`): ``p = grad f(0)``, ``Q e_j = grad f(e_j) - p`` (exact for a quadratic),
keeping the autograd graph to the parameters when one of them requires grad.
"""

from __future__ import annotations

import torch

__all__ = ["is_quadratic", "quadratic_data", "lambda_max", "bmv", "degree"]


def degree(node) -> float:
    """Polynomial degree of an expression in the variables, as the IR computed it
    when the node was built (:meth:`optlayer.ir.atoms.Atom.degree_of`, one rule per
    atom): 0, 1 or 2, ``inf`` when it is not a polynomial of degree at most 2."""
    d = node.degree
    return float("inf") if d is None else float(d)


def is_quadratic(exprs) -> bool:
    """True when every expression in ``exprs`` is a polynomial of degree at most 2 in the
    variables (sums, products with parameters, squares, quadratic forms of affine maps).

    Example:
        >>> import optlayer.ir as ir
        >>> x = ir.Variable(3, name="x")
        >>> is_quadratic([ir.apply("sum_squares", [x])]), is_quadratic([ir.apply("exp", [x])])
        (True, False)
    """
    return all(degree(e) <= 2 for e in exprs)


def bmv(Q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product ``Q z``: ``(B, N, N) x (B, N) -> (B, N)`` (``Q``
    may also broadcast, as in ``matmul``)."""
    if Q.dim() == 3 and z.dim() == 2 and Q.shape[0] == z.shape[0]:
        return torch.bmm(Q, z.unsqueeze(-1)).squeeze(-1)   # half matmul's dispatch time
    return torch.matmul(Q, z.unsqueeze(-1)).squeeze(-1)


def quadratic_data(f, P: dict, B: int, N: int, dtype, device):
    """``(Q, p)`` of a quadratic ``f(z, P)`` (``z (B, N)``, one value per item).

    Args:
        f: the lowered smooth objective ``f(z, P) -> (B,)``.
        P: parameters, each ``(B, ...)``.
        B, N: batch size and number of unknowns.
        dtype, device: of the unknowns.

    Returns:
        ``Q (B, N, N)`` (symmetrised) and ``p (B, N)``; differentiable in ``P``
        when grad mode is on and a parameter requires grad.
    """
    need = torch.is_grad_enabled() and any(t.requires_grad for t in P.values())
    pts = torch.cat([torch.zeros(1, N, dtype=dtype, device=device),
                     torch.eye(N, dtype=dtype, device=device)])
    Z = pts.unsqueeze(0).expand(B, N + 1, N).reshape(B * (N + 1), N)
    PP = {k: v.repeat_interleave(N + 1, dim=0) for k, v in P.items()}
    with torch.enable_grad():
        Zr = Z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(Zr, PP).sum(), Zr, create_graph=need)
    g = g.reshape(B, N + 1, N)
    p = g[:, 0, :]
    Q = (g[:, 1:, :] - g[:, :1, :]).transpose(1, 2)
    Q = 0.5 * (Q + Q.transpose(1, 2))
    if not need:
        Q, p = Q.detach(), p.detach()
    return Q, p


def lambda_max(Q: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each symmetric ``Q (B, N, N)`` (the Lipschitz constant of
    ``z -> Qz + p``), at least a tiny positive floor so ``1 / L`` stays finite."""
    lam = torch.linalg.eigvalsh(Q)[..., -1]
    scale = Q.abs().amax(dim=(-2, -1))
    floor = torch.finfo(Q.dtype).eps * (1 + scale)
    return torch.maximum(lam, floor)
