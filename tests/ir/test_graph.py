"""Dependency analysis: terms, parameter reach, separable blocks, shared lets, definition order."""

from __future__ import annotations

import pytest
import torch

import optlayer.ir as ir
from optlayer.errors import OptTypeError, Span
from optlayer.ir import functions as F


def _model():
    """Two coupled variables (x, y) and one separate (z), a let shared by two terms."""
    x, y, z = (ir.Variable(3, name=k) for k in "xyz")
    A = ir.Parameter(2, 3, name="A")
    b = ir.Parameter(2, name="b")
    lam = ir.Parameter(name="lam", nonneg=True)
    mu = ir.Parameter(name="mu", nonneg=True)
    r = ir.let("r", A @ x - b)
    obj = ir.minimize(F.sum_squares(r) + lam * F.norm1(r) - F.sum(F.log(z)) + mu * F.sum(y))
    cons = [(F.sum(x + y) == 1).labelled("budget"), z <= 2]
    return ir.Problem(obj, cons), dict(x=x, y=y, z=z, r=r)


def test_objective_terms_split_at_top_level_sums():
    prob, _ = _model()
    terms = ir.objective_terms(prob)
    assert [(t.coeff, ir.expr_text(t.expr)) for t in terms] == [
        (1, "sum_squares(r)"), (1, "lam * norm1(r)"), (-1, "sum(log(z))"), (1, "mu * sum(y)")]


def test_objective_terms_through_nested_negation():
    x = ir.Variable(2, name="x")
    prob = ir.Problem(ir.minimize(-(F.sum(x) - F.norm1(x)) - -F.norm2(x)))
    assert [(t.coeff, ir.expr_text(t.expr)) for t in ir.objective_terms(prob)] == [
        (-1, "sum(x)"), (1, "norm1(x)"), (1, "norm2(x)")]


def test_param_reach_follows_lets():
    prob, _ = _model()
    reach = ir.param_reach(prob)
    assert reach["term 1"] == ["A", "b"]  # through the let r
    assert reach["term 2"] == ["A", "b", "lam"]
    assert reach["term 3"] == []
    assert reach["term 4"] == ["mu"]
    assert reach["budget"] == [] and reach["constraint 2"] == []


def test_dependency_graph_edges():
    prob, _ = _model()
    g = ir.dependency_graph(prob)
    assert g.has_edge(("var", "x"), ("let", "r"))
    assert g.has_edge(("let", "r"), ("term", "term 1"))
    assert not g.has_edge(("var", "x"), ("term", "term 1"))  # only through the let
    assert g.has_edge(("var", "y"), ("constraint", "budget"))


def test_variable_blocks_are_separable_groups():
    prob, _ = _model()
    assert ir.variable_blocks(prob) == [["x", "y"], ["z"]]


def test_variable_blocks_all_separate():
    x, y = ir.Variable(2, name="x"), ir.Variable(2, name="y")
    prob = ir.Problem(ir.minimize(F.sum_squares(x) + F.norm1(y)))
    assert ir.variable_blocks(prob) == [["x"], ["y"]]


def test_shared_let_is_counted_and_computed_once():
    prob, nodes = _model()
    assert ir.let_uses(prob) == {"r": 2}
    # evaluation with one cache computes the let body once for both terms
    calls = []
    atom = nodes["r"].body.args[0].atom  # the `@` in A @ x - b: used nowhere else
    original = atom.impl
    object.__setattr__(atom, "impl", lambda *a: calls.append(1) or original(*a))
    try:
        env = {k: torch.ones(s, dtype=torch.float64) for k, s in
               [("x", 3), ("y", 3), ("z", 3), ("A", (2, 3)), ("b", 2)]}
        env.update(lam=torch.tensor(1.0, dtype=torch.float64),
                   mu=torch.tensor(1.0, dtype=torch.float64))
        value = prob.objective.expr.evaluate(env)
    finally:
        object.__setattr__(atom, "impl", original)
    # r = A 1 - 1 = [2, 2]: sum_squares 8, norm1 4, -sum(log 1) 0, sum(y) 3
    assert float(value) == 15.0
    assert len(calls) == 1


def _refs(*names):
    return [(n, Span(1, 1, 1, 2)) for n in names]


def test_definition_order_sorts_dependencies():
    defs = [("c", _refs("a", "b"), None), ("a", _refs("x"), None), ("b", _refs("a"), None)]
    assert ir.order_definitions(defs, {"x"}) == ["a", "b", "c"]


def test_definition_order_is_stable():
    defs = [("p", _refs("x"), None), ("q", _refs("x"), None), ("r", [], None)]
    assert ir.order_definitions(defs, {"x"}) == ["p", "q", "r"]


def test_undefined_name_is_reported_at_the_reference():
    span = Span(4, 9, 4, 13)
    defs = [("r", [("x", None), ("resd", span)], Span(4, 1, 4, 2)), ("resid", [], None)]
    with pytest.raises(OptTypeError) as info:
        ir.order_definitions(defs, {"x"})
    assert info.value.span == span
    assert "undefined name 'resd'" in info.value.message
    assert "did you mean 'resid'" in info.value.hint


def test_cycle_is_reported_with_the_loop():
    defs = [("a", _refs("b"), Span(1, 1, 1, 2)), ("b", _refs("c"), Span(2, 1, 2, 2)),
            ("c", _refs("a"), Span(3, 1, 3, 2))]
    with pytest.raises(OptTypeError) as info:
        ir.order_definitions(defs, set())
    err = info.value
    assert err.span == Span(1, 1, 1, 2)
    assert "depends on itself" in err.message
    for name in "abc":
        assert name in err.message


def test_self_reference_is_a_cycle():
    with pytest.raises(OptTypeError, match="depends on itself"):
        ir.order_definitions([("a", _refs("a"), None)], set())


def test_duplicate_definition_is_reported():
    with pytest.raises(OptTypeError, match="more than once"):
        ir.order_definitions([("a", [], None), ("a", [], None)], set())


def test_summary_reports_terms_reach_and_blocks():
    prob, _ = _model()
    text = prob.summary()
    lines = text.splitlines()
    assert lines[0].startswith("minimize (convex)")
    assert any("let r" in ln and "affine" in ln for ln in lines)
    term2 = next(ln for ln in lines if "lam * norm1(r)" in ln)
    assert "convex" in term2 and "non-smooth" in term2 and "A, b, lam" in term2
    term3 = next(ln for ln in lines if "sum(log(z))" in ln)
    assert term3.lstrip().startswith("term 3: -") and "concave" in term3
    assert any(ln.strip().startswith("budget:") for ln in lines)
    assert "x, y" in lines[-1] and "z" in lines[-1] and lines[-1].startswith("variable blocks")
    assert ir.summary(prob) == text


def test_graph_analysis_does_not_need_networkx_at_import():
    import subprocess
    import sys

    code = ("import sys, optlayer; "
            "print('networkx' in sys.modules, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
