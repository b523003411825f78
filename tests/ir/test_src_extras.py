"""IR analyses used by the compiler and the layer: prox terms, domains, degrees, copies, limits.

* ``prox_term`` recognises ``c * atom(x)`` with a closed-form prox, and nothing else;
* ``domain_constraints`` lists ``arg >= 0`` exactly where an atom's domain needs it;
* ``degree`` is checked numerically: a degree-2 expression has a constant
  Hessian and a degree-1 expression a zero Hessian (at two random points);
* problems survive ``copy.deepcopy`` and ``pickle`` as equal problems;
* ``to_opt`` refuses text past the parser's limit instead of growing exponentially;
* reserved words cannot name leaves, lets or labels; expressions are not iterable.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import optlayer as ol
import optlayer.ir as ir
from optlayer.defaults import DSL_MAX_SOURCE_CHARS

x = ol.Variable(3, name="x")
z = ol.Variable(3, name="z", nonneg=True)
y = ol.Parameter(3, name="y")
lam = ol.Parameter(name="lam", nonneg=True)
c = ol.Parameter(name="c", pos=True)
A = ol.Parameter(2, 3, name="A")
P = ol.Parameter(3, 3, name="P", psd=True)

# ------------------------------------------------------------------ prox_term
PROX_YES = [
    ("norm1", lambda: ol.norm1(x), None, "lasso"),
    ("lam*norm1", lambda: lam * ol.norm1(x), "lam", "lasso"),
    ("norm2*2", lambda: ol.norm2(x) * 2, "2", "group_lasso"),
    ("sum_squares", lambda: 0.5 * ol.sum_squares(x), "0.5", "ridge"),
    ("norm_inf", lambda: c * ol.norm_inf(x), "c", "linf"),
]


@pytest.mark.parametrize(("build", "weight", "prox"), [r[1:] for r in PROX_YES],
                         ids=[r[0] for r in PROX_YES])
def test_prox_term_recognises_weighted_prox_atoms(build, weight, prox):
    t = ir.prox_term(build())
    assert t is not None and t.atom.prox == prox and t.variable is x
    assert (t.weight is None) if weight is None else str(t.weight) == weight


PROX_NO = [
    ("affine-arg", lambda: ol.norm1(x + 1)),
    ("var-weight", lambda: ol.sum(x) * ol.norm1(x)),
    ("vector-weight", lambda: ol.sum(y * ol.abs(x))),
    ("no-prox-atom", lambda: lam * ol.logsumexp(x)),
    ("plain-var", lambda: ol.sum(x)),
]


@pytest.mark.parametrize("build", [r[1] for r in PROX_NO], ids=[r[0] for r in PROX_NO])
def test_prox_term_rejects_other_shapes(build):
    assert ir.prox_term(build()) is None


# --------------------------------------------------------- domain constraints
DOMAINS = [
    ("log-shifted", lambda: ol.sum(ol.log(x + 1)), ["x + 1 >= 0"]),
    ("sqrt", lambda: ol.sum(ol.sqrt(x)), ["x >= 0"]),
    ("sqrt-nonneg-var", lambda: ol.sum(ol.sqrt(z)), []),
    ("entropy-and-sqrt-once", lambda: ol.entropy(x) + ol.sum(ol.sqrt(x)), ["x >= 0"]),
    ("kl-param-y", lambda: -ol.kl_div(x, y), ["x >= 0"]),
    ("power-half", lambda: ol.sum(x ** 0.5), ["x >= 0"]),
    ("square-real", lambda: -ol.sum(x ** 2), []),
    ("log-of-param", lambda: ol.sum(ol.log(c) * x), []),
]


@pytest.mark.parametrize(("build", "want"), [r[1:] for r in DOMAINS], ids=[r[0] for r in DOMAINS])
def test_domain_constraints(build, want):
    prob = ol.Problem(ol.maximize(build()))
    got = prob.domain_constraints()
    assert [str(k) for k in got] == want
    assert all(k.op == ">=" for k in got)


# --------------------------------------------------------------------- degree
DEGREES = [
    ("param", lambda: ol.sum(y) * c, 0),
    ("affine", lambda: A @ x - ol.sum(y) + x[0] / c, 1),
    ("lsq", lambda: ol.sum_squares(A @ x - 1) / c, 2),
    ("quad_form", lambda: ol.quad_form(x, P) + ol.sum(x), 2),
    ("square", lambda: ol.sum(ol.square(x - y)), 2),
    ("power2", lambda: ol.sum((x + 1) ** 2), 2),
    ("product", lambda: ol.sum(x) * ol.sum(x), 2),
    ("cubic", lambda: ol.sum(x ** 3), None),
    ("norm", lambda: ol.norm2(x), None),
    ("quartic", lambda: ol.sum(ol.square(ol.square(x))), None),
    ("exp-of-param", lambda: ol.sum(ol.exp(y)) * x[0], 1),
]


@pytest.mark.parametrize(("build", "deg"), [r[1:] for r in DEGREES], ids=[r[0] for r in DEGREES])
def test_degree_is_declared(build, deg):
    assert build().degree == deg


@pytest.mark.parametrize("build", [r[1] for r in DEGREES if r[2] in (1, 2)],
                         ids=[r[0] for r in DEGREES if r[2] in (1, 2)])
def test_degree_matches_the_hessian(build):
    e = build()
    g = torch.Generator().manual_seed(3)
    env = {"y": torch.randn(3, generator=g, dtype=torch.float64),
           "A": torch.randn(2, 3, generator=g, dtype=torch.float64),
           "c": torch.tensor(1.7, dtype=torch.float64),
           "P": torch.eye(3, dtype=torch.float64) * 2}

    def f(xv):
        return e.evaluate({**env, "x": xv}).sum()

    hess = [torch.autograd.functional.hessian(f, torch.randn(3, generator=g, dtype=torch.float64))
            for _ in range(2)]
    torch.testing.assert_close(hess[0], hess[1], rtol=0, atol=1e-12)  # constant Hessian
    if e.degree == 1:
        assert bool((hess[0] == 0).all())
    else:
        assert bool((hess[0] != 0).any())


# ------------------------------------------------------------ copies, pickles
def _problem():
    n = ol.dim("n")
    v = ol.Variable(n, name="v")
    q = ol.Parameter(n, name="q")
    r = ol.let("r", v - q)
    return ol.Problem(ol.minimize(ol.sum_squares(r) + lam * ol.norm1(v)),
                      [v.within(ol.simplex(1)), (v[0:2] <= 1).labelled("cap")],
                      dims={"n": 4})


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda p: pickle.loads(pickle.dumps(p))],
                         ids=["deepcopy", "pickle"])
def test_problem_copies_are_equal_and_share_registry_records(clone):
    p = _problem()
    q = clone(p)
    assert q == p and q is not p
    atom = q.objective.expr.args[0].atom
    assert atom is ir.ATOMS["sum_squares"]
    assert q.constraints[0].set.kind is ir.SETS["simplex"]
    assert q.bind().to_opt() == p.bind().to_opt()


# ------------------------------------------------------------------- limits
def test_to_opt_refuses_text_past_the_parser_limit():
    e = x
    for _ in range(60):  # 2^60 copies of x if printed in full
        e = e + e
    prob = ol.Problem(ol.minimize(ol.sum(e)))
    with pytest.raises(ol.OptTypeError, match=str(DSL_MAX_SOURCE_CHARS)) as info:
        prob.to_opt()
    assert "ol.let" in info.value.hint
    assert len(str(prob)) < 30_000  # display text elides instead


@pytest.mark.parametrize("name", ["minimize", "subject", "in", "nonneg", "norm2", "simplex",
                                  "sum"])
@pytest.mark.parametrize("make", [lambda nm: ol.Variable(2, name=nm),
                                  lambda nm: ol.Parameter(name=nm),
                                  lambda nm: ol.let(nm, x),
                                  lambda nm: (ol.sum(x) == 1).labelled(nm),
                                  lambda nm: ol.dim(nm)],
                         ids=["var", "param", "let", "label", "dim"])
def test_reserved_words_cannot_name_things(make, name):
    with pytest.raises(ol.OptTypeError, match="cannot name"):
        make(name)


def test_expressions_are_not_iterable():
    v = ol.Variable(ol.dim("n"), name="v")
    with pytest.raises(ol.OptTypeError, match="not iterable"):
        list(v)
