"""Round trip: random problems built with the Python API -> ``.opt`` text -> parse -> equal IR.

Problems are drawn by hypothesis from a small declaration set (symbolic dims
with and without defaults, parameters with attributes, vector, scalar and
matrix variables) and random expression trees over the operators and atoms
that keep shapes consistent. The property is ``parse(p.to_opt()) == p`` and
that printing the parsed problem gives the same text again. DCP is not part
of the property (``parse`` does not check it).
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayer as ol
from optlayer import ir

NUMBERS = st.sampled_from([0, 1, 2, 3, 10, 0.5, 2.25, 1e-3, 1.5e6, 7.0])


class Model:
    """The declarations every drawn problem may use (fresh nodes per example)."""

    def __init__(self, default: int | None, attrs: tuple[str, ...]):
        self.n = ol.dim("n")
        self.dims = {"n": default}
        self.a = ol.Parameter(name="a", attrs=attrs)
        self.c = ol.Parameter(name="c", pos=True)
        self.p = ol.Parameter(self.n, name="p")
        self.A = ol.Parameter(self.n, self.n, name="A")
        self.P = ol.Parameter(self.n, self.n, name="P", psd=True)
        self.x = ol.Variable(self.n, name="x")
        self.y = ol.Variable(self.n + 1, name="y", nonneg=True)
        self.t = ol.Variable(name="t")
        self.X = ol.Variable(self.n, self.n, name="X")


def _vector(draw, m: Model, depth: int):
    """An expression of shape [n]."""
    leaves = [lambda: m.x, lambda: m.p, lambda: m.y[1:], lambda: m.y[: m.n],
              lambda: m.X[0, :], lambda: m.X[:, -1]]
    if depth <= 0:
        return draw(st.sampled_from(leaves))()
    kind = draw(st.sampled_from(["leaf", "add", "sub", "neg", "scale", "div", "matmul",
                                 "matmul_t", "atom", "power", "max2"]))
    sub = lambda: _vector(draw, m, depth - 1)  # noqa: E731
    if kind == "leaf":
        return draw(st.sampled_from(leaves))()
    if kind == "add":
        return sub() + sub()
    if kind == "sub":
        return sub() - sub()
    if kind == "neg":
        return -sub()
    if kind == "scale":
        k = draw(st.sampled_from(["num", "a", "scalar"]))
        f = draw(NUMBERS) if k == "num" else m.a if k == "a" else _scalar(draw, m, depth - 1)
        return f * sub() if draw(st.booleans()) else sub() * f
    if kind == "div":
        return sub() / draw(st.sampled_from([m.c, 2, 0.5, m.c ** 2]))
    if kind == "matmul":
        return draw(st.sampled_from([m.A, m.P])) @ sub()
    if kind == "matmul_t":
        return m.A.T @ sub()
    if kind == "atom":
        name = draw(st.sampled_from(["square", "abs", "exp", "pos", "neg", "sqrt", "log",
                                     "logistic", "softplus", "huber"]))
        return ir.apply(name, [sub()])
    if kind == "power":
        return sub() ** draw(st.sampled_from([2, 3, 0.5, -1, 1.5]))
    return ol.max(sub(), sub())


def _scalar(draw, m: Model, depth: int):
    """A scalar expression."""
    leaves = [lambda: m.t, lambda: m.a, lambda: m.x[0], lambda: m.x[m.n - 1],
              lambda: m.X[1, 0], lambda: ir.Constant(draw(NUMBERS))]
    if depth <= 0:
        return draw(st.sampled_from(leaves))()
    kind = draw(st.sampled_from(["leaf", "reduce", "add", "sub", "neg", "mul", "dot",
                                 "quad", "trace", "power"]))
    if kind == "leaf":
        return draw(st.sampled_from(leaves))()
    if kind == "reduce":
        name = draw(st.sampled_from(["sum", "mean", "sum_squares", "norm1", "norm2",
                                     "norm_inf", "logsumexp", "max", "min", "entropy"]))
        return ir.apply(name, [_vector(draw, m, depth - 1)])
    if kind == "add":
        return _scalar(draw, m, depth - 1) + _scalar(draw, m, depth - 1)
    if kind == "sub":
        return _scalar(draw, m, depth - 1) - _scalar(draw, m, depth - 1)
    if kind == "neg":
        return -_scalar(draw, m, depth - 1)
    if kind == "mul":
        return _scalar(draw, m, depth - 1) * _scalar(draw, m, depth - 1)
    if kind == "dot":
        return ol.dot(_vector(draw, m, depth - 1), _vector(draw, m, depth - 1))
    if kind == "quad":
        return ol.quad_form(_vector(draw, m, depth - 1), m.P)
    if kind == "trace":
        return ol.trace(m.X + m.A)
    return _scalar(draw, m, depth - 1) ** draw(st.sampled_from([2, 0.5, -2]))


SETS = ["simplex", "simplex(3)", "nonneg", "ball1(2)", "ball2(c)", "ballinf(0.5)", "box"]


@st.composite
def problems(draw):
    m = Model(draw(st.sampled_from([None, 3, 5])),
              draw(st.sampled_from([(), ("nonneg",), ("pos",), ("nonpos",)])))
    depth = draw(st.integers(0, 3))
    obj = _scalar(draw, m, depth)
    objective = ol.minimize(obj) if draw(st.booleans()) else ol.maximize(obj)
    lets = []
    if draw(st.booleans()):
        r = ol.let("r", _vector(draw, m, 1))
        lets.append(r)
        objective = ol.minimize(ol.sum_squares(r) + obj)
    cons = []
    for i in range(draw(st.integers(0, 4))):
        k = draw(st.sampled_from(["cmp_vec", "cmp_scalar", "member"]))
        label = f"c{i}" if draw(st.booleans()) else None
        if k == "cmp_vec":
            op = draw(st.sampled_from(["==", "<=", ">="]))
            c = ir.constraint(op, _vector(draw, m, depth - 1), _vector(draw, m, 0), label=label)
        elif k == "cmp_scalar":
            op = draw(st.sampled_from(["==", "<=", ">="]))
            c = ir.constraint(op, _scalar(draw, m, depth - 1), draw(NUMBERS), label=label)
        else:
            s = draw(st.sampled_from(SETS))
            set_ = {"simplex": ol.simplex(), "simplex(3)": ol.simplex(3), "nonneg": ol.nonneg,
                    "ball1(2)": ol.ball1(2), "ball2(c)": ol.ball2(m.c),
                    "ballinf(0.5)": ol.ballinf(0.5), "box": ol.box(-m.p, 2)}[s]
            members = [m.x, m.x - m.p] if s == "box" else [m.x, m.y, m.x - m.p]
            c = ir.member(draw(st.sampled_from(members)), set_, label=label)
        cons.append(c)
    params = [m.a, m.c, m.p, m.A, m.P]
    vars_ = [m.x, m.y, m.t, m.X]
    return ol.Problem(objective, cons, dims=m.dims, params=params, vars=vars_, lets=lets,
                      check=False)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problems())
def test_print_parse_round_trip(prob):
    text = prob.to_opt()
    back = ol.parse(text, filename="roundtrip.opt")
    assert back == prob, text
    assert back.to_opt() == text


def test_round_trip_detects_a_difference():
    # the property's equality is not vacuous: a changed constant is seen
    x = ol.Variable(3, name="x")
    prob = ol.Problem(ol.minimize(ol.sum_squares(x - 1)), check=False)
    other = ol.parse(prob.to_opt().replace("- 1", "- 2"))
    assert other != prob
    assert ol.parse(prob.to_opt()) == prob


@pytest.mark.parametrize("text", [
    "dim n = 3\nparam y[n]\nvar x[n]\nminimize sum_squares(x - y)\nsubject to\n    sum(x) == 1\n"
    "    x >= 0\n",
    "param a nonneg\nvar t\nmaximize -(a * t ^ 2) + 2.5 * t\n",
    "dim n\nvar X[n, n] psd\nminimize trace(X)\nsubject to\n    X[0, 0] == 1\n",
], ids=["portfolio-like", "scalar", "matrix"])
def test_text_round_trip(text):
    assert ol.parse(text).to_opt() == text
