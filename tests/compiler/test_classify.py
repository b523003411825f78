"""Method selection: every spelling of a simple set, prox terms, the projection pattern."""

from __future__ import annotations

import pytest

import optlayer as ol
from optlayer import defaults
from optlayer.compiler import classify

HEAD = "dim n = 4\nparam y[n]\nparam r pos\nparam A[n, n]\nvar x[n]\n"

CASES = [
    # a quadratic objective on polyhedral sets is a QP: kkt by default, proj_grad applies
    ("simplex_member", "minimize sum_squares(A @ x - y)\nsubject to\n x in simplex", "kkt",
     "simplex"),
    ("simplex_spelled", "minimize sum_squares(A @ x - y)\nsubject to\n sum(x) == r\n x >= 0",
     "kkt", "simplex"),
    ("nonneg_ineq", "minimize sum_squares(A @ x - y)\nsubject to\n x >= 0", "kkt", "nonneg"),
    ("nonneg_member", "minimize sum_squares(A @ x - y)\nsubject to\n x in nonneg", "kkt",
     "nonneg"),
    ("bounds", "minimize sum_squares(A @ x - y)\nsubject to\n x >= -1\n x <= r", "kkt", "box"),
    ("box_member", "minimize sum_squares(A @ x - y)\nsubject to\n x in box(-1, 1)", "kkt",
     "box"),
    # the same sets under an objective that is not quadratic: projected gradient
    ("simplex_smooth", "minimize sum(exp(A @ x - y))\nsubject to\n x in simplex", "proj_grad",
     "simplex"),
    ("simplex_spelled_smooth", "minimize sum(exp(A @ x - y))\nsubject to\n sum(x) == r\n"
     " x >= 0", "proj_grad", "simplex"),
    ("nonneg_smooth", "minimize sum(exp(A @ x - y))\nsubject to\n x >= 0", "proj_grad",
     "nonneg"),
    ("bounds_smooth", "minimize sum(exp(A @ x - y))\nsubject to\n x >= -1\n x <= r",
     "proj_grad", "box"),
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
        if method in ("kkt", "proj_grad"):
            assert "proj_grad" in plan.applicable


def test_quadratic_objective_on_polyhedral_sets_defaults_to_kkt_up_to_the_size_bound():
    """Below ``SETS_AS_QP_MAX_SIZE`` unknowns the QP interior point; above it, and for a set
    that is not a QP row as it stands (a ball), projected gradient."""
    body = "minimize sum_squares(A @ x - y)\nsubject to\n x in simplex"
    bound = defaults.SETS_AS_QP_MAX_SIZE
    for n, method in ((bound, "kkt"), (bound + 1, "proj_grad")):
        head = f"dim n = {n}\nparam y[n]\nparam A[n, n]\nvar x[n]\n"
        plan = classify(ol.check(head + body, dims={}))
        assert (plan.method, plan.applicable[0]) == (method, method)
        assert {"kkt", "proj_grad"} <= set(plan.applicable)
    # two variables count together: 2 * (bound // 2 + 1) unknowns are above the bound
    half = bound // 2 + 1
    two = (f"dim n = {half}\nparam y[n]\nvar x[n]\nvar w[n]\n"
           "minimize sum_squares(x - y) + sum_squares(w + y)\nsubject to\n x >= 0\n w >= 0")
    assert classify(ol.check(two, dims={})).method == "proj_grad"
    mixed = (HEAD + "var w[n]\nminimize sum_squares(A @ x - y) + sum_squares(w - y)\n"
             "subject to\n x >= 0\n norm2(w) <= r")
    assert classify(ol.check(mixed, dims={})).method == "proj_grad"


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
    text = ol.compile(HEAD + "minimize sum_squares(A @ x - y)\nsubject to\n x >= 0",
                      method="proj_grad").explain()
    assert "method: proj_grad" in text
    assert "x = proj_C(x - eta grad f(x))" in text
    assert "each var in one simple set" in text
    assert "x in nonneg (x >= 0)" in text


def test_forcing_kkt_on_a_smooth_set_problem_explains_the_rule():
    src = HEAD + "minimize sum(exp(x - y))\nsubject to\n x >= 0"
    with pytest.raises(ol.OptTypeError, match="does not apply") as info:
        classify(ol.check(src, dims={}), "kkt")
    assert "offered only when no other method applies" in str(info.value)


def test_explain_says_why_a_quadratic_on_sets_is_a_qp():
    text = ol.compile(HEAD + "minimize sum_squares(A @ x - y)\nsubject to\n x >= 0").explain()
    assert "method: kkt" in text
    assert "x in nonneg (x >= 0)" in text
    assert "polyhedral sets only (nonneg, box, simplex) is a QP" in text
    assert "applicable methods: kkt, proj_grad, prox_grad (default kkt)" in text
