"""Second order: gradgradcheck, grad of grad, hessian, reverse-over-forward."""

import torch
from conftest import CATALOG, assert_trees_close, scalar_loss


def test_gradgradcheck_float64(problem):
    args = tuple(a.detach().clone().requires_grad_() for a in problem.args)
    assert torch.autograd.gradgradcheck(problem.solver, args)


def test_hessian_of_scalar_loss(problem):
    def loss(fn):
        return lambda a0: scalar_loss(fn(a0, *problem.args[1:]))

    got = torch.func.hessian(loss(problem.solver))(problem.args[0])
    want = torch.func.hessian(loss(problem.closed))(problem.args[0])
    assert_trees_close(got, want)


def test_grad_of_grad_and_reverse_over_forward():
    ridge = CATALOG[0]
    (theta,) = ridge.args
    gg = torch.func.grad(torch.func.grad(lambda t: scalar_loss(ridge.solver(t))))(theta)
    gg_c = torch.func.grad(torch.func.grad(lambda t: scalar_loss(ridge.closed(t))))(theta)
    assert_trees_close(gg, gg_c)
    # Reference: reverse-over-reverse of the closed form, confirmed by central finite
    # differences of its Jacobian. (In torch 2.13, jacrev(jacfwd(.)) of the closed form
    # itself, i.e. forward mode through torch.linalg.solve, is off by a factor 2.)
    rr_c = torch.func.jacrev(torch.func.jacrev(ridge.closed))(theta)
    h = 1e-5
    jac = torch.func.jacrev(ridge.closed)
    fd = (jac(theta + h) - jac(theta - h)) / (2 * h)
    torch.testing.assert_close(rr_c, fd, rtol=1e-6, atol=1e-9)
    rf = torch.func.jacrev(torch.func.jacfwd(ridge.solver))(theta)
    fr = torch.func.jacfwd(torch.func.jacrev(ridge.solver))(theta)
    rr = torch.func.jacrev(torch.func.jacrev(ridge.solver))(theta)
    for got in (rf, fr, rr):
        assert_trees_close(got, rr_c)
