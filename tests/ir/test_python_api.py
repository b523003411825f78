"""The Python expression API (``ol.Variable``, operators, ``ol.<atom>``, sets, Problem)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optlayer as ol
import optlayer.ir as ir
from optlayer.errors import BindingError, OptTypeError


@pytest.mark.parametrize("name", sorted(ir.ATOMS), ids=sorted(ir.ATOMS))
def test_every_atom_is_a_top_level_function(name):
    fn = getattr(ol, name)
    assert fn is getattr(ir.functions, name)
    assert name in ol.__all__
    assert ir.ATOMS[name].doc in fn.__doc__


@pytest.mark.parametrize("name", sorted(ir.SETS), ids=sorted(ir.SETS))
def test_every_set_is_a_top_level_name(name):
    assert getattr(ol, name) is ir.SETS[name]
    assert name in ol.__all__


def test_leaves_and_attributes():
    x = ol.Variable(3, name="x", nonneg=True)
    P = ol.Parameter(3, 3, name="P", attrs=("psd",))
    g = ol.Parameter(name="g", pos=True)
    assert x.shape == (3,) and x.attrs == ("nonneg",) and x.curvature is ir.Curvature.AFFINE
    assert P.attrs == ("psd",) and P.curvature is ir.Curvature.CONSTANT
    assert g.shape == () and g.sign is ir.Sign.POSITIVE
    assert ol.Variable((2, 4), name="m").shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [(dict(attrs=("convex",)), "unknown attribute 'convex'"),
     (dict(nonneg=True, nonpos=True), "cannot be both"),
     (dict(name="2x"), "identifier"),
     (dict(name="x", attrs=("nonneg", "nonneg")), "repeated attribute")],
    ids=["unknown-attr", "contradictory", "bad-name", "repeated"],
)
def test_leaf_errors(kwargs, words):
    with pytest.raises(OptTypeError, match=words):
        ol.Variable(3, **kwargs)


def test_auto_names_are_distinct():
    a, b = ol.Variable(2), ol.Variable(2)
    assert a.name != b.name and a.name.isidentifier()


def test_operators_build_the_same_ir_as_the_constructors():
    x = ol.Variable(3, name="x")
    A = ol.Parameter(2, 3, name="A")
    b = ol.Parameter(2, name="b")
    c = ol.Parameter(name="c", pos=True)
    py = 2 * (A @ x - b) / c + 1 - (-x[0:2]) ** 2
    built = ir.sub(ir.add(ir.div(ir.mul(2, ir.sub(ir.matmul(A, x), b)), c), 1),
                   ir.power(ir.negate(ir.index(x, ir.Slice(0, 2))), 2))
    assert ir.equal(py, built)
    assert not ir.equal(py, ir.add(py, 0))


def test_reflected_operators_and_numpy_scalars():
    x = ol.Variable(2, name="x")
    assert ir.expr_text(1 - x) == "1 - x"
    assert ir.expr_text(np.float64(2.5) * x) == "2.5 * x"
    assert ir.expr_text(x.T) == "x'"
    assert ir.expr_text(x ^ 2) == "x ^ 2"


def test_constraints_from_comparisons():
    x = ol.Variable(3, name="x")
    cons = [ol.sum(x) == 1, x <= 2, 0 <= x, (x >= -1).labelled("floor")]
    assert [c.op for c in cons] == ["==", "<=", ">=", ">="]
    assert cons[3].label == "floor"
    assert str(cons[2]) == "x >= 0"  # reflected: 0 <= x is x >= 0


def test_set_membership_spelling():
    x = ol.Variable(3, name="x")
    lo, hi = ol.Parameter(3, name="lo"), ol.Parameter(3, name="hi")
    spelled = [x.within(ol.simplex(1)), x.within(ol.simplex), ol.member(x, ol.box(lo, hi)),
               x.within(ol.nonneg), ol.member(x, "ball2"), x.within(ol.ballinf(0.5))]
    assert [str(c) for c in spelled] == ["x in simplex(1)", "x in simplex(1)",
                                         "x in box(lo, hi)", "x in nonneg", "x in ball2(1)",
                                         "x in ballinf(0.5)"]
    assert ir.constraint_equal(spelled[0], spelled[1])
    assert spelled[0].labelled("s").label == "s"


@pytest.mark.parametrize(
    ("build", "words"),
    [(lambda x: x.within(ol.simplex(1, 2)), "at most 1 argument"),
     (lambda x: x.within(ol.box(0)), "needs its argument 'upper'"),
     (lambda x: x.within(ol.simplex(ol.Parameter(3, name="v"))), "must be a scalar"),
     (lambda x: ol.member(x, "simplx"), "did you mean 'simplex'"),
     (lambda x: ol.member(x, 3), "is not a set"),
     (lambda x: ol.Variable(3, 2, name="m").within(ol.simplex), "needs a vector"),
     (lambda x: x.within(ol.psd), "square matrix"),
     (lambda x: ol.Variable(1, name="t").within(ol.soc), "length >= 2"),
     (lambda x: x.within(ol.box(ol.Parameter(2, name="lo"), 1)), "has shape [2]")],
    ids=["too-many-args", "missing-arg", "nonscalar-value", "unknown-set", "not-a-set",
         "simplex-matrix", "psd-vector", "soc-short", "box-bound-shape"],
)
def test_set_errors(build, words):
    with pytest.raises(OptTypeError) as info:
        build(ol.Variable(3, name="x"))
    assert words in str(info.value)


def test_expressions_have_no_truth_value():
    x = ol.Variable(2, name="x")
    with pytest.raises(OptTypeError, match="truth value"):
        bool(x)
    with pytest.raises(OptTypeError, match="truth value"):
        if x == 1:  # noqa: SIM102 - the point is that this raises
            pass
    with pytest.raises(OptTypeError, match="strict"):
        x < 1  # noqa: B015


def test_unknown_operand_type():
    with pytest.raises(OptTypeError, match="cannot use a str"):
        ol.Variable(2, name="x") + "y"


def test_problem_collects_declarations_in_order():
    x, y = ol.Variable(2, name="x"), ol.Variable(2, name="y")
    p = ol.Parameter(2, name="p")
    prob = ol.Problem(ol.minimize(ol.sum_squares(x - p) + ol.sum(y)), [x + y == 1])
    assert list(prob.vars) == ["x", "y"] and list(prob.params) == ["p"]
    assert prob.variables == [x, y] and prob.parameters == [p]


def test_problem_errors():
    x = ol.Variable(2, name="x")
    other = ol.Variable(2, name="x")
    with pytest.raises(OptTypeError, match="two different vars are named 'x'"):
        ol.Problem(ol.minimize(ol.sum(x) + ol.sum(other)))
    with pytest.raises(OptTypeError, match="minimize"):
        ol.Problem(ol.sum(x))
    with pytest.raises(OptTypeError, match="not a constraint"):
        ol.Problem(ol.minimize(ol.sum(x)), [ol.sum(x)])
    with pytest.raises(OptTypeError, match=r"declarations \(var and param\) are named 'x'"):
        ol.Problem(ol.minimize(ol.sum(x) + ol.sum(ol.Parameter(2, name="x"))))


def test_evaluate_is_batched_and_follows_dtype():
    x = ol.Variable(3, name="x")
    A = ol.Parameter(2, 3, name="A")
    lam = ol.Parameter(name="lam", nonneg=True)
    e = ol.sum_squares(A @ x) + lam * ol.norm1(x) + 1
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(5, 3, generator=g, dtype=torch.float64)
    As = torch.randn(2, 3, generator=g, dtype=torch.float64)  # unbatched: broadcasts
    lams = torch.rand(5, generator=g, dtype=torch.float64)
    out = e.evaluate({"x": xs, "A": As, "lam": lams})
    want = ((xs @ As.T) ** 2).sum(-1) + lams * xs.abs().sum(-1) + 1
    assert out.dtype == torch.float64 and out.shape == (5,)
    torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)
    out32 = e.evaluate({"x": xs.float(), "A": As.float(), "lam": lams.float()})
    assert out32.dtype == torch.float32


def test_evaluate_errors_name_the_leaf():
    x = ol.Variable(3, name="x")
    e = ol.sum(x)
    with pytest.raises(BindingError, match="no value for var 'x'"):
        e.evaluate({})
    with pytest.raises(BindingError, match=r"declared \[3\].*\[4\]"):
        e.evaluate({"x": torch.zeros(4)})


def test_let_is_a_named_shared_node():
    x = ol.Variable(3, name="x")
    r = ol.let("r", x - 1)
    prob = ol.Problem(ol.minimize(ol.sum_squares(r) + ol.sum(r)))
    assert list(prob.lets) == ["r"] and prob.lets["r"] is r
    assert r.curvature is ir.Curvature.AFFINE and r.shape == (3,)
    assert "let r = x - 1" in prob.to_opt()


def test_symbolic_dims_from_python():
    n = ol.dim("n")
    x = ol.Variable(n + 1, name="x")
    A = ol.Parameter(n, n + 1, name="A")
    prob = ol.Problem(ol.minimize(ol.sum_squares(A @ x)), dims={"n": 4})
    assert prob.dims == {"n": 4}
    assert prob.bind().vars["x"].shape == (5,)


def test_tensor_constants_work_in_python_but_have_no_opt_spelling():
    x = ol.Variable(2, name="x")
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    prob = ol.Problem(ol.minimize(ol.sum_squares(x - c)))
    val = prob.objective.expr.evaluate({"x": torch.zeros(2, dtype=torch.float64)})
    assert float(val) == 5.0
    with pytest.raises(OptTypeError, match="no .opt spelling"):
        prob.to_opt()


def test_problem_layer_goes_through_the_registered_builder(monkeypatch):
    from optlayer.ir import problem as problem_module

    x = ol.Variable(2, name="x")
    prob = ol.Problem(ol.minimize(ol.sum_squares(x)))
    monkeypatch.setattr(problem_module, "_LAYER_FACTORY", None)
    with pytest.raises(ol.OptError, match="no layer builder"):
        prob.layer()
    seen = []
    problem_module.set_layer_factory(lambda pr, **opts: seen.append((pr, opts)) or "layer")
    assert prob.layer(method="kkt") == "layer"
    assert seen == [(prob, {"method": "kkt"})]


@pytest.mark.parametrize(
    ("build", "words"),
    [(lambda: ol.Variable(3, name="sum"), "'sum' is an atom"),
     (lambda: ol.Parameter(name="simplex"), "'simplex' is a set"),
     (lambda: ol.Parameter(name="nonneg"), "'nonneg' is an attribute"),
     (lambda: ol.Variable(name="minimize"), "'minimize' is a keyword"),
     (lambda: ol.let("norm1", ol.Variable(2, name="x")), "'norm1' is an atom"),
     (lambda: (ol.sum(ol.Variable(2, name="x")) == 1).labelled("subject"), "keyword"),
     (lambda: ol.dim("param"), "'param' is a keyword")],
    ids=["var-atom", "param-set", "param-attribute", "var-keyword", "let-atom", "label-keyword",
         "dim-keyword"],
)
def test_reserved_names(build, words):
    with pytest.raises(OptTypeError) as info:
        build()
    assert words in info.value.message and "rename it" in info.value.hint


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("nrom2", "norm2"), ("sum_square", "sum_squares"), ("logsumexpp", "logsumexp"),
     ("qaud_form", "quad_form")],
    ids=["nrom2", "sum_square", "logsumexpp", "qaud_form"],
)
def test_unknown_atom_gets_did_you_mean(name, suggestion):
    with pytest.raises(OptTypeError) as info:
        ir.apply(name, [ol.Variable(2, name="x")])
    assert f"unknown function {name!r}" in info.value.message
    assert f"did you mean {suggestion!r}" in info.value.hint


@pytest.mark.parametrize(
    ("make", "want"),
    [(lambda x: x <= 2, [-1.0, 0.0, -1.5]),
     (lambda x: x >= 2, [1.0, 0.0, 1.5]),
     (lambda x: 1 <= ol.sum(x), -2.5),
     (lambda x: ol.sum(x) == 1, 2.5)],
    ids=["le", "ge", "reflected-ge", "eq"],
)
def test_constraint_residual_is_g_le_zero(make, want):
    """residual() = lhs - rhs for <= and ==, rhs - lhs for >=, evaluated at x = [1, 2, 0.5]."""
    x = ol.Variable(3, name="x")
    g = make(x).residual()
    got = g.evaluate({"x": torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)})
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert g.curvature.is_affine


def test_evaluate_cache_shares_lets_between_roots():
    x = ol.Variable(2, name="x")
    r = ol.let("r", ol.exp(x))
    obj, con = ol.sum(r), r - 1
    env = {"x": torch.zeros(2, dtype=torch.float64)}
    cache: dict = {}
    a = obj.evaluate(env, cache)
    b = con.evaluate(env, cache)
    assert float(a) == 2.0 and b.tolist() == [0.0, 0.0]
    assert cache[id(r)] is cache[id(r.body)]  # the let's value is its body's, computed once
