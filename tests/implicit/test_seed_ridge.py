"""The seed example (paper Figure 1): ridge regression solver + custom_root(grad f).

``torch.func.jacrev(ridge_solver)(θ)`` equals the closed-form Jacobian
``∂x*/∂θ = -(XᵀX + θI)⁻¹ x*`` to 1e-8 in float64, and also works in float32.
"""

import pytest
import torch

import optlayer as ol


def _ridge(dtype, m=442, n=10):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(m, generator=g, dtype=torch.float64).to(dtype)

    def f(x, theta):
        residual = X @ x - y
        return ((residual**2).sum() + theta * (x**2).sum()) / 2

    @ol.custom_root(torch.func.grad(f))
    def ridge_solver(init, theta):
        XX = X.T @ X
        Xy = X.T @ y
        eye = torch.eye(X.shape[1], dtype=dtype)
        return torch.linalg.solve(XX + theta * eye, Xy)

    def closed_jacobian(theta):
        M = X.T @ X + theta * torch.eye(n, dtype=dtype)
        return -torch.linalg.solve(M, torch.linalg.solve(M, X.T @ y))

    return ridge_solver, closed_jacobian


def test_seed_ridge_jacobian_float64():
    ridge_solver, closed_jacobian = _ridge(torch.float64)
    theta = torch.tensor(10.0, dtype=torch.float64)
    J = torch.func.jacrev(ridge_solver, argnums=1)(None, theta)
    assert J.shape == (10,)
    torch.testing.assert_close(J, closed_jacobian(theta), rtol=0, atol=1e-8)
    assert J.abs().max() > 1e-6  # a nontrivial Jacobian, not a silent zero


@pytest.mark.parametrize("transform", ["jacrev", "jacfwd"], ids=["jacrev", "jacfwd"])
def test_seed_ridge_jacobian_float32(transform):
    ridge_solver, closed_jacobian = _ridge(torch.float32)
    theta = torch.tensor(10.0, dtype=torch.float32)
    J = getattr(torch.func, transform)(ridge_solver, argnums=1)(None, theta)
    assert J.dtype == torch.float32
    torch.testing.assert_close(J, closed_jacobian(theta), rtol=1e-4, atol=1e-7)
