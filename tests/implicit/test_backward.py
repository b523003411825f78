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
