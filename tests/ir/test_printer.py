"""The printer (IR -> ``.opt`` text) and structural equality (spans ignored).

The full round trip through the real parser lives with the parser's tests.
Here the printer is checked against the precedence ladder it documents
(``+ -`` < ``* / @`` < unary ``-`` < ``^`` < postfix ``'`` ``[...]`` < atoms):
a small precedence-climbing reader written from that ladder reads the printed
text back with the IR constructors, and the result must be structurally equal
to the original, for a table of tricky cases and for random expressions
(hypothesis).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayer as ol
import optlayer.ir as ir
from optlayer.errors import Span

# --------------------------------------------------------------- a reader for the ladder

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:e[-+]?\d+)?|\d+e[-+]?\d+|\d+)|([A-Za-z_]\w*)|(.))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        num, name, op = m.groups()
        out.append(("num", num) if num else ("name", name) if name else ("op", op))
        pos = m.end()
    return out + [("end", "")]


class _Reader:
    def __init__(self, text: str, names: dict):
        self.toks, self.i, self.names = _tokens(text), 0, names

    def peek(self, value: str) -> bool:
        return self.toks[self.i][1] == value and self.toks[self.i][0] != "num"

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise AssertionError(f"expected {value!r}, got {tok} in {self.toks}")
        self.i += 1
        return tok

    def expr(self):
        e = self.term()
        while self.peek("+") or self.peek("-"):
            op = self.take()[1]
            e = (ir.add if op == "+" else ir.sub)(e, self.term())
        return e

    def term(self):
        e = self.unary()
        while self.peek("*") or self.peek("/") or self.peek("@"):
            op = self.take()[1]
            e = {"*": ir.mul, "/": ir.div, "@": ir.matmul}[op](e, self.unary())
        return e

    def unary(self):
        if self.peek("-"):
            self.take()
            return ir.negate(self.unary())
        return self.power()

    def power(self):
        e = self.postfix()
        if self.peek("^"):
            self.take()
            if self.peek("("):
                self.take("(")
                self.take("-")
                p = -float(self.take()[1])
                self.take(")")
            else:
                p = float(self.take()[1])
            e = ir.power(e, int(p) if p.is_integer() else p)
        return e

    def postfix(self):
        e = self.primary()
        while self.peek("'") or self.peek("["):
            if self.take()[1] == "'":
                e = ir.transpose(e)
                continue
            keys = [self.key()]
            while self.peek(","):
                self.take()
                keys.append(self.key())
            self.take("]")
            e = ir.index(e, tuple(keys))
        return e

    def key(self):
        start = stop = None
        if not self.peek(":"):
            start = self.signed_int()
            if not self.peek(":"):
                return start
        self.take(":")
        if not (self.peek("]") or self.peek(",")):
            stop = self.signed_int()
        return ir.Slice(start, stop)

    def signed_int(self) -> int:
        neg = self.peek("-") and bool(self.take())
        v = int(self.take()[1])
        return -v if neg else v

    def primary(self):
        kind, value = self.take()
        if kind == "num":
            return ir.Constant(float(value) if ("." in value or "e" in value) else int(value))
        if value == "(":
            e = self.expr()
            self.take(")")
            return e
        if kind == "name" and self.peek("("):
            self.take("(")
            args = [self.expr()]
            while self.peek(","):
                self.take()
                args.append(self.expr())
            self.take(")")
            return ir.apply(value, args)
        return self.names[value]


def read(text: str, names: dict):
    r = _Reader(text, names)
    e = r.expr()
    assert r.toks[r.i][0] == "end", f"trailing tokens in {text!r}"
    return e


# ---------------------------------------------------------------------- fixtures

x = ol.Variable(3, name="x")
y = ol.Variable(3, name="y")
s = ol.Variable(name="s")
p = ol.Parameter(3, name="p")
c = ol.Parameter(name="c", pos=True)
A = ol.Parameter(3, 3, name="A")
NAMES = {leaf.name: leaf for leaf in (x, y, s, p, c, A)}

PRINTED = [
    ("sum", lambda: x + y - p, "x + y - p"),
    ("right-assoc-sub", lambda: x - (y - p), "x - (y - p)"),
    ("right-assoc-add", lambda: x + (y + p), "x + (y + p)"),
    ("product-of-sum", lambda: (x + y) * p, "(x + y) * p"),
    ("div-chain", lambda: x / c / 2, "x / c / 2"),
    ("div-right-product", lambda: x / (c * 2), "x / (c * 2)"),
    ("mixed-mul-matmul", lambda: (A @ x) * p, "(A @ x) * p"),
    ("neg-of-sum", lambda: -(x + y), "-(x + y)"),
    ("neg-literal-first", lambda: -2 * x, "(-2) * x"),
    ("neg-literal-right", lambda: x * -2, "x * (-2)"),
    ("neg-literal-sub", lambda: x - -2, "x - (-2)"),
    ("neg-param-matmul", lambda: -p @ x, "(-p) @ x"),
    ("power", lambda: x ** 2, "x ^ 2"),
    ("power-float", lambda: x ** 0.5, "x ^ 0.5"),
    ("power-negative", lambda: x ** -1, "x ^ (-1)"),
    ("power-of-power", lambda: (x ** 2) ** 3, "(x ^ 2) ^ 3"),
    ("neg-of-power", lambda: -(x ** 2), "-(x ^ 2)"),
    ("power-of-neg", lambda: (-x) ** 2, "(-x) ^ 2"),
    ("power-of-sum", lambda: (x + 1) ** 2, "(x + 1) ^ 2"),
    ("transpose", lambda: A.T @ x, "A' @ x"),
    ("transpose-of-sum", lambda: (A + A).T, "(A + A)'"),
    ("index", lambda: x[0] + A[1, 2], "x[0] + A[1, 2]"),
    ("slices", lambda: x[1:] + x[:2][0] + A[:, 0][1:3][0], "x[1:] + x[:2][0] + A[:, 0][1:3][0]"),
    ("index-of-sum", lambda: (x + y)[0], "(x + y)[0]"),
    ("atoms", lambda: ol.norm2(A @ x - p) + ol.huber(x, 0.5)[0],
     "norm2(A @ x - p) + huber(x, 0.5)[0]"),
    ("float-literals", lambda: 0.1 * x + 1e-05 * y + 2.0 * p, "0.1 * x + 1e-05 * y + 2.0 * p"),
]


@pytest.mark.parametrize(("build", "text"), [c[1:] for c in PRINTED],
                         ids=[c[0] for c in PRINTED])
def test_printed_text(build, text):
    assert ir.expr_text(build()) == text


@pytest.mark.parametrize("build", [c[1] for c in PRINTED], ids=[c[0] for c in PRINTED])
def test_printed_text_reads_back_equal(build):
    e = build()
    assert ir.equal(read(ir.expr_text(e), NAMES), e)


# ---------------------------------------------------------------- random expressions

_UNARY_SAME = ["exp", "abs", "square", "pos", "neg", "logistic", "softplus", "huber"]
_REDUCE = ["sum", "mean", "norm1", "norm2", "norm_inf", "sum_squares", "logsumexp", "max",
           "min"]


def _exprs(vector: bool, depth: int):
    """Random expressions of shape [3] (vector=True) or scalar, built by the Python API."""
    vec_leaves = st.sampled_from([x, y, p])
    scal_leaves = st.one_of(st.sampled_from([s, c]),
                            st.integers(-3, 3).map(ir.Constant),
                            st.sampled_from([0.5, -1.25, 1e-3, 2.0]).map(ir.Constant))
    leaf = vec_leaves if vector else scal_leaves
    if depth == 0:
        return leaf
    sub_v = _exprs(True, depth - 1)
    sub_s = _exprs(False, depth - 1)
    same = sub_v if vector else sub_s
    options = [
        leaf,
        st.tuples(same, st.sampled_from(["+", "-", "*"]), st.one_of(same, sub_s)).map(_binop),
        st.tuples(same, st.one_of(st.just(c), st.integers(1, 4).map(ir.Constant))).map(
            lambda t: ir.div(*t)),
        same.map(ir.negate),
        st.tuples(same, st.sampled_from([2, 3, 0.5, -1, 1.5])).map(lambda t: ir.power(*t)),
        st.tuples(st.sampled_from(_UNARY_SAME), same).map(lambda t: ir.apply(t[0], [t[1]])),
    ]
    if vector:
        options += [
            sub_v.map(ir.transpose),
            sub_v.map(lambda v: ir.matmul(A, v)),
            st.tuples(sub_v, sub_v).map(lambda t: ir.apply("max", list(t))),
            sub_v.map(lambda v: ir.index(v, ir.Slice(0, 3))),
        ]
    else:
        options += [
            st.tuples(st.sampled_from(_REDUCE), sub_v).map(lambda t: ir.apply(t[0], [t[1]])),
            st.tuples(sub_v, sub_v).map(lambda t: ir.matmul(*t)),
            st.tuples(sub_v, sub_v).map(lambda t: ir.apply("dot", list(t))),
            st.tuples(sub_v, st.integers(-3, 2)).map(lambda t: ir.index(t[0], t[1])),
        ]
    return st.one_of(*options)


def _binop(t):
    a, op, b = t
    return {"+": ir.add, "-": ir.sub, "*": ir.mul}[op](a, b)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_exprs(True, 3), _exprs(False, 3)))
def test_random_expressions_read_back_equal(e):
    text = ir.expr_text(e)
    assert ir.equal(read(text, NAMES), e), text


# --------------------------------------------------------------------- equality

def test_equality_ignores_spans():
    a = ir.add(ir.Variable(3, name="x", span=Span(1, 1, 1, 2)), 1, span=Span(1, 1, 1, 6))
    b = ir.add(ir.Variable(3, name="x"), 1)
    assert ir.equal(a, b)


@pytest.mark.parametrize(
    ("left", "right"),
    [(lambda: x + y, lambda: y + x),
     (lambda: x ** 2, lambda: x ** 3),
     (lambda: x[0], lambda: x[1]),
     (lambda: x[0:2], lambda: x[1:3]),
     (lambda: ol.Variable(3, name="x", nonneg=True), lambda: x),
     (lambda: ol.Variable(4, name="x"), lambda: x),
     (lambda: ol.Parameter(3, name="x"), lambda: x),
     (lambda: ir.Constant(1), lambda: ir.Constant(2)),
     (lambda: ol.max(x), lambda: ol.min(x)),
     (lambda: ir.let("r", x), lambda: ir.let("q", x)),
     (lambda: ir.let("r", x), lambda: x)],
    ids=["commuted", "exponent", "index", "slice", "attrs", "shape", "leaf-kind", "constant",
         "atom", "let-name", "let-vs-body"],
)
def test_structural_inequality(left, right):
    assert not ir.equal(left(), right())


def test_equal_int_and_float_constants():
    # 2 and 2.0 print differently but denote the same number
    assert ir.equal(ir.Constant(2), ir.Constant(2.0))


# ---------------------------------------------------------------------- problems

def _portfolio(span=None):
    n = ol.dim("n")
    mu = ol.Parameter(n, name="mu", span=span)
    L = ol.Parameter(n, n, name="L", span=span)
    g = ol.Parameter(name="gamma", nonneg=True, span=span)
    w = ol.Variable(n, name="w", span=span)
    risk = ir.let("risk", ol.sum_squares(L @ w), span=span)
    return ol.Problem(
        ir.minimize(-mu @ w + g * risk, span=span),
        [ir.constraint("==", ol.sum(w), 1, label="budget", span=span),
         ir.constraint(">=", w, 0, span=span),
         ir.member(w, ol.box(0, 0.5), label="caps", span=span)],
        dims={"n": 10}, params=[mu, L, g], vars=[w], lets=[risk], span=span)


def test_problem_text():
    assert _portfolio().to_opt() == (
        "dim n = 10\n"
        "param mu[n]\n"
        "param L[n, n]\n"
        "param gamma nonneg\n"
        "var w[n]\n"
        "let risk = sum_squares(L @ w)\n"
        "minimize (-mu) @ w + gamma * risk\n"
        "subject to\n"
        "    budget: sum(w) == 1\n"
        "    w >= 0\n"
        "    caps: w in box(0, 0.5)\n"
    )


def test_problem_equality_ignores_spans_not_content():
    a = _portfolio(span=Span(3, 1, 3, 4))
    b = _portfolio()
    assert a == b
    c = _portfolio()
    c.constraints[0] = c.constraints[0].labelled("total")
    assert a != c
    assert a != a.bind({"n": 3})


def test_printed_problem_reads_back_with_the_same_declarations():
    prob = _portfolio()
    lines = prob.to_opt().splitlines()
    names = {**prob.params, **prob.vars, **prob.lets}
    objective = lines[lines.index("subject to") - 1]
    assert objective.startswith("minimize ")
    assert ir.equal(read(objective[len("minimize "):], names), prob.objective.expr)
    let_line = next(ln for ln in lines if ln.startswith("let risk = "))
    assert ir.equal(read(let_line[len("let risk = "):], names), prob.lets["risk"].body)


# ------------------------------------------------------- through the real .opt parser

_HEAD = "param p[3]\nparam c pos\nparam A[3, 3]\nvar x[3]\nvar y[3]\nvar s\n"


@pytest.mark.parametrize("build", [c[1] for c in PRINTED], ids=[c[0] for c in PRINTED])
def test_printed_text_parses_back_with_the_opt_parser(build):
    e = build()
    prob = ol.parse(_HEAD + f"let e = {ir.expr_text(e)}\nminimize sum(x)\n")
    assert ir.equal(prob.lets["e"].body, e)


def test_printed_problem_parses_back_equal():
    prob = _portfolio()
    assert ol.parse(prob.to_opt()) == prob
    bound = prob.bind({"n": 4})
    assert ol.parse(bound.to_opt()) == bound
