"""torch.func.jacrev through custom_root / custom_fixed_point equals the closed form."""

import torch
from conftest import assert_trees_close


def test_jacrev_matches_closed_form(problem):
    argnums = tuple(range(len(problem.args)))
    got = torch.func.jacrev(problem.solver, argnums=argnums)(*problem.args)
    want = torch.func.jacrev(problem.closed, argnums=argnums)(*problem.args)
    assert_trees_close(got, want)


def test_jacrev_solution_value_unchanged(problem):
    assert_trees_close(problem.solver(*problem.args), problem.closed(*problem.args), tol=1e-12)
