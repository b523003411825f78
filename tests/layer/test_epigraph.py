"""The epigraph rewrite, one case per EPIGRAPH entry: the atom in the objective and in a
labelled constraint; solution and the constraint's multiplier against cvxpy, gradients
against central finite differences of tightly solved layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import optlayer as ol
from optlayer.compiler.epigraph import EPIGRAPH, rewrite
from optlayer.layer import random_params

from .reference import solve_reference_duals

EXAMPLES = Path(__file__).parents[2] / "examples" / "problems"
HEAD = ("dim m = 6\ndim n = 3\nparam A[m, n]\nparam b[m]\nparam C[2, n]\nparam d[2]\n"
        "var x[n]\n")

# id -> (atom, objective, labelled constraint, solver); every EPIGRAPH entry has a case
CASES = {
    "abs": ("abs", "minimize sum(abs(A @ x - b)) + 0.5 * sum_squares(x)",
            "lab: sum(abs(C @ x - d)) <= 0.5", "qp"),
    "pos": ("pos", "minimize sum(pos(A @ x - b)) + 0.5 * sum_squares(x)",
            "lab: sum(pos(C @ x - d)) <= 0.2", "qp"),
    "neg": ("neg", "minimize sum(neg(A @ x - b)) + 0.5 * sum_squares(x)",
            "lab: sum(neg(C @ x - d)) <= 0.2", "qp"),
    "norm1": ("norm1", "minimize norm1(A @ x - b) + 0.5 * sum_squares(x)",
              "lab: norm1(C @ x - d) <= 1", "qp"),
    "norm_inf": ("norm_inf", "minimize norm_inf(A @ x - b) + 0.5 * sum_squares(x)",
                 "lab: norm_inf(C @ x - d) <= 0.5", "qp"),
    "max": ("max", "minimize max(A @ x - b) + 0.5 * sum_squares(x)",
            "lab: max(C @ x - d) <= 0.2", "qp"),
    "max_pair": ("max", "minimize sum(max(A @ x - b, 0.3 * (b - A @ x))) + 0.5 * sum_squares(x)",
                 "lab: sum(max(C @ x - d, 0)) <= 0.2", "qp"),
    "min": ("min", "maximize min(A @ x - b) - 0.5 * sum_squares(x)",
            "lab: min(C @ x - d) >= -0.3", "qp"),
    "min_pair": ("min", "maximize sum(min(A @ x - b, 0.5 * (A @ x))) - 0.5 * sum_squares(x)",
                 "lab: sum(min(C @ x, 1)) >= -0.3", "qp"),
    "norm2": ("norm2", "minimize norm2(A @ x - b) + 0.5 * sum_squares(x)",
              "lab: norm2(C @ x - d) <= 0.5", "convex"),
    "norm2_variable_rhs": ("norm2", "minimize sum_squares(A @ x - b)",
                           "lab: norm2(C @ x - d) <= 0.2 * sum(x) + 0.5", "convex"),
}
PARAMS = [pytest.param(c, id=k) for k, c in CASES.items()]


def _layer(case, **kw):
    _atom, obj, con, _solver = case
    return ol.compile(HEAD + obj + "\nsubject to\n    " + con, **kw)


def test_every_epigraph_entry_has_a_case():
    assert {c[0] for c in CASES.values()} == set(EPIGRAPH)


@pytest.mark.parametrize("case", PARAMS)
def test_solution_and_dual_match_cvxpy(case):
    layer = _layer(case)
    assert layer.method == "kkt" and layer.plan.solver == case[3]
    vals = random_params(layer.problem, seed=11)
    x = layer(**vals)
    ref, _obj, duals = solve_reference_duals(layer.problem, {k: v.numpy() for k, v in vals.items()})
    # Clarabel stops near 1e-7 on second-order cones; the QP cases are exact to 1e-8
    tol = 1e-8 if case[3] == "qp" else 2e-6
    np.testing.assert_allclose(x.numpy(), ref["x"], atol=tol, rtol=0)
    ours = layer.duals("lab").reshape(-1).numpy()
    np.testing.assert_allclose(ours, duals["lab"], atol=10 * tol, rtol=0)
    assert ours.min() >= 0


def _fd_check(layer, vals, seed):
    names = list(vals)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(layer(**vals).shape, generator=gen, dtype=torch.float64)
    v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in vals.items()}
    inputs = {k: t.clone().requires_grad_(True) for k, t in vals.items()}
    grads = torch.autograd.grad((layer(**inputs) * w).sum(), [inputs[k] for k in names],
                                allow_unused=True)  # d is unused in some cases
    analytic = sum((g * v[k]).sum() for k, g in zip(names, grads, strict=True) if g is not None)
    eps = 1e-5
    with torch.no_grad():
        plus = (layer(**{k: t + eps * v[k] for k, t in vals.items()}) * w).sum()
        minus = (layer(**{k: t - eps * v[k] for k, t in vals.items()}) * w).sum()
    numeric = (plus - minus) / (2 * eps)
    assert abs(float(analytic) - float(numeric)) <= 1e-6 * max(1.0, abs(float(numeric)))
    return float(numeric)


@pytest.mark.parametrize("case", PARAMS)
def test_gradient_matches_finite_differences(case):
    layer = _layer(case, tol=1e-13, maxiter=500)
    vals = random_params(layer.problem, seed=12)
    assert abs(_fd_check(layer, vals, 3)) > 0  # the solution does move with the data


def test_shared_subexpression_gets_one_epigraph_variable():
    src = HEAD + "let r = abs(A @ x - b)\nminimize sum(r) + 0.1 * sum(pos(r - 1)) + sum_squares(x)"
    layer = ol.compile(src)
    aux = [n for n in layer.program.problem.vars if n != "x"]
    assert len(aux) == 2 and layer.program.layout.size == 3 + 6 + 6
    vals = random_params(layer.problem, seed=1)
    ref, _obj, _d = solve_reference_duals(layer.problem, {k: v.numpy() for k, v in vals.items()})
    np.testing.assert_allclose(layer(**vals).numpy(), ref["x"], atol=1e-8, rtol=0)


def test_nested_atoms_and_several_variables():
    """pos(abs(.) - c) nests two rewrites; only the user's variables come back."""
    src = ("dim n = 4\nparam y[n]\nparam c pos\nvar u[n]\nvar v\n"
           "minimize sum(pos(abs(u - y) - c)) + sum_squares(u) + square(v - 1) + abs(v)\n")
    layer = ol.compile(src)
    vals = random_params(layer.problem, seed=2)
    out = layer(**vals)
    assert out._fields == ("u", "v")
    ref, _obj, _d = solve_reference_duals(layer.problem, {k: t.numpy() for k, t in vals.items()})
    np.testing.assert_allclose(out.u.numpy(), ref["u"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(float(out.v), float(ref["v"]), atol=1e-8, rtol=0)
    assert "epigraph variables (internal, not returned)" in layer.explain()


def test_batched_duals_have_one_row_per_item():
    layer = _layer(CASES["norm_inf"])
    vals = random_params(layer.problem, batch=3, seed=4)
    x = layer(**vals)
    assert x.shape == (3, 3) and layer.duals("lab").shape == (3, 1)
    for i in range(3):
        xi = layer(**{k: t[i] for k, t in vals.items()})
        torch.testing.assert_close(x[i], xi, atol=1e-9, rtol=0)


def test_rewrite_rows_are_affine_for_piecewise_linear_atoms():
    prob = ol.check(HEAD + CASES["abs"][1] + "\nsubject to\n    " + CASES["abs"][2], dims={})
    rw = rewrite(prob)
    assert rw.qp and all(r.expr.degree == 1 for r in rw.ineq)
    assert [r.label for r in rw.ineq].count("lab") == 1


def test_psd_next_to_other_constraints_is_reported():
    src = ("dim n = 3\nparam C[n, n] symmetric\nvar X[n, n] psd\nminimize sum_squares(X - C)\n"
           "subject to\n    trace(X) == 1")
    with pytest.raises(ol.OptTypeError, match="set psd cannot be written as rows"):
        ol.compile(src)


# item 1 has no feasible point: an inequality alone (sum_squares(x) <= -1), or together with
# an equality (sum(x) == 1 forces sum_squares(x) >= 1/4 > 0.1)
INFEASIBLE = {
    "inequality": ("", [2.0, -1.0]),
    "with_equality": ("    s: sum(x) == 1\n", [2.0, 0.1]),
}


@pytest.mark.parametrize("extra,radius", list(INFEASIBLE.values()), ids=list(INFEASIBLE))
def test_convex_path_certifies_infeasible_items_and_masks_them(extra, radius):
    layer = ol.compile("dim n = 4\nparam c[n]\nparam a\nvar x[n]\nminimize sum_squares(x - c)\n"
                       "subject to\n    q: sum_squares(x) <= a\n" + extra, on_failure="mask")
    assert layer.plan.solver == "convex"
    c = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c.requires_grad_(True)
    x = layer(c=c, a=torch.tensor(radius, dtype=torch.float64))
    assert layer.info.status.tolist() == [0, int(ol.Status.INFEASIBLE)]
    assert bool(x[1].isnan().all()) and bool(x[0].isfinite().all())
    dual = layer.duals("q")    # the failed item's multiplier is masked too
    assert bool(dual[1].isnan().all()) and bool(dual[0].isfinite().all())
    # weighted: with the equality sum(x) == 1, d sum(x) / dc is exactly zero
    (x.nan_to_num() * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
    assert bool((c.grad[1] == 0).all()) and bool(c.grad[0].abs().sum() > 1e-3)


def test_explain_names_the_convex_interior_point():
    text = ol.load(EXAMPLES / "robust_ls.opt").explain()
    assert "table row: general smooth convex constraints" in text
    assert "ConvexInteriorPoint" in text and "optlayer.conditions.kkt" in text


def _labelled_kkt_examples():
    out = []
    for p in sorted(EXAMPLES.glob("*.opt")):
        layer = ol.load(p)
        if "kkt" in layer.plan.applicable and any(
                getattr(c, "label", None) for c in layer.problem.constraints):
            out.append(pytest.param(p, id=p.stem))
    return out


@pytest.mark.parametrize("path", _labelled_kkt_examples())
def test_example_duals_match_cvxpy(path):
    """Multipliers of every labelled constraint (equalities with cvxpy's sign too), through
    the QP path and the convex path alike."""
    layer = ol.load(path, method="kkt")
    vals = random_params(layer.problem, seed=1)
    layer(**vals)
    _ref, _obj, duals = solve_reference_duals(layer.problem,
                                              {k: v.numpy() for k, v in vals.items()})
    assert duals
    for label, d in duals.items():
        np.testing.assert_allclose(layer.duals(label).reshape(-1).numpy(), d, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["robust_ls", "lp"])
def test_a_dropped_kkt_layer_is_freed(name):
    # what the KKT paths build once per program (row tapes, the row structure) lives on
    # the program: nothing global keeps a layer's program alive once the layer is gone
    import gc
    import weakref

    layer = ol.load(EXAMPLES / f"{name}.opt")
    layer(**random_params(layer.problem, batch=2, seed=0))
    vals = random_params(layer.problem, batch=2, seed=1)
    p = next(iter(vals))
    vals[p].requires_grad_(True)
    out = layer(**vals)
    (out if isinstance(out, torch.Tensor) else out[0]).sum().backward()
    assert layer.program.derived, "the call cached nothing: this test no longer tests"
    ref = weakref.ref(layer.program)
    del layer, out  # (an output's graph holds its layer's map until the output goes)
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("name", ["lp", "general_qp", "robust_ls"])
def test_a_kkt_layer_keeps_no_graph_of_its_last_call(name):
    # the duals it keeps for duals() are detached: once the caller drops the output, the
    # parameters and what the backward held (the KKT factorization) are freed
    import gc
    import weakref

    layer = ol.load(EXAMPLES / f"{name}.opt")
    vals = {k: v.requires_grad_(True) for k, v in
            random_params(layer.problem, batch=3, seed=0).items()}
    out = layer(**vals)
    (out if isinstance(out, torch.Tensor) else out[0]).sum().backward()
    duals = layer.duals()
    assert duals and not any(d.requires_grad for d in duals.values())
    refs = [weakref.ref(v) for v in vals.values()]
    del vals, out
    gc.collect()
    assert all(r() is None for r in refs)


def test_convex_backward_solves_each_call_at_its_own_solution(monkeypatch):
    # the implicit function of the convex path is built once per shape (custom_root's eager
    # check of the map runs once, not per call); each call's backward still solves with its
    # own models and solution, in the closed-form KKT matrix, whatever ran in between
    import optlayer.implicit.root as root_mod
    import optlayer.solvers._base as base

    checks, fallbacks = [], []
    check = root_mod._foreign_leaves
    monkeypatch.setattr(root_mod, "_foreign_leaves", lambda *a: checks.append(1) or check(*a))
    make_fallback = base.block_diagonal_solve

    def recording(template):
        inner = make_fallback(template)
        return lambda *a, **k: fallbacks.append(1) or inner(*a, **k)

    monkeypatch.setattr(base, "block_diagonal_solve", recording)
    layer = ol.load(EXAMPLES / "robust_ls.opt")
    layer.tol = 1e-11
    w = torch.arange(1.0, 5.0, dtype=torch.float64)
    calls = []
    for seed in (3, 4):
        vals = {k: v.requires_grad_(True)
                for k, v in random_params(layer.problem, batch=3, seed=seed).items()}
        calls.append((vals, layer(**vals)))
    grads = [torch.autograd.grad((x * w).sum(), vals["t"])[0]
             for vals, x in reversed(calls)]  # the second call's backward first
    assert len(checks) == 1 and not fallbacks
    assert len([k for k in layer.program.derived if k[0] == "root"]) == 1
    d = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)
    h = 1e-6
    for (vals, _), g in zip(reversed(calls), grads, strict=True):
        plain = {k: v.detach() for k, v in vals.items()}

        def value(eps, plain=plain):
            with torch.no_grad():
                return (layer(**dict(plain, t=plain["t"] + eps * d)) * w).sum()

        fd = (value(h) - value(-h)) / (2 * h)
        assert abs(float((g * d).sum()) - float(fd)) < 1e-6


def test_a_crossed_curved_row_gets_its_slack_back():
    # risk_portfolio, batch 32, seed 1: the linearised step crosses the curved risk row
    # (g + s > 0) while x stays inside it; with the slack kept, the residual norm then
    # rejected long steps (steps of 0.03-0.08 for ten iterations, 21 in all); with
    # s = -g there, 14
    layer = ol.load(EXAMPLES / "risk_portfolio.opt")
    with torch.no_grad():
        layer(**random_params(layer.problem, batch=32, seed=1))
    assert bool((layer.info.status == 0).all())
    assert layer.info.iterations <= 16


def test_qp_path_masks_the_duals_of_infeasible_items():
    layer = ol.compile("dim n = 3\nparam c[n]\nparam a\nvar x[n] nonneg\n"
                       "minimize sum_squares(x - c)\nsubject to\n    cap: sum(x) <= a\n",
                       method="kkt", on_failure="mask")
    assert layer.plan.solver != "convex"
    c = torch.ones(2, 3, dtype=torch.float64)
    x = layer(c=c, a=torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert layer.info.status.tolist() == [0, int(ol.Status.INFEASIBLE)]
    dual = layer.duals("cap")
    assert bool(x[1].isnan().all()) and bool(dual[1].isnan().all())
    torch.testing.assert_close(dual[0], torch.tensor([4.0 / 3.0], dtype=torch.float64))
