"""DCP agrees with cvxpy's analysis on random expressions (an external oracle).

The same random expression is built twice, in the IR and in cvxpy, from
atoms both know (elementwise, reductions, maximum/minimum, power, products
with constants and signed parameters, matrix products with a constant matrix,
quad_form with a psd parameter); the curvature
classes must be identical: the composition rule, the sign-dependent
monotonicities and the sign rules are neither weaker nor stronger than cvxpy's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayer.ir as ir

cp = pytest.importorskip("cvxpy")

X, Y = ir.Variable(3, name="x"), ir.Variable(3, name="y")
CX, CY = cp.Variable(3), cp.Variable(3)
M = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0], [-1.0, 0.5, 0.25]])

ELEMENTWISE = {"exp": cp.exp, "abs": cp.abs, "square": cp.square, "pos": cp.pos,
               "neg": cp.neg, "logistic": cp.logistic, "huber": cp.huber, "log": cp.log,
               "sqrt": cp.sqrt}
REDUCTIONS = {"sum": cp.sum, "norm1": cp.norm1, "norm2": lambda e: cp.norm(e, 2),
              "norm_inf": cp.norm_inf, "sum_squares": cp.sum_squares,
              "logsumexp": cp.log_sum_exp, "max": cp.max, "min": cp.min,
              "entropy": lambda e: cp.sum(cp.entr(e))}


# parameters: signs from attributes; a psd matrix for quad_form
PARAMS = [(ir.Parameter(name="g", nonneg=True), cp.Parameter(nonneg=True)),
          (ir.Parameter(name="h", nonpos=True), cp.Parameter(nonpos=True)),
          (ir.Parameter(name="c"), cp.Parameter())]
P_IR, P_CP = ir.Parameter(3, 3, name="P", psd=True), cp.Parameter((3, 3), PSD=True)
V_IR, V_CP = ir.Parameter(3, name="v"), cp.Parameter(3)


def _pairs(depth: int):
    """(IR expression, cvxpy expression) pairs of shape [3]."""
    leaf = st.sampled_from([(X, CX), (Y, CY)])
    if depth == 0:
        return leaf
    s = _pairs(depth - 1)
    c = st.sampled_from([-2.0, 0.5, 3.0])
    return st.one_of(
        leaf,
        st.tuples(s, s).map(lambda t: (ir.add(t[0][0], t[1][0]), t[0][1] + t[1][1])),
        st.tuples(s, s).map(lambda t: (ir.sub(t[0][0], t[1][0]), t[0][1] - t[1][1])),
        st.tuples(c, s).map(lambda t: (ir.mul(t[0], t[1][0]), t[0] * t[1][1])),
        st.tuples(st.sampled_from(PARAMS), s).map(
            lambda t: (ir.mul(t[0][0], t[1][0]), cp.multiply(t[0][1], t[1][1]))),
        s.map(lambda t: (ir.mul(V_IR, t[0]), cp.multiply(V_CP, t[1]))),
        s.map(lambda t: (ir.matmul(ir.Constant(torch.tensor(M)), t[0]), M @ t[1])),
        s.map(lambda t: (ir.negate(t[0]), -t[1])),
        st.tuples(st.sampled_from(sorted(ELEMENTWISE)), s).map(
            lambda t: (ir.apply(t[0], [t[1][0]]), ELEMENTWISE[t[0]](t[1][1]))),
        st.tuples(s, s).map(lambda t: (ir.apply("max", [t[0][0], t[1][0]]),
                                       cp.maximum(t[0][1], t[1][1]))),
        st.tuples(s, s).map(lambda t: (ir.apply("min", [t[0][0], t[1][0]]),
                                       cp.minimum(t[0][1], t[1][1]))),
        st.tuples(s, st.sampled_from([2, 3, 0.5, -1])).map(
            lambda t: (ir.power(t[0][0], t[1]), cp.power(t[0][1], t[1]))),
    )


_SCALARS = st.one_of(
    st.tuples(st.sampled_from(sorted(REDUCTIONS)), _pairs(3)).map(
        lambda t: (ir.apply(t[0], [t[1][0]]), REDUCTIONS[t[0]](t[1][1]))),
    _pairs(2).map(lambda t: (ir.apply("quad_form", [t[0], P_IR]), cp.quad_form(t[1], P_CP))),
    _pairs(3).map(lambda t: (ir.apply("dot", [V_IR, t[0]]), V_CP @ t[1])),
)


def _ours(e) -> str:
    c = e.curvature
    return ("affine" if c.is_affine else "convex" if c.is_convex
            else "concave" if c.is_concave else "unknown")


def _theirs(e) -> str:
    return ("affine" if e.is_affine() else "convex" if e.is_convex()
            else "concave" if e.is_concave() else "unknown")


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_SCALARS, _pairs(4)))
def test_curvature_matches_cvxpy(pair):
    e, c = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _theirs(c)
    assert _ours(e) == theirs, ir.expr_text(e, limit=200)
