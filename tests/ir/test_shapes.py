"""Shapes: symbolic dims (sympy, built from ints and Symbols only), shape rules, binding."""

from __future__ import annotations

import pytest
import torch

import optlayer.ir as ir
from optlayer.errors import BindingError, OptTypeError, Span
from optlayer.ir import functions as F
from optlayer.ir.shapes import as_dim, format_dim, format_shape, subs_shape

n = ir.dim_symbol("n")
m = ir.dim_symbol("m")


# ------------------------------------------------------------------- dimensions

@pytest.mark.parametrize(
    ("built", "text"),
    [
        (ir.dim_add(n, 1), "n + 1"),
        (ir.dim_mul(2, n), "2 * n"),
        (ir.dim_add(n, n), "2 * n"),
        (ir.dim_sub(ir.dim_add(n, 3), 3), "n"),
        (ir.dim_mul(n, m), "m * n"),
        (ir.dim_sub(ir.dim_mul(2, n), 1), "2 * n - 1"),
        (ir.dim_add(ir.dim_mul(n, ir.dim_add(m, 1)), 0), "m * n + n"),
        (ir.dim_add(2, 3), "5"),
    ],
    ids=["n+1", "2n", "n+n", "n+3-3", "nm", "2n-1", "n(m+1)", "ints"],
)
def test_dim_arithmetic_is_simplified(built, text):
    assert format_dim(built) == text


def test_int_dims_stay_python_ints():
    assert ir.dim_add(2, 3) == 5 and type(ir.dim_add(2, 3)) is int
    assert type(ir.dim_sub(ir.dim_add(n, 2), n)) is int


def test_dims_compare_symbolically():
    assert ir.dim_equal(ir.dim_add(n, n), ir.dim_mul(2, n))
    assert not ir.dim_equal(n, m)  # may differ for some binding: not equal
    assert ir.shape_equal((n, ir.dim_add(n, 1)), (n, ir.dim_add(1, n)))
    assert not ir.shape_equal((n,), (n, 1))


def test_same_named_dims_are_the_same_symbol():
    assert ir.dim_equal(ir.dim_symbol("k"), ir.dim_symbol("k"))


@pytest.mark.parametrize("bad", ["n", "n + 1", "__import__('os')", 1.5, True, None],
                         ids=["name", "expr-text", "code", "float", "bool", "none"])
def test_text_is_never_turned_into_a_dim(bad):
    # strings are refused outright: source text is never sympified
    with pytest.raises(TypeError):
        as_dim(bad)


@pytest.mark.parametrize("bad", ["n+1", "1n", "", "os.system", "sum", "simplex", "param"],
                         ids=["expr", "digit", "empty", "dotted", "atom", "set", "keyword"])
def test_dim_symbol_needs_a_free_identifier(bad):
    with pytest.raises(OptTypeError):
        ir.dim_symbol(bad)


def test_subs_shape_binds_dims():
    assert subs_shape((n, ir.dim_add(n, 1), ir.dim_mul(2, m)), {"n": 3, "m": 5}) == (3, 4, 10)
    assert format_shape(subs_shape((n, m), {"n": 3})) == "[3, m]"


# ------------------------------------------------------------------ shape rules

def _v(*shape, name="x"):
    return ir.Variable(*shape, name=name)


def _p(*shape, name="A", **kw):
    return ir.Parameter(*shape, name=name, **kw)


