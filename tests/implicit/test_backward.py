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
