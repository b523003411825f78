"""Each optimality map vanishes (or is a fixed point) at a known solution, and
differentiating through custom_root / custom_fixed_point with it gives the
closed-form Jacobian."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from optlayer import projections
from optlayer.conditions import (
    batched_grad,
    batched_hessian,
    block_prox_grad_step,
    gradient_step,
    kkt,
    kl_simplex_projection,
    mirror_descent_step,
    newton_step,
    proj_grad_step,
    prox_from_projection,
    prox_grad_step,
    qp_kkt,
    stationary,
)
from optlayer.implicit import custom_fixed_point, custom_root

D = torch.float64


def soft(v, lam, s=1.0):
    return torch.sign(v) * torch.clamp(v.abs() - lam * s, min=0)


def sq(x, y):
    return 0.5 * ((x - y) ** 2).sum(-1)


@pytest.fixture
def ridge_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(7, 4, generator=g, dtype=D)
    y = torch.randn(7, generator=g, dtype=D)
    return X, y


def ridge_fun(X):
    def f(w, y, theta):
        r = (X @ w.unsqueeze(-1)).squeeze(-1) - y
        return 0.5 * (r**2).sum(-1) + 0.5 * theta * (w**2).sum(-1)

    return f


def ridge_closed(X, y, theta):
    M = X.T @ X + theta * torch.eye(X.shape[1], dtype=D)
    return torch.linalg.solve(M, X.T @ y), M


def test_batched_grad_and_hessian_match_per_item_autodiff():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, generator=g, dtype=D)

    def f(z):
        return torch.logsumexp(z, -1) + (z**4).sum(-1)

    G = batched_grad(f)(x)
    H = batched_hessian(f, x)
    for i in range(3):
        torch.testing.assert_close(G[i], torch.func.grad(f)(x[i]), rtol=0, atol=1e-12)
        torch.testing.assert_close(H[i], torch.func.hessian(f)(x[i]), rtol=0, atol=1e-12)


def test_batched_grad_on_a_graph_matches_torch_func_to_second_order():
    # with x requiring grad (an implicit backward differentiating F) batched_grad takes
    # autograd with create_graph instead of torch.func.grad: same values, same second
    # derivatives in x and in a captured parameter; a function of c only gives zeros
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g, dtype=D, requires_grad=True)
    c = torch.tensor(0.7, dtype=D, requires_grad=True)

    def f(z):
        return c * torch.logsumexp(z, -1) + (z**4).sum(-1)

    G = batched_grad(f)(x)
    R = torch.func.grad(lambda z: f(z).sum())(x)
    torch.testing.assert_close(G, R, rtol=0, atol=1e-12)
    w = torch.randn(3, 4, generator=g, dtype=D)
    got = torch.autograd.grad((G * w).sum(), (x, c))
    want = torch.autograd.grad((R * w).sum(), (x, c))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    flat = batched_grad(lambda z: c * z.new_ones(z.shape[0]))(x)
    assert flat.shape == x.shape and not flat.any()


def test_stationary_is_zero_at_ridge_solution_and_gives_closed_form_jacobian(ridge_data):
    X, y = ridge_data
    theta = torch.tensor(0.7, dtype=D)
    f = ridge_fun(X)
    w, M = ridge_closed(X, y, theta)
    F = stationary(f)
    assert F(w, y, theta).abs().max() < 1e-12

    @custom_root(F)
    def solver(init, y, theta):
        return ridge_closed(X, y, theta)[0]

    J = torch.func.jacrev(solver, argnums=1)(None, y, theta)
    torch.testing.assert_close(J, torch.linalg.solve(M, X.T), rtol=0, atol=1e-12)
    Jt = torch.func.jacrev(solver, argnums=2)(None, y, theta)
    torch.testing.assert_close(Jt, -torch.linalg.solve(M, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.05, 1.0], ids=["eta0.05", "eta1"])
def test_gradient_step_fixed_point_jacobian_independent_of_step(ridge_data, eta):
    X, y = ridge_data
    theta = torch.tensor(0.7, dtype=D)
    w, M = ridge_closed(X, y, theta)
    T = gradient_step(ridge_fun(X), eta)
    torch.testing.assert_close(T(w, y, theta), w, rtol=0, atol=1e-12)

    @custom_fixed_point(T)
    def solver(init, y, theta):
        return ridge_closed(X, y, theta)[0]

    J = torch.func.jacrev(solver, argnums=1)(None, y, theta)
    torch.testing.assert_close(J, torch.linalg.solve(M, X.T), rtol=0, atol=1e-11)


def test_newton_step_solves_quadratic_in_one_step_and_fixes_solution(ridge_data):
    X, y = ridge_data
    theta = torch.tensor(0.7, dtype=D)
    w, _ = ridge_closed(X, y, theta)
    T = newton_step(ridge_fun(X))
    torch.testing.assert_close(T(torch.zeros(4, dtype=D), y, theta), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(T(w, y, theta), w, rtol=0, atol=1e-12)


def test_newton_step_batched_nonquadratic_fixed_point():
    # f(x) = logsumexp(x) + ½‖x - y‖²: stationary iff x + softmax(x) = y.
    x = torch.tensor([[0.3, -0.2, 0.1], [1.0, 2.0, -1.0]], dtype=D)
    y = x + torch.softmax(x, -1)
    T = newton_step(lambda z, y: torch.logsumexp(z, -1) + sq(z, y))
    torch.testing.assert_close(T(x, y), x, rtol=0, atol=1e-12)


def test_kkt_equality_constrained_closed_form_and_jacobian():
    # min ½‖z - y‖² s.t. 1ᵀz = 1: z* = y - ν 1, ν = (1ᵀy - 1) / n.
    y = torch.tensor([0.5, 1.0, -0.3, 0.2], dtype=D)
    n = 4
    F = kkt(sq, eq_fun=lambda z: z.sum(-1, keepdim=True) - 1)

    def closed(y):
        nu = (y.sum() - 1) / n
        return y - nu, nu.reshape(1)

    z, nu = closed(y)
    stat, eq, comp = F((z, nu, None), y)
    assert comp is None
    assert stat.abs().max() < 1e-14 and eq.abs().max() < 1e-14

    @custom_root(lambda x, y: F((x[0], x[1], None), y)[:2])
    def solver(init, y):
        return closed(y)

    J = torch.func.jacrev(lambda y: solver(None, y)[0])(y)
    P = torch.eye(n, dtype=D) - torch.full((n, n), 1.0 / n, dtype=D)
    torch.testing.assert_close(J, P, rtol=0, atol=1e-12)


def test_kkt_inequality_nonneg_projection_jacobian():
    # min ½‖z - y‖² s.t. -z ≤ 0: z* = max(y, 0), λ* = max(-y, 0), ∂z*/∂y = diag(y > 0).
    y = torch.tensor([0.5, -1.0, 0.3, -0.2], dtype=D)
    F = kkt(sq, ineq_fun=lambda z: -z)
    z, lam = y.clamp(min=0), (-y).clamp(min=0)
    nu = torch.zeros(0, dtype=D)
    stat, eq, comp = F((z, nu, lam), y)
    assert eq.shape == (0,)
    assert stat.abs().max() == 0 and comp.abs().max() == 0

    @custom_root(lambda x, y: F(x, y))
    def solver(init, y):
        return y.clamp(min=0), torch.zeros(0, dtype=D), (-y).clamp(min=0)

    J = torch.func.jacrev(lambda y: solver(None, y)[0])(y)
    torch.testing.assert_close(J, torch.diag((y > 0).to(D)), rtol=0, atol=1e-14)


def test_kkt_rejects_a_missing_dual_block():
    F = kkt(sq, ineq_fun=lambda z: -z)
    with pytest.raises(Exception, match="dual_ineq is missing"):
        F((torch.zeros(2), None, None), torch.zeros(2))


@pytest.fixture
def qp_instance():
    rng = np.random.default_rng(3)
    n, m, q = 5, 6, 2
    L = rng.standard_normal((n, n))
    Q = L @ L.T + np.eye(n)
    p = rng.standard_normal(n)
    G = rng.standard_normal((m, n))
    h = rng.random(m)
    A = rng.standard_normal((q, n))
    b = A @ (0.1 * rng.standard_normal(n))
    z = cp.Variable(n)
    cons = [G @ z <= h, A @ z == b]
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, Q) + p @ z), cons).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    t = lambda a: torch.tensor(np.asarray(a), dtype=D)  # noqa: E731
    data = tuple(map(t, (Q, p, G, h, A, b)))
    sol = (t(z.value), t(cons[1].dual_value), t(cons[0].dual_value))
    return data, sol


def test_qp_kkt_vanishes_at_cvxpy_solution(qp_instance):
    (Q, p, G, h, A, b), sol = qp_instance
    stat, eq, comp = qp_kkt(sol, Q, p, G, h, A, b)
    assert stat.abs().max() < 1e-8
    assert eq.abs().max() < 1e-8
    assert comp.abs().max() < 1e-8


def test_qp_kkt_equals_general_kkt_map(qp_instance):
    (Q, p, G, h, A, b), sol = qp_instance
    x = (sol[0] + 0.1, sol[1] - 0.2, sol[2] + 0.3)  # any point, not only the solution
    F = kkt(
        lambda z, P: 0.5 * z @ P[0] @ z + P[1] @ z,
        eq_fun=lambda z, P: P[0] @ z - P[1],
        ineq_fun=lambda z, P: P[0] @ z - P[1],
    )
    for a, c in zip(F(x, (Q, p), (A, b), (G, h)), qp_kkt(x, Q, p, G, h, A, b), strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def test_prox_grad_fixed_point_lasso_closed_form_jacobian():
    # min ½‖x - y‖² + lam‖x‖₁: x* = soft(y, lam); ∂x*/∂y = diag(|y| > lam).
    y = torch.tensor([2.0, 0.3, -1.0, -0.1], dtype=D)
    lam = torch.tensor(0.5, dtype=D)
    T = prox_grad_step(sq, soft, stepsize=0.7)
    x = soft(y, lam)
    torch.testing.assert_close(T(x, lam, y), x, rtol=0, atol=1e-15)

    @custom_fixed_point(T)
    def solver(init, lam, y):
        return soft(y, lam)

    J = torch.func.jacrev(solver, argnums=2)(None, lam, y)
    torch.testing.assert_close(J, torch.diag((y.abs() > lam).to(D)), rtol=0, atol=1e-12)
    Jl = torch.func.jacrev(solver, argnums=1)(None, lam, y)
    torch.testing.assert_close(Jl, -torch.sign(y) * (y.abs() > lam), rtol=0, atol=1e-12)


def test_proj_grad_fixed_point_box_closed_form_jacobian():
    y = torch.tensor([2.0, 0.3, -1.0, 0.9], dtype=D)
    box = (torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    T = proj_grad_step(sq, projections.box, stepsize=0.3)
    x = projections.box(y, *box)
    torch.testing.assert_close(T(x, box, y), x, rtol=0, atol=1e-15)

    @custom_fixed_point(T)
    def solver(init, hyper, y):
        return projections.box(y, *hyper)

    J = torch.func.jacrev(lambda y: solver(None, box, y))(y)
    inside = ((y > 0) & (y < 1)).to(D)
    torch.testing.assert_close(J, torch.diag(inside), rtol=0, atol=1e-12)


def test_prox_from_projection_ignores_scaling():
    v = torch.tensor([-1.0, 2.0, 0.5])
    prox = prox_from_projection(projections.nonneg)
    torch.testing.assert_close(prox(v, None, 5.0), torch.tensor([0.0, 2.0, 0.5]))
    prox = prox_from_projection(projections.box)
    torch.testing.assert_close(prox(v, (0.0, 1.0), 5.0), torch.tensor([0.0, 1.0, 0.5]))
    prox = prox_from_projection(projections.simplex)
    torch.testing.assert_close(prox(v, 2.0, 5.0), projections.simplex(v, 2.0))


def test_mirror_descent_fixed_point_softmax_jacobian():
    # min ⟨c, x⟩ + Σ x log x over the simplex: x* = softmax(-c); ∂x*/∂c = -(diag x - x xᵀ).
    c = torch.tensor([0.2, -1.0, 0.5, 1.5], dtype=D)
    f = lambda x, c: (c * x).sum(-1) + (x * torch.log(x)).sum(-1)  # noqa: E731
    T = mirror_descent_step(f, kl_simplex_projection, torch.log, stepsize=0.5)
    x = torch.softmax(-c, -1)
    torch.testing.assert_close(T(x, None, c), x, rtol=0, atol=1e-15)

    @custom_fixed_point(T)
    def solver(init, hyper, c):
        return torch.softmax(-c, -1)

    J = torch.func.jacrev(lambda c: solver(None, None, c))(c)
    torch.testing.assert_close(J, -(torch.diag(x) - torch.outer(x, x)), rtol=0, atol=1e-12)


def test_kl_simplex_projection_scales_to_value():
    y = torch.tensor([0.1, 0.4, -0.3], dtype=D)
    assert abs(float(kl_simplex_projection(y, 3.0).sum()) - 3.0) < 1e-14


def test_block_prox_grad_fixed_point_two_block_lasso():
    # f couples nothing: each block is its own lasso; block map equals the one-block map.
    y1 = torch.tensor([2.0, -0.2], dtype=D)
    y2 = torch.tensor([0.4, -3.0, 1.0], dtype=D)

    def f(xs, y1, y2):
        return sq(xs[0], y1) + sq(xs[1], y2)

    T = block_prox_grad_step(f, soft, stepsize=(0.5, 0.25))
    lam = (torch.tensor(0.3, dtype=D), torch.tensor(1.5, dtype=D))
    x = (soft(y1, lam[0]), soft(y2, lam[1]))
    out = T(x, lam, y1, y2)
    for a, c in zip(out, x, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-15)
    # Away from the solution, block j is prox_j(x_j - η_j ∇_j f).
    z = (torch.zeros(2, dtype=D), torch.ones(3, dtype=D))
    out = T(z, lam, y1, y2)
    torch.testing.assert_close(out[1], soft(z[1] - 0.25 * (z[1] - y2), lam[1], 0.25))

    @custom_fixed_point(T)
    def solver(init, lam, y1, y2):
        return soft(y1, lam[0]), soft(y2, lam[1])

    J = torch.func.jacrev(lambda y2: solver(None, lam, y1, y2)[1])(y2)
    torch.testing.assert_close(J, torch.diag((y2.abs() > lam[1]).to(D)), rtol=0, atol=1e-12)
