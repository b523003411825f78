"""vmap of second derivatives through custom_root, for the default solve and every linear solver.

``vmap(hessian(loss ∘ solver))`` must equal the per-item Hessians, which must
equal the closed form. In torch 2.13 forward-mode AD *through*
``torch.linalg.solve`` / ``lu_solve`` under an outer ``vmap`` silently returns
wrong numbers, so this grid guards every dense and Krylov path of the backward
against that class of batching bug.

Problem: ``F(x, θ) = H x + a sinh(x) - b`` with ``θ = (a, b)``; ``∂₁F = H + a
diag(cosh x)`` is symmetric positive definite, so every solver applies.
With ``L(θ) = ½‖x*(θ)‖²``, the closed forms are ``x' = -∂₁F⁻¹ ∂₂F`` and
``∇²L = x'ᵀx' + Σᵢ xᵢ ∇²xᵢ``, which we compare against through
``jacrev(jacrev)`` of an independent differentiable Newton solve.
"""

import functools

import pytest
import torch

import optlayer as ol
from optlayer import linalg

DT = torch.float64
N = 5
_G = torch.Generator().manual_seed(21)
_M = torch.randn(N, N, generator=_G, dtype=DT)
H = _M @ _M.T / N + torch.eye(N, dtype=DT)
THETAS = torch.stack([
    torch.cat([torch.tensor([s], dtype=DT), s * torch.randn(N, generator=_G, dtype=DT)])
    for s in (0.3, 1.5)
])


def F(x, theta):
    return H @ x + theta[0] * torch.sinh(x) - theta[1:]


def newton(theta, iters=30):
    """A differentiable Newton solve of F = 0 (autograd through it is the reference)."""
    x = torch.zeros(N, dtype=DT)
    for _ in range(iters):
        J = H + theta[0] * torch.diag(torch.cosh(x))
        x = x - torch.linalg.inv(J) @ F(x, theta)
    return x


def _solver(solve):
    @ol.custom_root(F, solve=solve)
    def solver(init, theta):
        return newton(theta)

    return solver


SOLVES = {
    "default": None,
    "lu": linalg.solve_lu,
    "cholesky": linalg.solve_cholesky,
    "lstsq": linalg.solve_lstsq,
    "cg": functools.partial(linalg.solve_cg, tol=1e-13),
    "gmres": functools.partial(linalg.solve_gmres, tol=1e-13),
    "bicgstab": functools.partial(linalg.solve_bicgstab, tol=1e-13),
    "normal_cg": functools.partial(linalg.solve_normal_cg, tol=1e-13),
}


def _loss(solver):
    return lambda theta: 0.5 * (solver(None, theta) ** 2).sum()


@functools.cache
def _reference():
    loss = lambda theta: 0.5 * (newton(theta) ** 2).sum()  # noqa: E731
    return torch.stack([torch.func.jacrev(torch.func.jacrev(loss))(t) for t in THETAS])


@pytest.mark.parametrize("name", list(SOLVES), ids=list(SOLVES))
def test_vmap_hessian_matches_per_item_closed_form(name):
    loss = _loss(_solver(SOLVES[name]))
    got = torch.func.vmap(torch.func.hessian(loss))(THETAS)
    ref = _reference()
    assert ref.abs().max() > 1e-3  # a nontrivial Hessian
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["default", "cg"], ids=["default", "cg"])
def test_vmap_jacrev_of_grad_matches(name):
    loss = _loss(_solver(SOLVES[name]))
    got = torch.func.vmap(torch.func.jacrev(torch.func.grad(loss)))(THETAS)
    torch.testing.assert_close(got, _reference(), rtol=0, atol=1e-8)
