"""torch.func.vjp through the implicit layer equals the closed form."""

import torch
from conftest import assert_trees_close

from optlayer.tree import tree_map


def test_func_vjp_matches_closed_form(problem):
    out, vjp_fn = torch.func.vjp(problem.solver, *problem.args)
    out_c, vjp_c = torch.func.vjp(problem.closed, *problem.args)
    g = torch.Generator().manual_seed(4)
    cot = tree_map(lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype), out)
    assert_trees_close(vjp_fn(cot), vjp_c(cot))


def test_vjp_with_partial_cotangent_is_zero_filled(problem):
    """A cotangent for only part of a tuple solution (the rest None) must work."""
    out, vjp_fn = torch.func.vjp(problem.solver, *problem.args)
    _, vjp_c = torch.func.vjp(problem.closed, *problem.args)
    cot = tree_map(torch.ones_like, out)
    assert_trees_close(vjp_fn(cot), vjp_c(cot))
