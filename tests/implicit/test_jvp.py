"""Forward mode: torch.func.jvp and torch.autograd.forward_ad through the implicit layer."""

import torch
import torch.autograd.forward_ad as fwAD
from conftest import assert_trees_close


def _tangents(args):
    g = torch.Generator().manual_seed(5)
    return tuple(torch.randn(a.shape, generator=g, dtype=a.dtype) for a in args)


def test_func_jvp_matches_closed_form(problem):
    t = _tangents(problem.args)
    out, tan = torch.func.jvp(problem.solver, problem.args, t)
    out_c, tan_c = torch.func.jvp(problem.closed, problem.args, t)
    assert_trees_close(out, out_c)
    assert_trees_close(tan, tan_c)


def test_forward_ad_dual_tensors(problem):
    t = _tangents(problem.args)
    _, tan_c = torch.func.jvp(problem.closed, problem.args, t)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a, ta) for a, ta in zip(problem.args, t, strict=True)]
        out = problem.solver(*duals)
        leaves = out if isinstance(out, tuple) else (out,)
        tan = tuple(fwAD.unpack_dual(o).tangent for o in leaves)
    assert_trees_close(tan if isinstance(out, tuple) else tan[0], tan_c)
