"""torch.func.grad of a scalar loss of the implicit solution equals the closed form."""

import torch
from conftest import assert_trees_close, scalar_loss


def test_func_grad_matches_closed_form(problem):
    argnums = tuple(range(len(problem.args)))
    got = torch.func.grad(lambda *a: scalar_loss(problem.solver(*a)), argnums=argnums)(
        *problem.args
    )
    want = torch.func.grad(lambda *a: scalar_loss(problem.closed(*a)), argnums=argnums)(
        *problem.args
    )
    assert_trees_close(got, want)
