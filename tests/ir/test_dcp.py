"""DCP: the composition rule, parameter signs, objectives and constraints, and the errors.

Rejections build expressions with a distinct span per node (``S(k)`` marks
column ``k``) and assert that the error points at the smallest offending
subexpression, with its curvature, a why and (where a rewrite exists) a hint.
"""

from __future__ import annotations

import pytest
import torch

import optlayer.ir as ir
from optlayer.errors import NonConvexError, OptTypeError, Span
from optlayer.ir import Curvature
from optlayer.ir import functions as F

CVX, CCV, AFF, CONST, UNK = (Curvature.CONVEX, Curvature.CONCAVE, Curvature.AFFINE,
                             Curvature.CONSTANT, Curvature.UNKNOWN)


def S(k: int) -> Span:
    return Span(1, k, 1, k + 1)


def leaves():
    x = ir.Variable(3, name="x")
    y = ir.Variable(3, name="y")
    A = ir.Parameter(2, 3, name="A")
    b = ir.Parameter(2, name="b")
    c = ir.Parameter(name="c")  # unknown sign
    g = ir.Parameter(name="g", nonneg=True)
    h = ir.Parameter(name="h", nonpos=True)
    q = ir.Parameter(name="q", pos=True)
    P = ir.Parameter(3, 3, name="P", psd=True)
    Q = ir.Parameter(3, 3, name="Q")  # no definiteness known
    return dict(x=x, y=y, A=A, b=b, c=c, g=g, h=h, q=q, P=P, Q=Q)


CURVATURE = [
    ("least-squares", lambda L: F.sum_squares(L["A"] @ L["x"] - L["b"]), CVX),
    ("param-x-var-affine", lambda L: L["A"] @ L["x"], AFF),
    ("unknown-sign-param-times-affine", lambda L: L["c"] * L["x"], AFF),
    ("nonneg-param-times-convex", lambda L: L["g"] * F.norm1(L["x"]), CVX),
    ("nonpos-param-times-convex", lambda L: L["h"] * F.norm1(L["x"]), CCV),
    ("unknown-sign-param-times-convex", lambda L: L["c"] * F.norm1(L["x"]), UNK),
    ("quad_form-psd-param", lambda L: F.quad_form(L["x"], L["P"]), CVX),
    ("quad_form-unknown-matrix", lambda L: F.quad_form(L["x"], L["Q"]), UNK),
    ("quad_form-psd-constant", lambda L: F.quad_form(L["x"], torch.eye(3)), CVX),
    ("quad_form-nsd-constant", lambda L: F.quad_form(L["x"], -torch.eye(3)), CCV),
    ("neg-quad_form", lambda L: -F.quad_form(L["x"], L["P"]), CCV),
    ("log-of-affine", lambda L: F.log(F.sum(L["x"])), CCV),
    ("exp-of-convex", lambda L: F.exp(F.norm2(L["x"])), CVX),
    ("sqrt-of-convex", lambda L: F.sqrt(F.sum_squares(L["x"])), UNK),
    ("square-of-nonneg-convex", lambda L: F.square(F.pos(L["x"])), CVX),
    ("square-of-unknown-sign-convex", lambda L: F.square(F.exp(L["x"]) - 2), UNK),
    ("norm1-of-abs", lambda L: F.norm1(F.abs(L["x"])), CVX),
    ("norm2-of-concave-nonneg", lambda L: F.norm2(F.sqrt(L["x"])), UNK),
    ("norm1-of-nonpos-concave", lambda L: F.norm1(-F.exp(L["x"])), CVX),
    ("max-of-convex", lambda L: F.max(F.norm1(L["x"]), F.sum_squares(L["y"])), CVX),
    ("min-of-concave", lambda L: F.min(F.log(L["x"]), F.sqrt(L["y"])), CCV),
    ("entropy", lambda L: F.entropy(L["x"]), CCV),
    ("kl_div-jointly-convex", lambda L: F.kl_div(L["x"], L["y"]), CVX),
    ("kl_div-param-reference", lambda L: F.kl_div(L["x"], ir.Parameter(3, name="z", pos=True)),
     CVX),
    ("logistic-regression", lambda L: F.sum(F.logistic(-L["c"] * (L["A"] @ L["x"]))), CVX),
    ("divide-by-pos-param", lambda L: F.norm2(L["x"]) / L["q"], CVX),
    ("var-times-var", lambda L: L["x"] * L["y"], UNK),
    ("var-matmul-var", lambda L: L["x"] @ L["y"], UNK),
    ("power-2", lambda L: F.sum(L["x"] ** 2), CVX),
    ("power-half", lambda L: F.sum(L["x"] ** 0.5), CCV),
    ("power-minus-one", lambda L: F.sum(L["x"] ** -1), CVX),
    ("constant-only", lambda L: F.sum_squares(L["b"]) + L["c"], CONST),
    ("huber-residual", lambda L: F.sum(F.huber(L["A"] @ L["x"] - L["b"], 0.5)), CVX),
    ("logsumexp", lambda L: F.logsumexp(L["A"] @ L["x"]), CVX),
    ("let-is-transparent", lambda L: F.sum(F.exp(ir.let("r", L["A"] @ L["x"]))), CVX),
    ("trace-diag", lambda L: F.trace(F.diag(L["x"])), AFF),
    ("neg-of-concave", lambda L: F.sum(F.neg(F.log(L["x"]))), CVX),
]


