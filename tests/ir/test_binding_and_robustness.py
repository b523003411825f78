"""Binding checks of leaf values, deep expressions without recursion, and DCP soundness.

DCP soundness is a property test tying the composition rule to numbers: a
random expression over real-domain atoms that the IR calls convex (concave,
affine) satisfies Jensen's inequality (reversed, with equality) on random
segments.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayer as ol
import optlayer.ir as ir
from optlayer.errors import BindingError
from optlayer.ir import Curvature

F64 = torch.float64


# ------------------------------------------------------------------ check_value

def _bad_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=F64)
    spd = a @ a.T + torch.eye(3, dtype=F64)
    bad_batch = torch.stack([spd, spd, -spd])  # item 2 is negative definite
    return [
        ("shape", ol.Parameter(3, name="v"), torch.zeros(4, dtype=F64), "declared [3]", None),
        ("dtype", ol.Parameter(3, name="v"), torch.zeros(3, dtype=torch.int64), "floating",
         None),
        ("not-tensor", ol.Parameter(3, name="v"), [0.0, 1.0, 2.0], "torch.Tensor", None),
        ("nan", ol.Parameter(3, name="v"), torch.tensor([0.0, float("nan"), 1.0], dtype=F64),
         "non-finite", None),
        ("nonneg", ol.Parameter(3, name="v", nonneg=True),
         torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0]], dtype=F64), "negative", (1,)),
        ("pos", ol.Parameter(name="c", pos=True), torch.tensor([1.0, 0.0], dtype=F64), "<= 0",
         (1,)),
        ("nonpos", ol.Parameter(name="c", nonpos=True), torch.tensor(0.5, dtype=F64),
         "positive entries", None),
        ("symmetric", ol.Parameter(3, 3, name="S", symmetric=True), a, "symmetric", None),
        ("psd", ol.Parameter(3, 3, name="P", psd=True), bad_batch, "negative eigenvalue", (2,)),
    ]


BAD = _bad_values()


@pytest.mark.parametrize(("leaf", "value", "words", "index"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_check_value_rejects_with_name_and_batch_index(leaf, value, words, index):
    with pytest.raises(BindingError) as info:
        leaf.check_value(value)
    err = info.value
    assert leaf.name in err.message and words in err.message, err.message
    assert err.parameter == leaf.name
    assert err.batch_index == index


def test_check_value_accepts_good_values_unchanged():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, 3, generator=g, dtype=F64)
    spd = a @ a.mT
    P = ol.Parameter(3, 3, name="P", psd=True)
    assert P.check_value(spd) is spd  # batched, all items psd
    v = ol.Parameter(3, name="v", nonneg=True)
    z = torch.zeros(3, dtype=torch.float32)
    assert v.check_value(z) is z


# ------------------------------------------------------------------ deep expressions

DEPTH = 3000  # far beyond Python's default recursion limit of 1000


def test_deep_expression_is_handled_without_recursion():
    x = ol.Variable(2, name="x")
    e = x
    for k in range(DEPTH):
        e = -e if k % 2 else e + 1
    prob = ol.Problem(ol.minimize(ol.sum_squares(e)), [e >= 0])
    text = prob.to_opt()
    assert text.count("(") >= DEPTH // 2
    assert prob == prob  # structural equality walks the whole DAG
    out = prob.objective.expr.evaluate({"x": torch.zeros(2, dtype=F64)})
    # e = -( ... -(x + 1) + 1 ...): pairs (+1, negate) alternate the sign; value is finite
    assert torch.isfinite(out)
    assert len(ir.objective_terms(prob)) == 1
    assert prob.summary().startswith("minimize")


def test_deep_nonconvex_expression_reports_the_offender():
    x = ol.Variable(2, name="x")
    bad = ol.sqrt(ol.sum_squares(x))
    e = bad
    for _ in range(DEPTH):
        e = e + 1
    with pytest.raises(ol.NonConvexError) as info:
        ol.Problem(ol.minimize(e))
    assert "sqrt is concave" in info.value.why


def test_wide_shared_dag_evaluates_each_node_once():
    x = ol.Variable(2, name="x")
    e = x
    for _ in range(60):
        e = e + e  # 2^60 paths, 61 distinct nodes
    out = ol.sum(e).evaluate({"x": torch.ones(2, dtype=F64)})
    assert float(out) == 2.0 * 2.0**60
    assert len(list(ir.postorder(e))) == 61  # x and the 60 adds


# ------------------------------------------------------------------ DCP soundness

_VEC = 3
_CONVEX_EW = ["exp", "abs", "square", "pos", "neg", "logistic", "softplus", "huber"]
_REDUCE = ["sum", "mean", "norm1", "norm2", "norm_inf", "sum_squares", "logsumexp", "max",
           "min"]


def _vec_exprs(depth: int):
    x = ol.Variable(_VEC, name="x")
    y = ol.Variable(_VEC, name="y")
    leaf = st.sampled_from([x, y])
    if depth == 0:
        return leaf
    sub = _vec_exprs(depth - 1)
    coeff = st.sampled_from([-2.0, -0.5, 0.5, 3.0]).map(ir.Constant)
    M = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0], [-1.0, 0.5, 0.25]], dtype=F64)
    return st.one_of(
        leaf,
        st.tuples(sub, sub).map(lambda t: ir.add(*t)),
        st.tuples(sub, sub).map(lambda t: ir.sub(*t)),
        st.tuples(coeff, sub).map(lambda t: ir.mul(*t)),
        sub.map(lambda e: ir.matmul(ir.Constant(M), e)),
        sub.map(ir.negate),
        st.tuples(st.sampled_from(_CONVEX_EW), sub).map(lambda t: ir.apply(t[0], [t[1]])),
        st.tuples(sub, sub).map(lambda t: ir.apply("max", list(t))),
        st.tuples(sub, sub).map(lambda t: ir.apply("min", list(t))),
    )


def _scalar_exprs():
    return st.tuples(st.sampled_from(_REDUCE), _vec_exprs(3)).map(
        lambda t: ir.apply(t[0], [t[1]]))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.one_of(_scalar_exprs(), _vec_exprs(4)))
def test_dcp_curvature_is_sound_numerically(e):
    _assert_sound(e)


def _assert_sound(e):
    curv = e.curvature
    g = torch.Generator().manual_seed(11)
    B = 256
    xa, ya, xb, yb = (torch.randn(B, _VEC, generator=g, dtype=F64) for _ in range(4))
    t = torch.rand(B, generator=g, dtype=F64)
    tt = t.reshape((B,) + (1,) * e.ndim)
    tv = t.reshape(B, 1)
    fa = e.evaluate({"x": xa, "y": ya})
    fb = e.evaluate({"x": xb, "y": yb})
    fm = e.evaluate({"x": tv * xa + (1 - tv) * xb, "y": tv * ya + (1 - tv) * yb})
    chord = tt * fa + (1 - tt) * fb
    finite = torch.isfinite(fa) & torch.isfinite(fb) & torch.isfinite(fm)
    assert bool(finite.all())
    tol = 1e-9 * (1 + float(torch.maximum(fa.abs(), fb.abs()).max()))
    if curv.is_convex:
        assert bool((fm <= chord + tol).all()), f"{ir.expr_text(e)} is called {curv}"
    if curv.is_concave:
        assert bool((fm >= chord - tol).all()), f"{ir.expr_text(e)} is called {curv}"
    if curv is Curvature.UNKNOWN:
        # no claim is made; the expression still evaluates (checked above)
        assert not curv.is_dcp


def test_messages_about_shared_dags_stay_short():
    # 2^40 paths: the full text would be terabytes; messages and repr elide per node
    x = ol.Variable(2, name="x")
    e = x
    for _ in range(40):
        e = e + e
    assert len(repr(e)) < 300
    with pytest.raises(ol.NonConvexError) as info:
        ol.Problem(ol.minimize(ol.sqrt(ol.sum_squares(e))))
    assert " ... " in info.value.why and len(info.value.why) < 400


def _affine():
    x = ol.Variable(_VEC, name="x")
    y = ol.Variable(_VEC, name="y")
    M = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0], [-1.0, 0.5, 0.25]], dtype=F64)
    return st.sampled_from([x, y, x - y, ir.matmul(ir.Constant(M), x) + 1, -y + x * 0.5])


def _convex(depth: int):
    """Expressions convex by construction (DCP rules applied by hand)."""
    aff = _affine()
    if depth == 0:
        return st.one_of(
            st.tuples(st.sampled_from(["exp", "abs", "square", "pos", "neg", "logistic",
                                       "huber"]), aff).map(lambda t: ir.apply(t[0], [t[1]])))
    sub = _convex(depth - 1)
    return st.one_of(
        sub,
        st.tuples(sub, sub).map(lambda t: ir.add(*t)),
        st.tuples(st.sampled_from([0.5, 2.0]), sub).map(lambda t: ir.mul(t[0], t[1])),
        st.tuples(sub, sub).map(lambda t: ir.apply("max", list(t))),
        st.tuples(sub, aff).map(lambda t: ir.sub(*t)),
        sub.map(lambda e: ir.apply("logistic", [e])),  # convex nondecreasing of convex
        sub.map(lambda e: ir.apply("square", [ir.apply("pos", [e])])),  # sign-dependent
        sub.map(lambda e: ir.apply("abs", [ir.apply("neg", [ir.negate(e)])])),
        sub.map(lambda e: ir.negate(ir.apply("min", [ir.negate(e), ir.negate(e)]))),
    )


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.sampled_from(["sum", "norm1", "norm2", "norm_inf", "sum_squares",
                                  "logsumexp", "max"]), _convex(2)))
def test_convex_by_construction_is_recognised_and_sound(pair):
    reducer, inner = pair
    e = ir.apply(reducer, [inner]) if reducer in ("sum", "logsumexp", "max") else inner
    if reducer not in ("sum", "logsumexp", "max"):
        # norms are nondecreasing only on nonneg arguments: feed them pos(...)
        e = ir.apply(reducer, [ir.apply("pos", [inner])])
    assert e.curvature is Curvature.CONVEX, ir.expr_text(e, limit=200)
    _assert_sound(e)