SHAPE_OK = [
    ("sum", lambda: F.sum(_v(n, m)), ()),
    ("mean", lambda: F.mean(_v(n)), ()),
    ("dot", lambda: F.dot(_p(n), _v(n)), ()),
    ("quad_form", lambda: F.quad_form(_v(n), _p(n, n, psd=True)), ()),
    ("sum_squares", lambda: F.sum_squares(_v(n, 2)), ()),
    ("square", lambda: F.square(_v(n, 2)), (n, 2)),
    ("abs", lambda: F.abs(_v(n)), (n,)),
    ("norm1", lambda: F.norm1(_v(n)), ()),
    ("norm2", lambda: F.norm2(_v(n)), ()),
    ("norm_inf", lambda: F.norm_inf(_v(n)), ()),
    ("exp", lambda: F.exp(_v(n)), (n,)),
    ("log", lambda: F.log(_v(n)), (n,)),
    ("sqrt", lambda: F.sqrt(_v(n)), (n,)),
    ("logsumexp", lambda: F.logsumexp(_v(n)), ()),
    ("entropy", lambda: F.entropy(_v(n)), ()),
    ("kl_div", lambda: F.kl_div(_v(n), _p(n)), ()),
    ("huber", lambda: F.huber(_v(n)), (n,)),
    ("huber-M", lambda: F.huber(_v(n), 2.0), (n,)),
    ("logistic", lambda: F.logistic(_v(n)), (n,)),
    ("softplus", lambda: F.softplus(_v(n)), (n,)),
    ("pos", lambda: F.pos(_v(n)), (n,)),
    ("neg", lambda: F.neg(_v(n)), (n,)),
    ("max-reduce", lambda: F.max(_v(n)), ()),
    ("max-pair", lambda: F.max(_v(n), 0), (n,)),
    ("min-pair", lambda: F.min(_v(n), _p(n)), (n,)),
    ("trace", lambda: F.trace(_v(n, n)), ()),
    ("diag-vec", lambda: F.diag(_v(n)), (n, n)),
    ("diag-mat", lambda: F.diag(_v(n, n)), (n,)),
    ("add-scalar", lambda: _v(n) + 1, (n,)),
    ("sub", lambda: _v(n) - _p(n), (n,)),
    ("mul-scalar-param", lambda: _p(name="g") * _v(n, m), (n, m)),
    ("mul-elementwise", lambda: _p(n) * _v(n), (n,)),
    ("div", lambda: _v(n) / 2, (n,)),
    ("matmul-mv", lambda: _p(m, n) @ _v(n), (m,)),
    ("matmul-vm", lambda: _v(m) @ _p(m, n), (n,)),
    ("matmul-mm", lambda: _p(m, n) @ _v(n, 3), (m, 3)),
    ("matmul-vv", lambda: _p(n) @ _v(n), ()),
    ("matmul-symbolic-inner", lambda: _p(m, ir.dim_mul(2, n)) @ _v(ir.dim_add(n, n)), (m,)),
    ("power", lambda: _v(n) ** 2, (n,)),
    ("transpose", lambda: _v(n, m).T, (m, n)),
    ("transpose-vector", lambda: _v(n).T, (n,)),
    ("index-int", lambda: _v(n)[0], ()),
    ("index-slice", lambda: _v(n)[1:3], (2,)),
    ("index-open", lambda: _v(n)[1:], (ir.dim_sub(n, 1),)),
    ("index-symbolic", lambda: _v(ir.dim_add(n, 1))[1:], (n,)),
    ("index-row", lambda: _v(n, m)[0], (m,)),
    ("index-col", lambda: _v(n, m)[:, 1], (n,)),
    ("index-negative", lambda: _v(5)[-2:], (2,)),
]


@pytest.mark.parametrize(("build", "shape"), [c[1:] for c in SHAPE_OK],
                         ids=[c[0] for c in SHAPE_OK])
def test_shape_rule(build, shape):
    e = build()
    assert ir.shape_equal(e.shape, shape), (e.shape, shape)


def test_every_atom_has_a_shape_rule_case():
    covered = {c[0].split("-")[0] for c in SHAPE_OK}
    assert set(ir.ATOMS) <= covered


SHAPE_BAD = [
    # (id, builder, words the message must contain)
    ("add", lambda s: ir.add(_v(n), _v(m, name="y"), span=s), ["`+`", "[n]", "[m]"]),
    ("sub", lambda s: ir.sub(_v(n), _v(ir.dim_add(n, 1), name="y"), span=s),
     ["`-`", "[n]", "[n + 1]"]),
    ("mul", lambda s: ir.mul(_p(n), _v(n, n), span=s), ["`*`", "[n]", "[n, n]"]),
    ("matmul-inner", lambda s: ir.matmul(_p(m, n), _v(m), span=s), ["`@`", "[m, n]", "[m]"]),
    ("matmul-scalar", lambda s: ir.matmul(_p(name="g"), _v(n), span=s), ["`@`", "scalar"]),
    ("dot", lambda s: ir.apply("dot", [_p(n), _v(m)], span=s), ["dot", "[n]", "[m]"]),
    ("quad_form", lambda s: ir.apply("quad_form", [_v(n), _p(m, m, psd=True)], span=s),
     ["quad_form", "[n]", "[m, m]"]),
    ("trace", lambda s: ir.apply("trace", [_v(n, m)], span=s), ["trace", "[n, m]"]),
    ("diag", lambda s: ir.apply("diag", [_v(n, m)], span=s), ["diag", "[n, m]"]),
    ("kl_div", lambda s: ir.apply("kl_div", [_v(n), _p(m)], span=s), ["kl_div", "[n]", "[m]"]),
    ("huber-M", lambda s: ir.apply("huber", [_v(n), _p(n)], span=s), ["huber", "[n]"]),
    ("index-too-many", lambda s: ir.index(_v(n), (0, 0), span=s), ["2 indices", "[n]"]),
    ("index-range", lambda s: ir.index(_v(3), 3, span=s), ["out of range", "3"]),
    ("index-symbolic", lambda s: ir.index(_v(n), n, span=s), ["out of range", "n"]),
    ("slice-empty", lambda s: ir.index(_v(5), ir.Slice(3, 3), span=s), ["empty"]),
    ("constraint", lambda s: ir.constraint("<=", _v(n), _p(m), span=s),
     ["`<=`", "[n]", "[m]"]),
    ("arity", lambda s: ir.apply("norm2", [_v(n), _v(n, name="y")], span=s),
     ["norm2", "1 argument", "got 2"]),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in SHAPE_BAD],
                         ids=[c[0] for c in SHAPE_BAD])