@pytest.mark.parametrize(("build", "want"), [c[1:] for c in CURVATURE],
                         ids=[c[0] for c in CURVATURE])
def test_curvature_by_composition(build, want):
    assert build(leaves()).curvature is want


# ---------------------------------------------------------------- accepted problems

def _accept_cases():
    def portfolio(L):
        x, g, P = L["x"], L["g"], L["P"]
        mu = ir.Parameter(3, name="mu")
        return ir.Problem(ir.minimize(-mu @ x + g * F.quad_form(x, P)),
                          [F.sum(x) == 1, x >= 0])

    def maximize_entropy(L):
        return ir.Problem(ir.maximize(F.entropy(L["x"])), [L["x"].within(F.simplex(1))])

    def convex_le_concave(L):
        return ir.Problem(ir.minimize(F.sum(L["x"])),
                          [F.norm2(L["x"]) <= F.sqrt(F.sum(L["y"])), L["y"] <= 1])

    def concave_ge_convex(L):
        return ir.Problem(ir.maximize(F.sum(F.log(L["x"]))), [F.log(L["x"]) >= F.square(L["y"])])

    def affine_eq(L):
        return ir.Problem(ir.minimize(F.norm1(L["x"])), [L["A"] @ L["x"] == L["b"]])

    def membership(L):
        return ir.Problem(ir.minimize(F.sum_squares(L["x"])),
                          [(L["A"].T @ L["b"] + L["x"]).within(F.ball2(L["g"] + 1))])

    return [portfolio, maximize_entropy, convex_le_concave, concave_ge_convex, affine_eq,
            membership]


@pytest.mark.parametrize("build", _accept_cases(), ids=lambda f: f.__name__)
def test_dcp_problems_are_accepted(build):
    prob = build(leaves())
    assert prob.is_dcp() and prob.check_dcp() is prob


# ---------------------------------------------------------------- rejections

def _x():
    return ir.Variable(3, name="x", span=S(90))


REJECT = [
    # (id, builder(x) -> problem pieces, span col of the offender, message, why words, hint words)
    ("sqrt-sum_squares",
     lambda x: (ir.minimize(ir.apply("sqrt", [ir.apply("sum_squares", [x], span=S(6))],
                                     span=S(5))), []),
     5, "cannot minimize an expression of unknown curvature",
     ["sqrt is concave and nondecreasing", "sum_squares(x) is convex"],
     ["norm2(x) is convex and equals sqrt(sum_squares(x))"]),
    ("log-sum-exp",
     lambda x: (ir.minimize(ir.apply("log", [ir.apply(
         "sum", [ir.apply("exp", [x], span=S(7))], span=S(6))], span=S(5))), []),
     5, "unknown curvature", ["log is concave"], ["logsumexp(x)"]),
    ("maximize-convex",
     lambda x: (ir.maximize(ir.add(ir.apply("sum", [x], span=S(3)),
                                   ir.apply("sum_squares", [x], span=S(9)), span=S(7))), []),
     9, "cannot maximize an expression of convex curvature",
     ["sum_squares(x) is convex, but concave is needed"], []),
    ("minimize-concave-through-negate",
     lambda x: (ir.minimize(ir.negate(ir.apply("norm2", [x], span=S(4)), span=S(3))), []),
     4, "cannot minimize an expression of concave curvature",
     ["norm2(x) is convex, but concave is needed"], []),
    ("var-times-var",
     lambda x: (ir.minimize(ir.apply("sum", [ir.mul(x, ir.Variable(3, name="y"), span=S(8))],
                                     span=S(4))), []),
     8, "unknown curvature", ["both factors", "x is affine", "y is affine"],
     ["multiply a variable expression only by parameters"]),
    ("unknown-sign-param",
     lambda x: (ir.minimize(ir.mul(ir.Parameter(name="c", span=S(2)),
                                   ir.apply("norm1", [x], span=S(6)), span=S(4))), []),
     4, "unknown curvature", ["norm1(x) is convex"], ["sign of c is unknown", "nonneg"]),
    ("quad_form-not-psd",
     lambda x: (ir.minimize(ir.apply("quad_form", [x, ir.Parameter(3, 3, name="Q")],
                                     span=S(11))), []),
     11, "unknown curvature", ["not known to be positive semidefinite"], ["psd"]),
    ("square-of-unknown-sign",
     lambda x: (ir.minimize(ir.apply("sum", [ir.apply("square", [ir.sub(
         ir.apply("exp", [x], span=S(20)), 2, span=S(19))], span=S(13))], span=S(9))), []),
     13, "unknown curvature", ["square is convex and nonmonotone", "exp(x) - 2 is convex"], []),
    ("nonaffine-equality",
     lambda x: (ir.minimize(ir.apply("sum", [x])),
                [ir.constraint("==", ir.apply("sum_squares", [x], span=S(14)), 1, span=S(13))]),
     14, "affine == affine", ["sum_squares(x) is convex, but affine is needed"], []),
    ("convex-on-right-of-le",
     lambda x: (ir.minimize(ir.apply("sum", [x])),
                [ir.constraint("<=", 1, ir.apply("norm2", [x], span=S(22)), span=S(20))]),
     22, "convex <= concave", ["norm2(x) is convex, but concave is needed"], []),
    ("concave-on-left-of-le",
     lambda x: (ir.minimize(ir.apply("sum", [x])),
                [ir.constraint("<=", ir.apply("log", [x], span=S(30)), 0, span=S(29))]),
     30, "convex <= concave", ["log(x) is concave, but convex is needed"], []),
    ("ge-wrong-way",
     lambda x: (ir.minimize(ir.apply("sum", [x])),
                [ir.constraint(">=", ir.apply("norm1", [x], span=S(33)), 1, span=S(32))]),
     33, "concave >= convex", ["norm1(x) is convex, but concave is needed"], []),
    ("nonaffine-member",
     lambda x: (ir.minimize(ir.apply("sum", [x])),
                [ir.member(ir.apply("exp", [x], span=S(41)), ir.make_set("simplex"),
                           span=S(40))]),
     41, "must be affine", ["exp(x) is convex, but affine is needed"], []),
    ("inside-a-let",
     lambda x: (ir.minimize(ir.apply("sum", [ir.let("r", ir.apply(
         "sqrt", [ir.apply("sum_squares", [x])], span=S(50)), span=S(48))])), []),
     50, "unknown curvature", ["sqrt is concave"], ["norm2(x)"]),
]


