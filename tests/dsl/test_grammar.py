"""Grammar coverage: every construct of DESIGN.md section 3 parses to the IR it means.

Expressions are compared with the IR the Python expression API builds
(``optlayer.ir.equal``, spans ignored); precedence is checked by comparing
unparenthesised text with its explicitly parenthesised reading.
"""

from pathlib import Path

import pytest

import optlayer as ol
from optlayer import ir
from optlayer.dsl import ast, get_parser, grammar_text, parse_program, syntax

ROOT = Path(__file__).resolve().parents[2]

DECLS = """dim n = 4
dim m
param a
param b
param c pos
param p[n]
param A[m, n]
param P[n, n] psd
var x[n]
var y[n]
var t
var X[n, n]
"""


def _obj(text: str):
    """The objective expression of DECLS + ``minimize text`` (DCP not checked)."""
    return ol.parse(DECLS + f"minimize {text}\n").objective.expr


def _leaves():
    prob = ol.parse(DECLS + "minimize t\n")
    return {**prob.params, **prob.vars}


# ----------------------------------------------------------------- the grammar
def test_grammar_is_lalr_without_conflicts():
    from lark.common import ParserConf
    from lark.parsers.lalr_analysis import LALR_Analyzer

    parser = get_parser()
    analyzer = LALR_Analyzer(ParserConf(parser.rules, {}, ["start"]), strict=True)
    analyzer.compute_lalr()  # raises GrammarError on a shift/reduce conflict


def test_grammar_file_is_the_top_level_one():
    assert grammar_text() == (ROOT / "grammar" / "optlayer.lark").read_text(encoding="utf-8")


def test_grammar_falls_back_to_the_installed_resource(monkeypatch):
    calls = []

    def fake_files(package):
        calls.append(package)
        return ROOT / "grammar"

    monkeypatch.setattr(syntax, "_checkout_grammar", lambda: ROOT / "no-such-dir" / "x.lark")
    monkeypatch.setattr("importlib.resources.files", fake_files)
    assert grammar_text().startswith("// The grammar of the .opt modeling language")
    assert calls == ["optlayer.grammar"]


def test_parser_is_built_once():
    assert get_parser() is get_parser()


def test_pyproject_ships_the_grammar_as_a_resource_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"optlayer.grammar" = "grammar"' in text
    assert '"optlayer.grammar" = ["*.lark"]' in text


# --------------------------------------------------------------- declarations
def test_dims_with_and_without_defaults_in_order():
    prob = ol.parse("dim n = 10\ndim m\ndim k, l = 3\nvar x[n, m]\nvar z[k, l]\n"
                    "minimize sum(x) + sum(z)")
    assert prob.dims == {"n": 10, "m": None, "k": None, "l": 3}


@pytest.mark.parametrize("text, expected", [
    ("n + 1", lambda n: ir.dim_add(n, 1)),
    ("2 * n", lambda n: ir.dim_mul(2, n)),
    ("n - 1 + 1", lambda n: n),
    ("(n + 1) * 2", lambda n: ir.dim_mul(ir.dim_add(n, 1), 2)),
    ("3", lambda n: 3),
], ids=["plus-one", "times-two", "simplified", "parenthesised", "literal"])
def test_shape_arithmetic(text, expected):
    prob = ol.parse(f"dim n\nvar x[{text}]\nminimize sum(x)")
    n = ir.dim_symbol("n")
    assert ir.shape_equal(prob.vars["x"].shape, (expected(n),))