def test_shape_errors_name_operator_and_shapes(build, words):
    span = Span(2, 5, 2, 9)
    with pytest.raises(OptTypeError) as info:
        build(span)
    err = info.value
    assert err.span == span
    text = str(err)
    for w in words:
        assert w in text, (w, text)


def test_objective_must_be_scalar():
    with pytest.raises(OptTypeError, match=r"scalar.*\[n\]"):
        ir.minimize(F.square(_v(n)))


def test_attribute_psd_needs_a_square_matrix():
    with pytest.raises(OptTypeError, match="square matrix"):
        ir.Parameter(n, m, name="P", psd=True)
    assert ir.Parameter(n, n, name="P", psd=True).attrs == ("psd",)


def test_nonpositive_literal_dim_is_refused():
    with pytest.raises(OptTypeError, match="positive"):
        ir.Variable(0, name="x")


# ---------------------------------------------------------------------- binding

def _problem():
    x = ir.Variable(ir.dim_add(n, 1), name="x")
    A = ir.Parameter(m, ir.dim_add(n, 1), name="A")
    b = ir.Parameter(m, name="b")
    obj = ir.minimize(F.sum_squares(A @ x - b) + F.norm1(x[1:]))
    return ir.Problem(obj, [x[0] == 1], dims={"n": 3, "m": None})


def test_bind_substitutes_every_shape():
    p = _problem().bind({"m": 2})
    assert p.dims == {"n": 3, "m": 2}
    assert p.vars["x"].shape == (4,) and p.params["A"].shape == (2, 4)
    terms = ir.objective_terms(p)
    assert terms[1].expr.args[0].shape == (3,)  # x[1:] of x[4]


def test_bind_keeps_lets_and_structure():
    x = ir.Variable(n, name="x")
    r = ir.let("r", x - 1)
    p = ir.Problem(ir.minimize(F.sum_squares(r) + F.sum(r)), dims={"n": None})
    q = p.bind({"n": 2})
    assert list(q.lets) == ["r"] and q.lets["r"].shape == (2,)
    # the let is still one shared node in the bound problem
    a, b = (t.expr for t in ir.objective_terms(q))
    assert a.args[0] is b.args[0] is q.lets["r"]


@pytest.mark.parametrize(
    ("dims", "words"),
    [({}, ["dim m has no value"]),
     ({"m": 0}, ["positive integer"]),
     ({"m": 2.5}, ["positive integer"]),
     ({"m": True}, ["positive integer"]),
     ({"mm": 2}, ["unknown dim 'mm'", "did you mean 'm'"])],
    ids=["missing", "zero", "float", "bool", "unknown"],
)
def test_bind_errors(dims, words):
    with pytest.raises(BindingError) as info:
        _problem().bind(dims)
    for w in words:
        assert w in str(info.value)


def test_bind_reports_shape_rules_that_fail_with_the_sizes():
    x = ir.Variable(n, name="x")
    p = ir.Problem(ir.minimize(F.sum_squares(x[2:])), dims={"n": None})
    with pytest.raises(BindingError, match="empty|out of range"):
        p.bind({"n": 2})


def test_undeclared_dim_is_an_error_when_dims_are_given():
    x = ir.Variable(n, name="x")
    with pytest.raises(OptTypeError, match="dim 'n' is used but not declared"):
        ir.Problem(ir.minimize(F.sum(x)), dims={"m": 2})


def test_evaluate_needs_bound_dims_then_works():
    p = _problem()
    env = {"x": torch.ones(4, dtype=torch.float64), "A": torch.ones(2, 4, dtype=torch.float64),
           "b": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(BindingError, match="symbolic shape"):
        p.objective.expr.evaluate(env)
    q = p.bind({"m": 2})
    # sum_squares(A @ 1 - 0) = 2 * 4^2, norm1(x[1:]) = 3
    assert float(q.objective.expr.evaluate(env)) == 35.0
