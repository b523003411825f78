"""The convex path's own read-offs in chunks: ``compiler.smooth.taylor`` (values,
Jacobians and Hessians at ``z = 0`` on one copy of the parameters per row and unknown)
and ``compiler.canon._FunctionRows`` (autograd rows on ``N + r`` copies per evaluation)
keep at most ``defaults.READOFF_MAX_ELEMENTS`` parameter elements in their copies; the
data equal torch.func's derivatives, chunked or not, and the layers' solutions and
gradients do not change."""

from __future__ import annotations

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.compiler import expand_params
from optlayer.compiler.canon import _FunctionRows, _structure
from optlayer.compiler.smooth import Rows, taylor
from optlayer.layer import random_params

from .chunks import assert_same_in_chunks

D = torch.float64

# a row with two smooth atoms: no closed-form row model, autograd rows (_FunctionRows)
TWO_ATOMS = """dim n = 4
dim m = 6
param A[m, n]
param c[n]
var x[n]
minimize sum_squares(x - c)
subject to
    logsumexp(A @ x) + sum(exp(0.1 * x)) <= 8
"""


def _counting(fn, calls):
    def counted(z, P):
        calls.append(z.shape[0])
        return fn(z, P)
    return counted


def _robust_ls(batch, seed):
    layer = ol.load("examples/problems/robust_ls.opt")
    P, B, _ = expand_params(layer.problem, random_params(layer.problem, batch=batch, seed=seed))
    prog = layer.program
    st = _structure(prog, P, prog.layout.size, False)
    rows = next(fn for kind, fn, _, _ in st["blocks"] if kind == 2)   # the quadratic row

    def f(z, PP):   # the objective and the row, as the convex path reads them off
        return torch.cat([prog.f(z, PP).unsqueeze(-1), rows(z, PP)], -1)

    return f, P, B, prog.layout.size


def _reference(f, P, B, N):
    """Values, Jacobians and Hessians at 0 by torch.func, item by item (no copies)."""
    def one(z, p):
        return f(z[None], {k: v[None] for k, v in p.items()})[0]

    Z = torch.zeros(B, N, dtype=D)
    J = torch.func.vmap(torch.func.jacrev(one))(Z, P)
    H = torch.func.vmap(torch.func.jacfwd(torch.func.jacrev(one)))(Z, P)
    return f(Z, P), J, H


@pytest.mark.parametrize("budget", [None, 1, 300])   # one evaluation; points one by one; 2-5
def test_taylor_chunks_equal_torch_func(budget, monkeypatch):
    f, P, B, N = _robust_ls(batch=3, seed=1)
    c0, J0, H0 = _reference(f, P, B, N)
    if budget is not None:
        monkeypatch.setattr(defaults, "READOFF_MAX_ELEMENTS", budget)
    calls = []
    c, J, Q = taylor(_counting(f, calls), P, B, N, 2, D, "cpu", second=True)
    # one copy per item, row and unknown: 2 N points per item in all, in chunks
    assert sum(calls) == B * 2 * N
    assert (len(calls) == 1) == (budget is None)
    torch.testing.assert_close(c, c0, rtol=0, atol=1e-13)
    torch.testing.assert_close(J, J0, rtol=0, atol=1e-12)
    torch.testing.assert_close(Q, H0, rtol=0, atol=1e-12)
    # first order only: one point per row
    calls.clear()
    c1, J1, Q1 = taylor(_counting(f, calls), P, B, N, 2, D, "cpu", second=False)
    assert Q1 is None and sum(calls) == B * 2
    torch.testing.assert_close(c1, c0, rtol=0, atol=1e-13)
    torch.testing.assert_close(J1, J0, rtol=0, atol=1e-12)


def test_function_rows_chunks_equal_torch_func(monkeypatch):
    layer = ol.compile(TWO_ATOMS)
    P, B, _ = expand_params(layer.problem, random_params(layer.problem, batch=3, seed=2))
    prog = layer.program
    N = prog.layout.size
    rows = Rows(prog, prog.plan.ineq)
    assert [kind for kind, *_ in _structure(prog, P, N, False)["blocks"]] == [4]
    x = 0.3 * torch.randn(B, N, dtype=D, generator=torch.Generator().manual_seed(0))
    lam = torch.rand(B, 1, dtype=D, generator=torch.Generator().manual_seed(1)) + 0.5

    def one(z, p):
        return rows(z[None], {k: v[None] for k, v in p.items()})[0]

    J0 = torch.func.vmap(torch.func.jacrev(one))(x, P)
    H0 = lam[:, 0, None, None] * torch.func.vmap(torch.func.hessian(one))(x, P)[:, 0]
    whole = _FunctionRows(rows, P, B, N, 1)
    assert whole.PP is not None   # small: the copies are made once
    for budget in (1, 40):        # a point per chunk; a few
        monkeypatch.setattr(defaults, "READOFF_MAX_ELEMENTS", budget)
        model = _FunctionRows(rows, P, B, N, 1)
        assert model.PP is None and model.size < N + 1
        for m in (whole, model):
            g, J, H = m.second(x, lam)
            torch.testing.assert_close(g, rows(x, P), rtol=0, atol=1e-13)
            torch.testing.assert_close(J, J0, rtol=0, atol=1e-12)
            torch.testing.assert_close(H, H0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("source", ["robust_ls", "two_atoms"])
def test_chunked_convex_layer_same_solution_and_gradients(source, monkeypatch):
    def make():
        if source == "two_atoms":
            return ol.compile(TWO_ATOMS, tol=1e-12)
        return ol.load("examples/problems/robust_ls.opt", tol=1e-12)

    vals = random_params(make().problem, batch=4, seed=3)
    assert_same_in_chunks(make, vals, monkeypatch)
