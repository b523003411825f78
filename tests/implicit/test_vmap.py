"""torch.func.vmap over the implicit layer, and vmap of jacrev (per-example Jacobians)."""

import torch
from conftest import assert_trees_close


def test_vmap_solutions(problem):
    batch = problem.batched_arg(3)
    rest = problem.args[1:]
    got = torch.func.vmap(lambda a: problem.solver(a, *rest))(batch)
    want = torch.func.vmap(lambda a: problem.closed(a, *rest))(batch)
    assert_trees_close(got, want)


def test_vmap_of_jacrev(problem):
    batch = problem.batched_arg(3)
    rest = problem.args[1:]
    got = torch.func.vmap(torch.func.jacrev(lambda a: problem.solver(a, *rest)))(batch)
    want = torch.func.vmap(torch.func.jacrev(lambda a: problem.closed(a, *rest)))(batch)
    assert_trees_close(got, want)
