"""Catalog of implicit problems with closed-form solutions, shared by the transform tests.

Each entry gives ``solver(*args)`` -- a solver decorated with ``custom_root`` or
``custom_fixed_point`` whose derivatives come from implicit differentiation --
and ``closed(*args)``, the same solution written in closed form with plain
differentiable torch ops. Every transform test compares the two: the implicit
derivatives must equal autograd through the closed form to 1e-8 (float64).
The solvers themselves are written so that the solution is exact (direct
solves) or converged to ~1e-14 (fixed-point iterations), so the comparison
tests the implicit machinery, not the solver's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import optlayer as ol
from optlayer.tree import leaves as _leaves

DT = torch.float64


@dataclass
class Problem:
    name: str
    solver: Callable  # solver(*args) -> solution (tensor or tuple of tensors)
    closed: Callable  # closed(*args) -> the same solution, by autograd-able torch ops
    args: tuple  # float64 tensors, the differentiable arguments
    batched_arg: Callable  # (k) -> a batch of k values for args[0] (for vmap tests)


def _gen(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=DT)


def ridge_problem() -> Problem:
    """The seed example: stationarity F = grad_x f of the ridge objective, θ = l2reg."""
    r = _gen(0)
    m, n = 12, 5
    X, y = r(m, n), r(m)

    def f(x, theta):
        return 0.5 * ((X @ x - y) ** 2).sum() + 0.5 * theta * (x**2).sum()

    def closed(theta):
        return torch.linalg.solve(X.T @ X + theta * torch.eye(n, dtype=DT), X.T @ y)

    @ol.custom_root(torch.func.grad(f))
    def ridge_solver(init, theta):
        return closed(theta)

    return Problem(
        "ridge",
        lambda theta: ridge_solver(None, theta),
        closed,
        (torch.tensor(2.0, dtype=DT),),
        lambda k: torch.linspace(0.5, 3.0, k, dtype=DT),
    )


def ridge_data_problem() -> Problem:
    """Ridge with the data as arguments: (X, y) a tuple, l2reg a keyword tensor,
    plus non-tensor arguments (a float scale and a callable) passed through."""
    r = _gen(1)
    m, n = 10, 4
    X0, y0 = r(m, n), r(m)

    def f(x, data, scale, link, *, l2reg):
        X, y = data
        return 0.5 * scale * ((link(X @ x) - y) ** 2).sum() + 0.5 * l2reg * (x**2).sum()

    def closed(X, y, l2reg):
        return torch.linalg.solve(X.T @ X + l2reg * torch.eye(n, dtype=DT), X.T @ y)

    @ol.custom_root(torch.func.grad(f))
    def solver(init, data, scale, link, *, l2reg):
        assert scale == 1.0 and callable(link)  # non-tensor args arrive unchanged
        return closed(data[0], data[1], l2reg)

    return Problem(
        "ridge_pytree_args",
        lambda X, y, l2reg: solver(None, (X, y), 1.0, lambda z: z, l2reg=l2reg),
        closed,
        (X0, y0, torch.tensor(0.7, dtype=DT)),
        lambda k: X0 + 0.1 * torch.randn(k, m, n, generator=torch.Generator().manual_seed(9),
                                         dtype=DT),
    )


def kkt_problem() -> Problem:
    """The paper's KKT example (eq. 6) for an equality-constrained QP
    min ½ zᵀQz + cᵀz s.t. Ez = d; the solution is (primal z, dual ν)."""
    r = _gen(2)
    p, q = 5, 2
    M = r(p, p)
    Q = M @ M.T + p * torch.eye(p, dtype=DT)
    E0, c0, d0 = r(q, p), r(p), r(q)

    def kkt_matrix(E):
        top = torch.cat([Q, E.T], dim=1)
        bottom = torch.cat([E, torch.zeros(q, q, dtype=DT)], dim=1)
        return torch.cat([top, bottom], dim=0)

    def closed(c, E, d):
        sol = torch.linalg.solve(kkt_matrix(E), torch.cat([-c, d]))
        return sol[:p], sol[p:]

    def F(sol, c, E, d):
        z, nu = sol
        return (Q @ z + c + E.T @ nu, E @ z - d)

    @ol.custom_root(F)
    def qp_solver(init, c, E, d):
        return closed(c, E, d)

    return Problem(
        "kkt_eq_qp",
        lambda c, E, d: qp_solver(None, c, E, d),
        closed,
        (c0, E0, d0),
        lambda k: torch.randn(k, p, generator=torch.Generator().manual_seed(8), dtype=DT),
    )


def fixed_point_problem() -> Problem:
    """Gradient-descent fixed point T(x) = x - η ∇f(x, θ) (paper eq. 5) for ridge
    with θ = (l2reg, y); the solver runs the iteration to convergence."""
    r = _gen(3)
    m, n = 8, 4
    X, y0 = r(m, n), r(m)
    L = float(torch.linalg.matrix_norm(X, ord=2) ** 2)

    def grad_f(x, l2reg, y):
        return X.T @ (X @ x - y) + l2reg * x

    def T(x, l2reg, y, eta):
        return x - eta * grad_f(x, l2reg, y)

    def closed(l2reg, y):
        return torch.linalg.solve(X.T @ X + l2reg * torch.eye(n, dtype=DT), X.T @ y)

    @ol.custom_fixed_point(T)
    def gd_solver(init, l2reg, y, eta):
        x = init
        for _ in range(400):
            x = T(x, l2reg, y, eta)
        return x

    return Problem(
        "fixed_point_gd",
        lambda l2reg, y: gd_solver(torch.zeros(n, dtype=DT), l2reg, y, 1.0 / (L + 3.0)),
        closed,
        (torch.tensor(1.5, dtype=DT), y0),
        lambda k: torch.linspace(1.0, 2.0, k, dtype=DT),
    )


CATALOG = [ridge_problem(), ridge_data_problem(), kkt_problem(), fixed_point_problem()]


@pytest.fixture(params=CATALOG, ids=[p.name for p in CATALOG])
def problem(request) -> Problem:
    return request.param


def leaves(tree) -> list:
    return _leaves(tree)


def assert_trees_close(a, b, tol=1e-8):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=0, atol=tol)


def scalar_loss(sol) -> torch.Tensor:
    """A nonlinear scalar of the solution, for grad / backward tests."""
    return sum((torch.sin(t) * torch.arange(1, t.numel() + 1, dtype=t.dtype).reshape(t.shape))
               .sum() for t in leaves(sol))