@pytest.mark.parametrize("decl, kind, shape, attrs", [
    ("param g", "param", (), ()),
    ("param g nonneg", "param", (), ("nonneg",)),
    ("param g[3] nonpos", "param", (3,), ("nonpos",)),
    ("param g pos", "param", (), ("pos",)),
    ("param g[3, 3] symmetric", "param", (3, 3), ("symmetric",)),
    ("param g[3, 3] psd symmetric", "param", (3, 3), ("symmetric", "psd")),
    ("var g", "var", (), ()),
    ("var g[2] nonneg", "var", (2,), ("nonneg",)),
    ("var g[2, 2] psd", "var", (2, 2), ("psd",)),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_leaf_declarations(decl, kind, shape, attrs):
    prob = ol.parse(f"{decl}\nvar zz\nminimize zz")
    leaf = (prob.params if kind == "param" else prob.vars)["g"]
    assert leaf.shape == shape and leaf.attrs == attrs and leaf.kind == kind


def test_let_is_a_shared_named_node():
    prob = ol.parse("var x[3]\nlet r = x - 1\nminimize sum_squares(r) + sum(r)")
    r = prob.lets["r"]
    assert isinstance(r, ir.Let) and r.name == "r"
    terms = prob.objective.expr.args
    assert terms[0].args[0] is r and terms[1].args[0] is r


def test_lets_may_come_in_any_order():
    prob = ol.parse("var x[3]\nlet b = a + 1\nlet a = 2 * x\nminimize sum(b)")
    assert list(prob.lets) == ["b", "a"]
    assert prob.lets["b"].body.args[0] is prob.lets["a"]


@pytest.mark.parametrize("sense", ["minimize", "maximize"])
def test_objective_sense(sense):
    prob = ol.parse(f"var x\n{sense} x")
    assert prob.objective.sense == sense


# ---------------------------------------------------------------- constraints
@pytest.mark.parametrize("op", ["==", "<=", ">="])
def test_comparisons(op):
    prob = ol.parse(f"var x[3]\nminimize sum(x)\nsubject to\n    x {op} 1")
    (c,) = prob.constraints
    assert c.op == op and c.label is None


def test_labels_and_separators():
    prob = ol.parse("var x[3]; minimize sum(x); subject to; budget: sum(x) == 1; "
                    "lo: x >= 0\n    x <= 2   # trailing comment\n")
    assert [c.label for c in prob.constraints] == ["budget", "lo", None]


SETS = [
    ("simplex", ol.simplex()),
    ("simplex(2)", ol.simplex(2)),
    ("box(0, 1)", ol.box(0, 1)),
    ("box(-1, p)", None),
    ("nonneg", ol.nonneg),
    ("ball1(2)", ol.ball1(2)),
    ("ball2(0.5)", ol.ball2(0.5)),
    ("ballinf(3)", ol.ballinf(3)),
]


@pytest.mark.parametrize("text, expected", SETS, ids=[s[0] for s in SETS])
def test_vector_sets(text, expected):
    prob = ol.parse(f"dim n = 4\nparam p[n]\nvar x[n]\nminimize sum(x)\nsubject to\n"
                    f"    s: x in {text}")
    (c,) = prob.constraints
    assert isinstance(c, ir.Membership) and c.label == "s"
    x = prob.vars["x"]
    if expected is None:
        expected = ol.box(-1, prob.params["p"])
    assert ir.constraint_equal(c, ir.member(x, expected, label="s"))


@pytest.mark.parametrize("name, decl", [("soc", "var x[4]"), ("psd", "var x[3, 3]")])
def test_cone_sets(name, decl):
    prob = ol.parse(f"{decl}\nminimize sum(x)\nsubject to\n    x in {name}")
    assert prob.constraints[0].set.name == name


def test_membership_of_an_expression():
    prob = ol.parse("var x[3]\nminimize sum(x)\nsubject to\n    2 * x - 1 in nonneg")
    x = prob.vars["x"]
    assert ir.equal(prob.constraints[0].expr, 2 * x - 1)


# ---------------------------------------------------------------- expressions
def _e(fn):
    return fn(_leaves())


EXPRESSIONS = [
    ("add", "sum(x + y)", lambda v: ol.sum(v["x"] + v["y"])),
    ("sub", "sum(x - y)", lambda v: ol.sum(v["x"] - v["y"])),
    ("mul", "sum(a * x)", lambda v: ol.sum(v["a"] * v["x"])),
    ("div", "sum(x / c)", lambda v: ol.sum(v["x"] / v["c"])),
    ("div-number", "sum(x / 2)", lambda v: ol.sum(v["x"] / 2)),
    ("matmul", "sum(A @ x)", lambda v: ol.sum(v["A"] @ v["x"])),
    ("vector-dot", "p @ x", lambda v: v["p"] @ v["x"]),
    ("negate", "-t", lambda v: -v["t"]),
    ("negate-number", "t + -2", lambda v: v["t"] + (-2)),
    ("power", "t ^ 2", lambda v: v["t"] ** 2),
    ("power-negative", "c ^ -1", lambda v: v["c"] ** -1),
    ("power-float", "c ^ 0.5", lambda v: v["c"] ** 0.5),
    ("transpose", "sum(X')", lambda v: ol.sum(v["X"].T)),
    ("index", "x[0]", lambda v: v["x"][0]),
    ("index-negative", "x[-1]", lambda v: v["x"][-1]),
    ("index-dim", "x[n - 1]", lambda v: v["x"][ir.dim_sub(ir.dim_symbol("n"), 1)]),
    ("index-2d", "X[0, 1]", lambda v: v["X"][0, 1]),
    ("slice", "sum(x[1:3])", lambda v: ol.sum(v["x"][1:3])),
    ("slice-open-start", "sum(x[:2])", lambda v: ol.sum(v["x"][:2])),
    ("slice-open-end", "sum(x[1:])", lambda v: ol.sum(v["x"][1:])),
    ("slice-row", "sum(X[0, :])", lambda v: ol.sum(v["X"][0, :])),
    ("float", "2.5 * t", lambda v: 2.5 * v["t"]),
    ("exponent-float", "1e-3 * t", lambda v: 0.001 * v["t"]),
    ("parentheses", "(t + 1) * 2", lambda v: (v["t"] + 1) * 2),
    ("call-two-args", "quad_form(x, P)", lambda v: ol.quad_form(v["x"], v["P"])),
    ("nested-calls", "norm2(pos(x - p))", lambda v: ol.norm2(ol.pos(v["x"] - v["p"]))),
]


@pytest.mark.parametrize("text, build", [c[1:] for c in EXPRESSIONS],
                         ids=[c[0] for c in EXPRESSIONS])
def test_expression_constructs(text, build):
    assert ir.equal(_obj(text), _e(build))


PRECEDENCE = [
    ("mul-over-add", "a + b * t", "a + (b * t)"),
    ("left-assoc-sub", "a - b - t", "(a - b) - t"),
    ("left-assoc-div", "t / c / c", "(t / c) / c"),
    ("matmul-with-mul", "a * p @ x", "(a * p) @ x"),
    ("unary-below-mul", "-a * t", "(-a) * t"),
    ("power-over-unary", "-t ^ 2", "-(t ^ 2)"),
    ("transpose-over-power", "sum(X' @ x)", "sum((X') @ x)"),
    ("index-over-unary", "-x[0]", "-(x[0])"),
    ("postfix-chain", "sum(X'[0, :])", "sum((X')[0, :])"),
]


@pytest.mark.parametrize("text, explicit", [c[1:] for c in PRECEDENCE],
                         ids=[c[0] for c in PRECEDENCE])
def test_precedence_ladder(text, explicit):
    assert ir.equal(_obj(text), _obj(explicit))


def test_power_is_right_associative():
    prog = parse_program("minimize c ^ 2 ^ 3")
    e = prog.statements[0].expr
    assert isinstance(e, ast.Power) and isinstance(e.exponent, ast.Power)
    with pytest.raises(ol.OptTypeError, match="exponent of \\^ must be a number") as info:
        _obj("c ^ 2 ^ 3")
    assert info.value.column == 14


def test_precedence_is_not_trivially_equal():
    assert not ir.equal(_obj("a + b * t"), _obj("(a + b) * t"))


def _atom_call(atom: ir.Atom):
    if atom.name in ("trace", "diag"):
        return f"sum({atom.name}(X))", lambda v: ol.sum(ir.apply(atom.name, [v["X"]]))
    if atom.name == "quad_form":
        return "quad_form(x, P)", lambda v: ir.apply("quad_form", [v["x"], v["P"]])
    k = atom.arity[0]
    args = ", ".join(["x", "y"][:k])
    return (f"sum({atom.name}({args}))",
            lambda v: ol.sum(ir.apply(atom.name, [v["x"], v["y"]][:k])))


ATOMS = [a for a in ir.ATOMS.values() if not a.is_operator]


@pytest.mark.parametrize("atom", ATOMS, ids=[a.name for a in ATOMS])
def test_every_atom_is_callable(atom):
    text, build = _atom_call(atom)
    assert ir.equal(_obj(text), _e(build))


def test_atom_table_covers_design():
    names = {a.name for a in ATOMS}
    design = ("sum mean dot quad_form sum_squares square abs norm1 norm2 norm_inf exp log sqrt "
              "logsumexp entropy kl_div huber logistic softplus pos neg max min trace diag")
    assert set(design.split()) <= names


# ------------------------------------------------------------ lexical details
def test_newlines_inside_brackets_continue_the_statement():
    prob = ol.parse("var x[3]\nminimize sum(\n    x\n    + 1\n)\nsubject to\n  x[\n0] >= 0")
    assert len(prob.constraints) == 1


def test_comments_blank_lines_and_crlf():
    a = ol.parse("# head\r\n\r\nvar x  # the variable\r\n\r\n\r\nminimize x # end\r\n")
    b = ol.parse("var x\nminimize x")
    assert a == b


def test_spans_point_at_source_text():
    prog = parse_program("var x[3]\nminimize  sum(x) + 1\n")
    obj = prog.statements[1]
    assert isinstance(obj, ast.ObjectiveStmt)
    assert (obj.expr.span.line, obj.expr.span.column, obj.expr.span.end_column) == (2, 11, 21)
    call = obj.expr.left
    assert isinstance(call, ast.Call) and call.name_span.end_column == 14


def test_keywords_are_not_names_but_prefixes_are():
    prob = ol.parse("var dimension\nvar into\nminimize dimension + into")
    assert set(prob.vars) == {"dimension", "into"}


def test_integers_and_floats_stay_distinct():
    e = _obj("t + 2")
    assert isinstance(e.args[1].value, int)
    e = _obj("t + 2.0")
    assert isinstance(e.args[1].value, float)


def test_huge_number_literal_is_an_error_not_a_crash():
    with pytest.raises(ol.OptError):
        ol.parse("var t\nminimize t * 1" + "0" * 400)
