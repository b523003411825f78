"""Bad input to the implicit core: a clear OptTypeError / warning naming what and what to do."""

import pytest
import torch

import optlayer as ol
from optlayer.linalg import solve_cg

DT = torch.float64


def F_ok(x, theta):
    return x - theta


def test_non_callable_optimality_fun():
    with pytest.raises(ol.OptTypeError, match="optimality_fun must be callable; got int"):
        ol.custom_root(42)


def test_non_callable_fixed_point_fun():
    with pytest.raises(ol.OptTypeError, match="fixed_point_fun must be callable; got str"):
        ol.custom_fixed_point("T")


def test_non_callable_solve():
    with pytest.raises(ol.OptTypeError, match="solve must be callable"):
        ol.custom_root(F_ok, solve="cg")


def test_non_callable_solver():
    with pytest.raises(ol.OptTypeError, match="the decorated solver must be callable"):
        ol.custom_root(F_ok)(None)


def test_optimality_fun_output_shape_mismatch():
    @ol.custom_root(lambda x, theta: (x - theta)[:-1])
    def solver(init, theta):
        return theta.clone()

    with pytest.raises(ol.OptTypeError, match=r"same shapes.*\[\(3,\)\].*\[\(2,\)\]") as e:
        solver(None, torch.ones(3, dtype=DT))
    assert "residual that vanishes" in str(e.value)


def test_optimality_fun_structure_mismatch_for_tuple_solution():
    @ol.custom_root(lambda sol, theta: sol[0] - theta)  # forgot the dual residual
    def solver(init, theta):
        return theta.clone(), torch.zeros(2, dtype=DT)

    with pytest.raises(ol.OptTypeError, match="one tensor per solution tensor"):
        solver(None, torch.ones(3, dtype=DT))


def test_fixed_point_map_shape_mismatch():
    @ol.custom_fixed_point(lambda x, theta: torch.cat([x, theta]))
    def solver(init, theta):
        return theta.clone()

    with pytest.raises(ol.OptTypeError, match="fixed-point map must return the structure of x"):
        solver(None, torch.ones(2, dtype=DT))


def test_solver_returning_non_tensor():
    @ol.custom_root(F_ok)
    def solver(init, theta):
        return [1.0, 2.0]

    with pytest.raises(ol.OptTypeError, match="floating-point tensor.*type float"):
        solver(None, torch.ones(2, dtype=DT))


def test_has_aux_without_aux():
    @ol.custom_root(F_ok, has_aux=True)
    def solver(init, theta):
        return theta.clone()

    with pytest.raises(ol.OptTypeError, match=r"has_aux=True.*\(solution, aux\)"):
        solver(None, torch.ones(2, dtype=DT))


def test_has_aux_returns_aux_unchanged():
    @ol.custom_root(F_ok, has_aux=True)
    def solver(init, theta):
        return theta.clone(), {"iters": 7}

    theta = torch.ones(2, dtype=DT, requires_grad=True)
    sol, aux = solver(None, theta)
    assert aux == {"iters": 7}
    sol.sum().backward()
    torch.testing.assert_close(theta.grad, torch.ones(2, dtype=DT))


def _singular_solver(solve=None):
    # F(x, θ) = (x0 + x1 - θ, 2 (x0 + x1 - θ)): every point of a line is a root,
    # so ∂₁F = [[1, 1], [2, 2]] is singular and x* is not locally determined.
    def F(x, theta):
        s = x[0] + x[1] - theta
        return torch.stack([s, 2 * s])

    @ol.custom_root(F, solve=solve)
    def solver(init, theta):
        return torch.stack([theta, torch.zeros_like(theta)])

    return solver


@pytest.mark.parametrize(
    "solve", [None, solve_cg], ids=["default_dense", "cg"]
)
def test_singular_jacobian_warns(solve):
    solver = _singular_solver(solve)
    theta = torch.tensor(1.0, dtype=DT)
    with pytest.warns(ol.OptimizationWarning, match="singular or ill-conditioned") as rec:
        torch.func.jacrev(solver, argnums=1)(None, theta)
    text = str(rec[0].message)
    assert "residual" in text and "solve_lstsq" in text


def test_singular_jacobian_lstsq_gives_min_norm_answer():
    solver = _singular_solver(ol.linalg.solve_lstsq)
    J = torch.func.jacrev(solver, argnums=1)(None, torch.tensor(1.0, dtype=DT))
    assert torch.isfinite(J).all()


def test_root_vjp_args_must_be_a_tuple():
    with pytest.raises(ol.OptTypeError, match="args must be a tuple"):
        ol.root_vjp(F_ok, torch.ones(2), torch.ones(2), torch.ones(2))


def test_root_vjp_cotangent_shape():
    with pytest.raises(ol.OptTypeError, match="cotangent must be shaped like the solution"):
        ol.root_vjp(F_ok, torch.ones(2), (torch.ones(2),), torch.ones(3))


def test_root_jvp_tangent_shape():
    with pytest.raises(ol.OptTypeError, match="tangent must be shaped like its argument"):
        ol.root_jvp(F_ok, torch.ones(2), (torch.ones(2),), (torch.ones(3),))
