"""Fuzz: whatever the text, ``ol.check`` returns a problem or raises an ``OptError``, fast.

Three sources of inputs, each bounded so the file runs in a few seconds:

* grammar-generated: hypothesis' ``from_lark`` over the language's own grammar
  (lexically dense text: keywords glued to names, odd numbers, comments);
* statement-generated: random programs built token by token from the
  statement and expression rules, with names that are sometimes declared,
  atoms and sets with random arities, random sizes (mostly well-formed
  syntax, so the semantic checks and the IR constructors get exercised);
* mutated: valid models with characters or tokens deleted, inserted,
  duplicated or swapped.

Also the limits: deep nesting and huge inputs end in an ``OptSyntaxError``
(not ``RecursionError``) within a second or two.
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayer as ol
from optlayer import defaults

FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(autouse=True, scope="module")
def _warm():
    """Build the parser and import sympy/networkx once, outside the per-input timing."""
    ol.check("dim n = 2\nvar x[n]\nminimize sum(x)").summary()


def _check_quietly(text: str) -> None:
    """The fuzz property: a result or an OptError (rendering fine), in under a second."""
    start = time.perf_counter()
    try:
        prob = ol.check(text, filename="fuzz.opt")
    except ol.OptError as e:
        rendered = str(e)
        assert rendered.startswith("fuzz.opt")
        assert e.message
    else:
        prob.summary()
    assert time.perf_counter() - start < 1.0, text


# ---------------------------------------------------------- grammar-generated
def _lark_strategy():
    import lark
    from hypothesis.extra.lark import from_lark

    from optlayer.dsl import grammar_text

    grammar = lark.Lark(grammar_text(), parser="lalr", lexer="contextual",
                        maybe_placeholders=True)
    return from_lark(grammar, explicit={"_NL": st.sampled_from(["\n", "\n\n"]),
                                        "WS": st.sampled_from([" ", "\t"]),
                                        "COMMENT": st.just("# note")})


@settings(FAST, max_examples=20)  # from_lark draws slowly (~0.2 s per example)
@given(_lark_strategy())
def test_grammar_generated_text(text):
    _check_quietly(text)


# -------------------------------------------------------- statement-generated
NAMES = ["x", "y", "t", "p", "A", "n", "m", "r", "zz", "sum", "simplex", "to"]
ATOMS = ["sum", "mean", "dot", "quad_form", "sum_squares", "square", "abs", "norm1", "norm2",
         "norm_inf", "exp", "log", "sqrt", "logsumexp", "entropy", "kl_div", "huber",
         "logistic", "softplus", "pos", "neg", "max", "min", "trace", "diag", "nosuch"]
SETS = ["simplex", "simplex(2)", "box(0, 1)", "box(p, 2)", "nonneg", "ball1(1)", "ball2(t)",
        "ballinf(3)", "soc", "psd", "cube"]
NUMS = ["0", "1", "2", "2.5", "1e3", ".5", "3.", "-1"]


def _expr(draw, depth: int) -> str:
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(NAMES + NUMS))
    kind = draw(st.integers(0, 6))
    sub = lambda: _expr(draw, depth - 1)  # noqa: E731
    if kind == 0:
        return f"{sub()} {draw(st.sampled_from(['+', '-', '*', '/', '@']))} {sub()}"
    if kind == 1:
        return f"-{sub()}"
    if kind == 2:
        return f"{sub()} ^ {draw(st.sampled_from(NUMS + ['t']))}"
    if kind == 3:
        return f"({sub()})'"
    if kind == 4:
        items = draw(st.lists(st.sampled_from(["0", "1", "-1", "n", "n-1", ":", "1:", ":2",
                                               "0:n", "x", "1.5"]), min_size=1, max_size=2))
        return f"{draw(st.sampled_from(NAMES))}[{', '.join(items)}]"
    if kind == 5:
        args = [sub() for _ in range(draw(st.integers(0, 3)))]
        return f"{draw(st.sampled_from(ATOMS))}({', '.join(args)})"
    return f"({sub()})"


def _shape(draw) -> str:
    if draw(st.booleans()):
        return ""
    dims = draw(st.lists(st.sampled_from(["n", "m", "3", "n + 1", "2 * n", "0", "k", "1.5"]),
                         min_size=1, max_size=2))
    return f"[{', '.join(dims)}]"


@st.composite
def programs(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 9))):
        k = draw(st.integers(0, 8))
        name = draw(st.sampled_from(NAMES))
        attrs = " ".join(draw(st.lists(st.sampled_from(["nonneg", "pos", "psd", "symmetric",
                                                          "nonpos", "big"]), max_size=2)))
        if k == 0:
            lines.append(f"dim {name}" + draw(st.sampled_from(["", " = 3", " = 0", " = 2.5"])))
        elif k == 1:
            lines.append(f"param {name}{_shape(draw)} {attrs}")
        elif k == 2:
            lines.append(f"var {name}{_shape(draw)} {attrs}")
        elif k == 3:
            lines.append(f"let {name} = {_expr(draw, 2)}")
        elif k == 4:
            lines.append(f"{draw(st.sampled_from(['minimize', 'maximize']))} {_expr(draw, 3)}")
        elif k == 5:
            lines.append("subject to")
        elif k == 6:
            op = draw(st.sampled_from(["==", "<=", ">="]))
            label = draw(st.sampled_from(["", "c1: ", "c2: "]))
            lines.append(f"    {label}{_expr(draw, 2)} {op} {_expr(draw, 2)}")
        else:
            lines.append(f"    {_expr(draw, 1)} in {draw(st.sampled_from(SETS))}")
    sep = draw(st.sampled_from(["\n", "; ", "\n\n"]))
    return sep.join(lines)


@FAST
@given(programs())
def test_statement_generated_programs(text):
    _check_quietly(text)


# ------------------------------------------------------------------- mutated
VALID = [
    "dim n = 10\nparam mu[n]\nparam L[n, n]\nparam gamma nonneg\nvar w[n]\n"
    "minimize -mu @ w + gamma * sum_squares(L @ w)\nsubject to\n    budget: sum(w) == 1\n"
    "    w >= 0\n",
    "dim n\nparam y[n]\nvar x[n]\nlet r = x - y\nminimize sum_squares(r) + 0.1 * norm1(x)\n"
    "subject to\n    x in box(-1, 1)\n    x[0:2] <= 3; x[n - 1] >= -2\n",
    "param P[3, 3] psd\nvar X[3, 3]\nvar z[4]\nmaximize -quad_form(X[0, :]', P) + "
    "entropy(z[1:])\nsubject to\n    z in simplex(2)\n    X in psd\n",
]
TOKENS = ["(", ")", "[", "]", ",", ":", ";", "\n", "==", "<=", "=", "^", "'", "@", "-", "*",
          " in ", " simplex", "subject to", "minimize ", "let ", "#", "1e", "x", "\t", "\r",
          "\x0c", "é", "\u2028"]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i, min(len(text), i + 12)))
        op = draw(st.integers(0, 3))
        if op == 0:
            text = text[:i] + text[j:]
        elif op == 1:
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif op == 2:
            text = text[:i] + text[i:j] * draw(st.integers(2, 40)) + text[j:]
        else:
            text = text[:i] + text[j:] + text[i:j]
    return text


@FAST
@given(mutated())
def test_mutated_sources(text):
    _check_quietly(text)


@pytest.mark.parametrize("text", VALID, ids=["portfolio", "lasso-box", "matrix"])
def test_mutation_seeds_are_valid(text):
    ol.check(text, dims={"n": 4} if "dim n" in text else None)


# --------------------------------------------------------------------- limits
DEEP = defaults.DSL_MAX_DEPTH + 50
LIMITS = [
    ("unary-minus", "var x\nminimize " + "-" * DEEP + "x"),
    ("calls", "var x\nminimize " + "pos(" * DEEP + "x" + ")" * DEEP),
    ("parentheses-only", "var x\nminimize " + "(" * 20000 + "x" + ")" * 20000),
    ("long-sum", "var x\nminimize " + " + ".join(["x"] * DEEP)),
    ("transposes", "var x\nminimize sum(x" + "'" * DEEP + ")"),
    ("indices", "var x[3]\nminimize x" + "[0]" * DEEP),
    ("unclosed", "var x\nminimize " + "(" * 50000),
    ("too-large", "var x\nminimize x\n" + "# pad\n" * (defaults.DSL_MAX_SOURCE_CHARS // 6 + 1)),
    ("many-lines", "var x\nminimize x\nsubject to\n" + "x >= 0\n" * 2000),
]


@pytest.mark.parametrize("text", [c[1] for c in LIMITS], ids=[c[0] for c in LIMITS])
def test_limits_end_in_opt_errors_quickly(text):
    start = time.perf_counter()
    try:
        ol.check(text)
    except ol.OptError as e:
        assert not isinstance(e, RecursionError)
        assert e.span is not None
        msg = e.message
        assert ("too deeply" in msg or "too large" in msg or "expected" in msg
                or "index" in msg), msg
    assert time.perf_counter() - start < 3.0


def test_depth_limit_is_exact():
    ok = "var x\nminimize " + "-" * (defaults.DSL_MAX_DEPTH - 1) + "x"
    assert ol.parse(ok) is not None
    with pytest.raises(ol.OptSyntaxError, match="nested too deeply"):
        ol.parse("var x\nminimize " + "-" * (defaults.DSL_MAX_DEPTH + 1) + "x")
