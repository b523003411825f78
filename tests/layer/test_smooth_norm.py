"""``norm2`` of an affine argument in the objective, counted as smooth where the argument is
not 0 (``compiler.classify``): the first-order methods apply, each call checks that the
argument cannot vanish (``Program.guards_hold``) and a call where it can is solved by
``kkt``; the forward is Newton on the normal map (``iterate.normal_newton_solve``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.layer import random_params
from optlayer.solvers.convex_models import SmoothAtomRows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "problems"
D = torch.float64

SOURCES = {
    "stationary": "dim m = 6\ndim n = 3\nparam A[m, n]\nparam b[m]\nvar x[n]\n"
                  "minimize norm2(A @ x - b) + 0.5 * sum_squares(x)",
    "proj_grad": "dim m = 6\ndim n = 3\nparam A[m, n]\nparam b[m]\nvar x[n]\n"
                 "minimize norm2(A @ x - b)\nsubject to\n  x >= 0.1\n  x <= 0.5",
    # the argument leaves y out: a rank-deficient map of the unknowns (x, y)
    "prox_grad": "dim m = 6\ndim n = 3\nparam A[m, n]\nparam b[m]\nparam c pos\nvar x[n]\n"
                 "var y[n]\nminimize c * norm2(A @ x - b) + sum_squares(y - x) + norm1(y)",
}


def _flat(out):
    parts = out if isinstance(out, tuple) else (out,)
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)


def _solve_with_grads(layer, vals, w):
    ins = {k: v.clone().requires_grad_(True) for k, v in vals.items()}
    out = _flat(layer(**ins))
    (out * w).sum().backward()
    return out.detach(), {k: v.grad for k, v in ins.items()}


def _sqrt_lasso(**kw):
    return ol.load(EXAMPLES / "sqrt_lasso.opt", **kw)


def test_a_norm_of_an_affine_argument_counts_as_smooth():
    layer = _sqrt_lasso()
    assert layer.method == "prox_grad"
    assert layer.plan.applicable == ["prox_grad", "kkt"]
    assert [str(u) for u in layer.plan.guards] == ["X @ w - t"]
    assert layer.program.forward_solver() == "normal_newton"
    assert "solves a call where some item fails by kkt" in layer.explain()
    # forced kkt has no guards; a norm2 of a variable stays a prox term, one in a
    # constraint a cone row
    assert _sqrt_lasso(method="kkt").plan.guards == []
    group = ol.load(EXAMPLES / "group_lasso.opt")
    assert group.plan.guards == [] and set(group.plan.prox) == {"a", "b"}
    robust = ol.load(EXAMPLES / "robust_ls.opt")
    assert robust.plan.guards == [] and robust.plan.applicable == ["kkt"]


@pytest.mark.parametrize("kind", list(SOURCES))
def test_each_first_order_method_takes_the_term(kind):
    assert ol.compile(SOURCES[kind]).method == kind


def test_the_check_fails_where_the_argument_can_vanish():
    layer = _sqrt_lasso()
    vals = random_params(layer.problem, batch=4, seed=0)
    assert layer.program.guards_hold(vals).tolist() == [True] * 4
    vals["t"][1] = vals["X"][1] @ torch.tensor([1.0, -2.0, 3.0], dtype=D)   # t in range(X)
    vals["t"][3] = 0.0
    assert layer.program.guards_hold(vals).tolist() == [True, False, True, False]
    # a map that leaves some unknowns out: its range, not the whole space
    two = ol.compile(SOURCES["prox_grad"])
    v2 = random_params(two.problem, batch=3, seed=1)
    v2["b"][2] = v2["A"][2] @ torch.tensor([0.5, 0.5, -1.0], dtype=D)
    assert two.program.guards_hold(v2).tolist() == [True, True, False]
    # as many rows as unknowns: u = 0 is reachable, every call goes to kkt
    square = ol.compile("dim n = 3\nparam A[n, n]\nparam b[n]\nvar x[n]\n"
                        "minimize norm2(A @ x - b) + norm1(x)")
    v3 = random_params(square.problem, batch=2, seed=0)
    assert square.program.guards_hold(v3).tolist() == [False, False]
    square(**v3)
    assert square.info.method == "kkt"


def test_a_call_where_the_argument_can_vanish_is_solved_by_kkt():
    layer, ref = _sqrt_lasso(), _sqrt_lasso(method="kkt")
    vals = random_params(layer.problem, batch=4, seed=0)
    vals["t"][1] = vals["X"][1] @ torch.tensor([1.0, 2.0, 3.0], dtype=D)
    vals["lam"][1] = 20.0      # a solution off the apex, where kkt's map is regular
    w = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    got, gg = _solve_with_grads(layer, vals, w)
    assert layer.info.method == "kkt" and layer.info.status.tolist() == [0] * 4
    want, gw = _solve_with_grads(ref, vals, w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for k in vals:
        torch.testing.assert_close(gg[k], gw[k], rtol=0, atol=1e-12)
    # the next call, on data where the norm cannot vanish, is the layer's own method again
    layer(**random_params(layer.problem, batch=4, seed=1))
    assert layer.info.method == "prox_grad"


@pytest.mark.parametrize("kind", list(SOURCES))
def test_solutions_and_gradients_agree_with_kkt(kind):
    layer, ref = ol.compile(SOURCES[kind], tol=1e-12), ol.compile(SOURCES[kind], method="kkt")
    vals = random_params(layer.problem, batch=8, seed=3)
    w = torch.randn(8, layer.program.layout.size, dtype=D,
                    generator=torch.Generator().manual_seed(4))
    got, gg = _solve_with_grads(layer, vals, w)
    assert layer.info.method == kind and layer.info.status.tolist() == [0] * 8
    want, gw = _solve_with_grads(ref, vals, w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-8)
    for k in vals:
        torch.testing.assert_close(gg[k], gw[k], rtol=1e-6, atol=1e-7)


def test_the_norm_model_matches_autograd():
    g = torch.Generator().manual_seed(5)
    B, k, n = 4, 6, 3
    U, u0 = torch.randn(B, k, n, dtype=D, generator=g), torch.randn(B, k, dtype=D, generator=g)
    c, lam = torch.rand(B, 1, dtype=D, generator=g) + 0.5, torch.rand(B, 1, dtype=D,
                                                                       generator=g) + 0.5
    x = torch.randn(B, n, dtype=D, generator=g, requires_grad=True)
    model = SmoothAtomRows(None, "norm2", U, u0, c)
    val = c * torch.linalg.vector_norm((U @ x.unsqueeze(-1)).squeeze(-1) + u0, dim=-1,
                                       keepdim=True)
    (grad,) = torch.autograd.grad((lam * val).sum(), x, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[:, i].sum(), x, retain_graph=True)[0]
                        for i in range(n)], 1)
    v, J, H = model.second(x.detach(), lam)
    torch.testing.assert_close(v, val.detach())
    torch.testing.assert_close((lam.unsqueeze(-1) * J).squeeze(1), grad.detach())
    torch.testing.assert_close(H, hess)
    torch.testing.assert_close(model.first(x.detach(), lam)[1], grad.detach())


def test_newton_on_the_normal_map_takes_few_iterations():
    layer, ref = _sqrt_lasso(), _sqrt_lasso(method="kkt")
    for seed in range(4):
        vals = random_params(layer.problem, batch=32, seed=seed)
        out = layer(**vals)
        # 5-7 at seeds 0-19 (FISTA with Newton steps: 11 at seed 0)
        assert layer.info.iterations <= 8
        assert layer.info.status.tolist() == [0] * 32
        torch.testing.assert_close(out, ref(**vals), rtol=0, atol=1e-8)


def test_items_newton_leaves_are_finished_by_fista(monkeypatch):
    """One Newton iteration, then FISTA: the points and their gradients (each item's with
    the step its residual was measured with) are the same."""
    vals = random_params(_sqrt_lasso().problem, batch=16, seed=2)
    w = torch.randn(16, 3, dtype=D, generator=torch.Generator().manual_seed(6))
    want, gw = _solve_with_grads(_sqrt_lasso(tol=1e-12), vals, w)
    monkeypatch.setattr(defaults, "NORMAL_NEWTON_MAXITER", 1)
    layer = _sqrt_lasso(tol=1e-12)
    got, gg = _solve_with_grads(layer, vals, w)
    assert layer.info.iterations > 1 and layer.info.status.tolist() == [0] * 16
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    for k in vals:
        torch.testing.assert_close(gg[k], gw[k], rtol=1e-6, atol=1e-8)
