"""``ol.parse`` and ``ol.check``: what each checks and what it returns."""

import pytest

import optlayer as ol
from optlayer import ir

MODEL = """dim n = 5
dim k
param y[n]
param B[k, n]
param lam nonneg
var x[n]
minimize sum_squares(x - y) + lam * norm1(B @ x)
subject to
    budget: sum(x) == 1
    x >= 0
"""


def test_parse_keeps_dims_symbolic():
    prob = ol.parse(MODEL)
    n, k = ir.dim_symbol("n"), ir.dim_symbol("k")
    assert prob.dims == {"n": 5, "k": None}
    assert ir.shape_equal(prob.params["B"].shape, (k, n))
    assert isinstance(prob, ir.Problem)


def test_check_binds_given_dims_and_defaults():
    prob = ol.check(MODEL, dims={"k": 2})
    assert prob.params["B"].shape == (2, 5) and prob.vars["x"].shape == (5,)
    assert prob.dims == {"n": 5, "k": 2}


def test_check_without_dims_stays_symbolic_when_a_dim_has_no_default():
    prob = ol.check(MODEL)
    assert prob.dims["k"] is None


def test_check_summary_names_terms_curvature_and_parameters():
    text = ol.check(MODEL, dims={"k": 2}).summary()
    assert "minimize (convex)" in text
    assert "budget" in text and "lam" in text and "convex" in text


def test_check_rejects_dims_that_are_not_a_mapping():
    with pytest.raises(ol.BindingError, match="mapping"):
        ol.check(MODEL, dims=[("k", 2)])


def test_check_enforces_dcp_but_parse_does_not():
    bad = "var x\nmaximize square(x)"
    assert ol.parse(bad).objective.sense == "maximize"
    with pytest.raises(ol.NonConvexError):
        ol.check(bad)


def test_parse_equals_python_api():
    x = ol.Variable(3, name="x")
    y = ol.Parameter(3, name="y")
    built = ol.Problem(ol.minimize(ol.sum_squares(x - y)), [(ol.sum(x) == 1).labelled("b"),
                                                            x >= 0], check=False)
    text = "param y[3]\nvar x[3]\nminimize sum_squares(x - y)\nsubject to\n" \
           "    b: sum(x) == 1\n    x >= 0\n"
    assert ol.parse(text) == built


def test_error_carries_filename_and_source():
    with pytest.raises(ol.OptTypeError) as info:
        ol.parse("var x\nminimize sum(z)", filename="f.opt")
    err = info.value
    assert err.filename == "f.opt" and err.source.endswith("sum(z)")
    assert str(err).startswith("f.opt:2:14: unknown name 'z'")


def test_import_optlayer_does_not_load_the_parser():
    # the .opt front end (lark, the grammar) loads on the first parse, keeping import fast
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, optlayer; "
            "print(sorted(m for m in ('lark', 'optlayer.dsl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
