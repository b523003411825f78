"""torch.func.jacfwd (vmap over the custom jvp rule) equals the closed form."""

import pytest
import torch
from conftest import CATALOG, assert_trees_close


def test_jacfwd_matches_closed_form(problem):
    argnums = tuple(range(len(problem.args)))
    got = torch.func.jacfwd(problem.solver, argnums=argnums)(*problem.args)
    want = torch.func.jacfwd(problem.closed, argnums=argnums)(*problem.args)
    assert_trees_close(got, want)


def test_forward_over_forward_is_refused_not_wrong():
    ridge = CATALOG[0]
    with pytest.raises(NotImplementedError, match="forward-over-forward"):
        torch.func.jacfwd(torch.func.jacfwd(ridge.solver))(*ridge.args)
