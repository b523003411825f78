"""Method selection: every spelling of a simple set, prox terms, the projection pattern."""

from __future__ import annotations

import pytest

import optlayer as ol
from optlayer.compiler import classify

HEAD = "dim n = 4\nparam y[n]\nparam r pos\nparam A[n, n]\nvar x[n]\n"

CASES = [
    ("simplex_member", "minimize sum_squares(A @ x - y)\nsubject to\n x in simplex", "proj_grad",
     "simplex"),
    ("simplex_spelled", "minimize sum_squares(A @ x - y)\nsubject to\n sum(x) == r\n x >= 0",
     "proj_grad", "simplex"),
    ("nonneg_ineq", "minimize sum_squares(A @ x - y)\nsubject to\n x >= 0", "proj_grad", "nonneg"),
    ("nonneg_member", "minimize sum_squares(A @ x - y)\nsubject to\n x in nonneg", "proj_grad",
     "nonneg"),
    ("bounds", "minimize sum_squares(A @ x - y)\nsubject to\n x >= -1\n x <= r", "proj_grad",
     "box"),
    ("box_member", "minimize sum_squares(A @ x - y)\nsubject to\n x in box(-1, 1)", "proj_grad",
     "box"),
    ("norm2_ball", "minimize sum_squares(A @ x - y)\nsubject to\n norm2(x) <= r", "proj_grad",
     "ball2"),
    ("norm1_ball", "minimize sum_squares(A @ x - y)\nsubject to\n norm1(x) <= r", "proj_grad",
     "ball1"),
    ("projection", "minimize sum_squares(x - y)\nsubject to\n x in simplex", "projection",
     "simplex"),
    ("projection_flipped", "minimize sum_squares(y - x)\nsubject to\n x in ballinf(r)",
     "projection", "ballinf"),
    ("unconstrained", "minimize sum_squares(A @ x - y) + r * sum_squares(x)", "stationary", None),
    ("lasso", "minimize sum_squares(A @ x - y) + r * norm1(x)", "prox_grad", None),
    ("nonneg_lasso", "minimize sum_squares(A @ x - y) + r * norm1(x)\nsubject to\n x >= 0",
     "prox_grad", "nonneg"),
    ("entropy", "minimize y @ x - entropy(x)\nsubject to\n x in simplex", "mirror_descent",
     "simplex"),
]


@pytest.mark.parametrize("body,method,kind", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_default_method_and_set(body, method, kind):
    plan = classify(ol.check(HEAD + body, dims={}))
    assert plan.method == method
    if kind is not None:
        assert plan.sets["x"].kind == kind


def test_forcing_a_method_that_does_not_apply_names_the_applicable_ones():
    with pytest.raises(ol.OptTypeError, match="applicable methods: prox_grad"):
        classify(ol.check(HEAD + "minimize sum_squares(A @ x - y) + r * norm1(x)", dims={}),
                 "stationary")


def test_unknown_method():
    with pytest.raises(ol.OptTypeError, match="unknown method 'newton'"):
        classify(ol.check(HEAD + "minimize sum_squares(x)", dims={}), "newton")


def test_no_method_names_the_term():
    """A psd variable with another constraint: no projection method, and a psd cone has no
    rows for the KKT solvers (no semidefinite solver)."""
    src = ("dim n = 3\nparam C[n, n] symmetric\nvar X[n, n] psd\nminimize sum_squares(X - C)\n"
           "subject to\n trace(X) == 1")
    with pytest.raises(ol.OptTypeError, match="no method applies.*set psd cannot be written"):
        classify(ol.check(src, dims={}))


def test_nonsmooth_objective_goes_to_kkt_through_the_epigraph():
    plan = classify(ol.check(HEAD + "minimize norm1(A @ x - y)", dims={}))
    assert plan.method == "kkt" and plan.solver == "qp"
    assert list(plan.problem.vars) == ["x", "norm1_epi0"] and plan.user_vars == ["x"]


def test_explain_names_row_map_and_solver():
    text = ol.compile(HEAD + "minimize sum_squares(A @ x - y)\nsubject to\n x >= 0").explain()
    assert "method: proj_grad" in text
    assert "x = proj_C(x - eta grad f(x))" in text
    assert "each var in one simple set" in text
    assert "x in nonneg (x >= 0)" in text


def test_forcing_kkt_on_a_smooth_set_problem_explains_the_rule():
    src = HEAD + "minimize sum(exp(x - y))\nsubject to\n x >= 0"
    with pytest.raises(ol.OptTypeError, match="does not apply") as info:
        classify(ol.check(src, dims={}), "kkt")
    assert "offered only when no other method applies" in str(info.value)