@pytest.mark.parametrize(("build", "col", "message", "why", "hint"),
                         [c[1:] for c in REJECT], ids=[c[0] for c in REJECT])
def test_dcp_error_names_smallest_offender(build, col, message, why, hint):
    obj, cons = build(_x())
    with pytest.raises(NonConvexError) as info:
        ir.Problem(obj, cons)
    err = info.value
    assert err.span == S(col), (err.span, str(err))
    assert message in err.message
    for w in why:
        assert w in (err.why or ""), (w, err.why)
    for w in hint:
        assert w in (err.hint or ""), (w, err.hint)
    if not hint:
        assert err.hint is None or isinstance(err.hint, str)


def test_check_false_defers_dcp():
    x = _x()
    prob = ir.Problem(ir.maximize(F.sum_squares(x)), check=False)
    assert not prob.is_dcp()
    with pytest.raises(NonConvexError):
        prob.check_dcp()


def test_error_renders_like_a_compiler():
    src = "\n" * 8 + "minimize  -mu @ w + gamma * sqrt(sum_squares(L @ w))"
    n = ir.dim_symbol("n")
    mu, L = ir.Parameter(n, name="mu"), ir.Parameter(n, n, name="L")
    g = ir.Parameter(name="gamma", nonneg=True)
    w = ir.Variable(n, name="w")
    bad = ir.apply("sqrt", [F.sum_squares(L @ w)], span=Span(9, 29, 9, 53))
    with pytest.raises(NonConvexError) as info:
        ir.Problem(ir.minimize(-mu @ w + g * bad))
    text = str(info.value.with_source(src, "portfolio.opt"))
    assert text.splitlines()[0] == ("portfolio.opt:9:29: cannot minimize an expression of "
                                    "unknown curvature")
    assert "    9 | minimize  -mu @ w + gamma * sqrt(sum_squares(L @ w))" in text
    assert "      |                             " + "^" * 24 in text
    assert "hint: norm2(L @ w) is convex and equals sqrt(sum_squares(L @ w))." in text


@pytest.mark.parametrize(
    ("build", "words"),
    [(lambda x: x / ir.Variable(name="t"), "must not depend on variables"),
     (lambda x: x / ir.Parameter(name="c"), "not known to be positive"),
     (lambda x: x / 0, "division by zero"),
     (lambda x: F.quad_form(x, ir.Variable(3, 3, name="M")), "must not depend on variables"),
     (lambda x: F.huber(x, ir.Variable(name="t")), "must not depend on variables"),
     (lambda x: x.within(F.ball2(ir.Variable(name="r"))), "depends on variables")],
    ids=["div-by-var", "div-by-unsigned-param", "div-by-zero", "quad_form-var-matrix",
         "huber-var-threshold", "set-radius-var"],
)
def test_constant_only_arguments(build, words):
    with pytest.raises(OptTypeError, match=words):
        build(_x())
