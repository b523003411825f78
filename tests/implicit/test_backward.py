"""Plain autograd: loss.backward() and torch.autograd.grad through the implicit layer."""

import torch
from conftest import assert_trees_close, scalar_loss


def _leafs(args):
    return [a.detach().clone().requires_grad_() for a in args]


def test_loss_backward_matches_closed_form(problem):
    a1, a2 = _leafs(problem.args), _leafs(problem.args)
    scalar_loss(problem.solver(*a1)).backward()
    scalar_loss(problem.closed(*a2)).backward()
    assert_trees_close([a.grad for a in a1], [a.grad for a in a2])


def test_gradcheck_float64(problem):
    assert torch.autograd.gradcheck(problem.solver, tuple(_leafs(problem.args)))


def test_solution_does_not_require_grad_without_inputs_that_do(problem):
    out = problem.solver(*problem.args)
    assert not any(t.requires_grad for t in (out if isinstance(out, tuple) else (out,)))


def test_integer_and_constant_tensor_arguments_pass_through():
    """An integer index tensor and a tensor not requiring grad are arguments too:
    they reach F and the solver unchanged and get no gradient."""
    import optlayer as ol

    idx = torch.tensor([2, 0, 1])

    def F(x, theta, perm, scale):
        return scale * x - theta[perm]

    @ol.custom_root(F)
    def solver(init, theta, perm, scale):
        return theta[perm] / scale

    theta = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(2.0, dtype=torch.float64)
    out = solver(None, theta, idx, scale)
    torch.testing.assert_close(out, theta.detach()[idx] / 2)
    out.sum().backward()
    torch.testing.assert_close(theta.grad, torch.full((3,), 0.5, dtype=torch.float64))
    J = torch.func.jacrev(solver, argnums=1)(None, theta.detach(), idx, scale)
    torch.testing.assert_close(J, torch.eye(3, dtype=torch.float64)[idx] / 2)


def test_inference_mode_returns_the_solution():
    import optlayer as ol

    @ol.custom_root(lambda x, t: x - t)
    def solver(init, t):
        return t.clone()

    with torch.inference_mode():
        out = solver(None, torch.ones(2))
    assert torch.equal(out, torch.ones(2))


def test_solve_point_is_the_calls_own_saved_values():
    """A linear solver sees, through solve_point(), the solution and arguments saved for
    the call being differentiated (not those of a later call), and only during a plain
    backward."""
    import optlayer as ol
    from optlayer.linalg import solve_lu

    seen = []

    def solve(matvec, b):
        seen.append(ol.implicit.solve_point())
        return solve_lu(matvec, b)

    @ol.custom_root(lambda x, t, extra: 2 * x - t, solve=solve)
    def solver(init, t, extra):
        return t / 2

    t1 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t2 = torch.tensor([5.0, 7.0], dtype=torch.float64, requires_grad=True)
    out1 = solver(None, t1, {"tag": torch.tensor(1.0)})
    solver(None, t2, {"tag": torch.tensor(2.0)})  # a later call before out1's backward
    assert ol.implicit.solve_point() is None
    out1.sum().backward()
    assert ol.implicit.solve_point() is None
    (x, args, kwargs), = seen
    torch.testing.assert_close(x, torch.tensor([0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(args[0], t1.detach())
    assert float(args[1]["tag"]) == 1.0 and kwargs == {}
    assert not x.requires_grad and not args[0].requires_grad
    torch.testing.assert_close(t1.grad, torch.full((2,), 0.5, dtype=torch.float64))
    seen.clear()
    torch.func.grad(lambda t: solver(None, t, {"tag": torch.tensor(3.0)}).sum())(t1.detach())
    assert seen == [None]  # under torch.func the matrix must come from matvec products
