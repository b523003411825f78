"""QP canonicalisation: a QP-shaped problem -> batched ``(Q, p, G, h, A, b)``.

For a quadratic objective ``f(z) = 1/2 z'Qz + p'z + c`` and affine
constraint residuals ``g(z) = Gz - h <= 0``, ``a(z) = Az - b == 0`` (all as
torch functions of the parameters), the data are recovered exactly from
evaluations of the lowered IR:

* ``p = grad f(0)``, ``Q[:, j] = grad f(e_j) - grad f(0)``;
* ``h = -g(0)``, ``G[:, j] = g(e_j) - g(0)`` (same for ``A, b``).

All ``N + 1`` points are evaluated in one batched call; the result keeps the
autograd graph to the parameters, so the QP solver's differentiable backward
reaches them.
"""

from __future__ import annotations

import torch

from optlayer.compiler.program import Program

__all__ = ["canonicalize_qp"]


def _points(B, N, dtype, device):
    basis = torch.cat([torch.zeros(1, N, dtype=dtype, device=device),
                       torch.eye(N, dtype=dtype, device=device)])
    return basis.unsqueeze(0).expand(B, N + 1, N).reshape(B * (N + 1), N)


def _repeat(P, k):
    return {n: t.repeat_interleave(k, dim=0) for n, t in P.items()}


def _affine(values, B, N):
    v = values.reshape(B, N + 1, -1)
    return v[:, 1:, :].transpose(1, 2) - v[:, :1, :].transpose(1, 2), v[:, 0, :]


def canonicalize_qp(program: Program, P, B: int, dtype, device):
    """The QP data of a KKT-classified problem at parameters ``P`` (batch ``B``).

    Returns:
        ``(Q, p, G, h, A, b, ineq_sizes, eq_sizes)``; ``G, h`` / ``A, b`` are
        None when there are no such constraints; the sizes give the rows of
        each constraint in order (for the duals).
    """
    N = program.layout.size
    Z = _points(B, N, dtype, device)
    PP = _repeat(P, N + 1)
    with torch.enable_grad():
        Zr = Z.clone().requires_grad_(True)
        fz = program.f(Zr, PP)
        (g,) = torch.autograd.grad(fz.sum(), Zr,
                                   create_graph=any(t.requires_grad for t in P.values()))
    Q, p = _affine(g, B, N)
    Q = 0.5 * (Q + Q.transpose(-1, -2))
    env, cache = program.env(Z, PP), {}

    def rows(items):
        if not items:
            return None, None, []
        vals, sizes = [], []
        for _label, expr, _c in items:
            r = expr.evaluate(env, cache)
            r = r.reshape(B * (N + 1), -1) if r.numel() >= B * (N + 1) \
                else r.reshape(1, -1).expand(B * (N + 1), -1)
            vals.append(r)
            sizes.append(r.shape[-1])
        M, m0 = _affine(torch.cat(vals, dim=-1), B, N)
        return M, -m0, sizes

    G, h, isz = rows(program.plan.ineq)
    A, b, esz = rows(program.plan.eq)
    return Q, p, G, h, A, b, isz, esz
