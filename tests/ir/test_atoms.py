"""Numerical checks of every atom and operator record of the registry.

Each record declares curvature, sign, per-argument monotonicity (possibly
depending on the argument's sign) and a domain. Here each declaration is
checked on sampled points:

* curvature: Jensen's inequality on random segments (equality for affine);
* monotonicity: ``f(x + d) >= f(x)`` for ``d >= 0`` (or <=), in each sign
  region of the argument that the domain allows;
* sign: every sampled value has the declared sign; an ``unknown`` sign over
  the whole domain is checked to be tight (both signs occur);
* values: the torch implementation equals an independent numpy formula;
* batching: the implementation batched over leading dims equals per-item calls.

Cases are listed per registry name in ``CASES``; a test checks that every
registered atom and operator has at least one case, so a new record cannot
arrive untested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from optlayer.ir import (
    ATOMS,
    OPERATORS,
    Constant,
    Curvature,
    Domain,
    Mono,
    Parameter,
    Sign,
    Slice,
    Variable,
)

B = 64  # samples per check
N = 4  # vector length


@dataclass(frozen=True)
class Arg:
    """One argument of a case: a shape, and a fixed value for variable-free arguments."""

    shape: tuple
    const: object = None  # a callable returning the fixed tensor, or None (sampled)


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple
    static: tuple = ()
    tag: str = ""
    ref: object = None  # numpy reference: (*arrays) -> array
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name + (f"[{self.tag}]" if self.tag else "")

    @property
    def atom(self):
        return ATOMS.get(self.name) or OPERATORS[self.name]


def _psd():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(N, N, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(N, dtype=torch.float64)


def _mat():
    g = torch.Generator().manual_seed(8)
    return torch.randn(3, N, generator=g, dtype=torch.float64)


def _mixed():
    return torch.tensor([1.0, -2.0, 0.5, -1.0], dtype=torch.float64)


def _scalar(v):
    return lambda: torch.tensor(v, dtype=torch.float64)


V = Arg((N,))
M = Arg((N, N))
S = Arg(())


def _lse(x):
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def _huber(x, m=1.0):
    a = np.abs(x)
    return np.where(a <= m, a * a, 2 * m * a - m * m)


CASES = [
    Case("sum", (V,), ref=lambda x: x.sum()),
    Case("sum", (M,), tag="matrix", ref=lambda x: x.sum()),
    Case("mean", (V,), ref=lambda x: x.mean()),
    Case("dot", (V, V), tag="both variable", ref=lambda x, y: x @ y),
    Case("dot", (Arg((N,), _mixed), V), tag="const left", ref=lambda c, y: c @ y),
    Case("quad_form", (V, Arg((N, N), _psd)), tag="psd", ref=lambda x, p: x @ p @ x),
    Case("sum_squares", (V,), ref=lambda x: (x * x).sum()),
    Case("square", (V,), ref=lambda x: x * x),
    Case("abs", (V,), ref=np.abs),
    Case("norm1", (V,), ref=lambda x: np.abs(x).sum()),
    Case("norm2", (V,), ref=lambda x: np.sqrt((x * x).sum())),
    Case("norm2", (M,), tag="frobenius", ref=lambda x: np.linalg.norm(x)),
    Case("norm_inf", (V,), ref=lambda x: np.abs(x).max()),
    Case("exp", (V,), ref=np.exp),
    Case("log", (V,), ref=np.log),
    Case("sqrt", (V,), ref=np.sqrt),
    Case("logsumexp", (V,), ref=_lse),
    Case("entropy", (V,), ref=lambda x: -(x * np.log(x)).sum()),
    Case("kl_div", (V, V), ref=lambda x, y: (x * np.log(x / y) - x + y).sum()),
    Case("huber", (V,), ref=_huber),
    Case("huber", (V, Arg((), _scalar(0.5))), tag="M=0.5", ref=_huber),
    Case("logistic", (V,), ref=lambda x: np.logaddexp(0, x)),
    Case("softplus", (V,), ref=lambda x: np.logaddexp(0, x)),
    Case("pos", (V,), ref=lambda x: np.maximum(x, 0)),
    Case("neg", (V,), ref=lambda x: np.maximum(-x, 0)),
    Case("max", (V,), tag="reduce", ref=lambda x: x.max()),
    Case("max", (V, V), tag="elementwise", ref=np.maximum),
    Case("min", (V,), tag="reduce", ref=lambda x: x.min()),
    Case("min", (V, V), tag="elementwise", ref=np.minimum),
    Case("trace", (M,), ref=np.trace),
    Case("diag", (V,), tag="vector", ref=np.diag),
    Case("diag", (M,), tag="matrix", ref=np.diag),
    # operators
    Case("add", (V, V), ref=lambda x, y: x + y),
    Case("add", (V, S), tag="scalar", ref=lambda x, y: x + y),
    Case("sub", (V, V), ref=lambda x, y: x - y),
    Case("negate", (V,), ref=lambda x: -x),
    Case("mul", (Arg((), _scalar(-1.5)), V), tag="negative const", ref=lambda c, x: c * x),
    Case("mul", (V, Arg((), _scalar(2.0))), tag="positive const", ref=lambda x, c: x * c),
    Case("mul", (V, V), tag="both variable", ref=lambda x, y: x * y),
    Case("div", (V, Arg((), _scalar(4.0))), ref=lambda x, c: x / c),
    Case("matmul", (Arg((3, N), _mat), V), tag="const @ var", ref=lambda a, x: a @ x),
    Case("matmul", (V, V), tag="var @ var", ref=lambda x, y: x @ y),
    Case("power", (V,), static=(2,), tag="p=2", ref=lambda x: x**2),
    Case("power", (V,), static=(3,), tag="p=3", ref=lambda x: x**3),
    Case("power", (V,), static=(0.5,), tag="p=0.5", ref=np.sqrt),
    Case("power", (V,), static=(-1,), tag="p=-1", ref=lambda x: 1 / x),
    Case("power", (V,), static=(1,), tag="p=1", ref=lambda x: x),
    Case("transpose", (Arg((3, N)),), ref=lambda x: x.T),
    Case("index", (V,), static=(1,), tag="x[1]", ref=lambda x: x[1]),
    Case("index", (M,), static=(Slice(1, 3),), tag="X[1:3]", ref=lambda x: x[1:3]),
]
IDS = [c.id for c in CASES]


def _domain(case: Case, i: int) -> Domain:
    d = case.atom.domain_of(case.static)
    return d[min(i, len(d) - 1)]


def _node(case: Case, i: int, region: str = "any"):
    """An IR node standing for argument ``i``: a Constant, or a Parameter with a sign attribute.

    Parameters are variable-free; to make the atom see a *variable* argument
    we use a Variable with the same attributes.
    """
    arg = case.args[i]
    if arg.const is not None:
        return Constant(arg.const())
    dom = _domain(case, i)
    attrs = []
    if dom is Domain.POSITIVE:
        attrs = ["pos"]
    elif dom is Domain.NONNEG or region == "nonneg":
        attrs = ["nonneg"]
    elif region == "nonpos":
        attrs = ["nonpos"]
    return Variable(*arg.shape, name=f"a{i}", attrs=attrs)


def _nodes(case: Case, region_of=None):
    region_of = region_of or {}
    return [_node(case, i, region_of.get(i, "any")) for i in range(len(case.args))]


def _sample(case: Case, i: int, gen, region: str = "any", scale: float = 2.0):
    arg = case.args[i]
    if arg.const is not None:
        return arg.const()
    z = scale * torch.randn((B,) + arg.shape, generator=gen, dtype=torch.float64)
    dom = _domain(case, i)
    if dom is Domain.POSITIVE:
        return z.abs() + 0.05
    if dom is Domain.NONNEG or region == "nonneg":
        return z.abs()
    if region == "nonpos":
        return -z.abs()
    return z


def _impl(case: Case, ts):
    return case.atom.impl(list(ts), [len(a.shape) for a in case.args], case.static)


def _variable_args(case: Case) -> list[int]:
    return [i for i, a in enumerate(case.args) if a.const is None]


def _tol(*vals):
    return 1e-9 * (1 + max(float(v.abs().max()) for v in vals))


def test_every_record_has_a_case():
    names = {c.name for c in CASES}
    missing = sorted((set(ATOMS) | set(OPERATORS)) - names)
    assert not missing, f"registry records without numeric test cases: {missing}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_declared_curvature_holds(case):
    gen = torch.Generator().manual_seed(1)
    nodes = _nodes(case)
    curv = case.atom.curvature_of(nodes, case.static)
    from optlayer.ir.dcp import compose

    full = compose(case.atom, nodes, case.static)
    xs = [_sample(case, i, gen) for i in range(len(case.args))]
    ys = [_sample(case, i, gen) for i in range(len(case.args))]
    extra = (1,) * len(case.atom.shape([a.shape for a in case.args], case.static))
    t = torch.rand((B,) + (1,) * 0, generator=gen, dtype=torch.float64)
    zs = [x if case.args[i].const is not None else
          t.reshape((B,) + (1,) * len(case.args[i].shape)) * x
          + (1 - t.reshape((B,) + (1,) * len(case.args[i].shape))) * y
          for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    fx, fy, fz = _impl(case, xs), _impl(case, ys), _impl(case, zs)
    tt = t.reshape((B,) + extra)
    chord = tt * fx + (1 - tt) * fy
    tol = _tol(fx, fy, fz)
    if curv is Curvature.UNKNOWN:
        # declared unknown (e.g. a product of two variables): Jensen must fail both ways somewhere
        assert full is Curvature.UNKNOWN
        assert bool((fz > chord + tol).any()) and bool((fz < chord - tol).any()), \
            f"{case.id} is declared of unknown curvature but looks convex or concave"
        return
    if curv.is_convex:
        assert bool((fz <= chord + tol).all()), f"{case.id} declared {curv} violates Jensen"
    if curv.is_concave:
        assert bool((fz >= chord - tol).all()), f"{case.id} declared {curv} violates Jensen"
    if not curv.is_affine:
        # strictly convex/concave somewhere: the declaration is not just 'affine' in disguise
        assert bool(((fz - chord).abs() > tol).any()), f"{case.id} looks affine"


def _mono_cases():
    out = []
    for case in CASES:
        for i in _variable_args(case):
            dom = _domain(case, i)
            regions = ["any"] if dom is not Domain.REAL else ["any", "nonneg", "nonpos"]
            for region in regions:
                mono = case.atom.monotonicity(_nodes(case, {i: region}), case.static)[i]
                if mono is Mono.NONMONOTONE and not (region == "any" and dom is Domain.REAL):
                    continue  # nothing is claimed there, so nothing to check
                out.append(pytest.param(case, i, region, id=f"{case.id}-arg{i}-{region}"))
    return out


@pytest.mark.parametrize(("case", "i", "region"), _mono_cases())
def test_declared_monotonicity_holds(case, i, region):
    gen = torch.Generator().manual_seed(2)
    nodes = _nodes(case, {i: region})
    mono = case.atom.monotonicity(nodes, case.static)[i]
    xs = [_sample(case, j, gen, region if j == i else "any") for j in range(len(case.args))]
    # x and x + d (d >= 0) both inside the region and domain of argument i
    a = xs[i]
    d = torch.rand(a.shape, generator=gen, dtype=torch.float64)
    if region == "nonpos":
        lo, hi = -(a.abs() + d), -a.abs()
    else:
        lo, hi = a, a + d
    f_lo = _impl(case, xs[:i] + [lo] + xs[i + 1:])
    f_hi = _impl(case, xs[:i] + [hi] + xs[i + 1:])
    tol = _tol(f_lo, f_hi)
    if mono is Mono.INCREASING:
        assert bool((f_hi >= f_lo - tol).all()), f"{case.id} not nondecreasing in arg {i}"
    elif mono is Mono.DECREASING:
        assert bool((f_hi <= f_lo + tol).all()), f"{case.id} not nonincreasing in arg {i}"
    else:
        assert region == "any" and _domain(case, i) is Domain.REAL
        # declared nonmonotone on the whole real line: it really goes both ways
        # (a sign-dependent or const-scaled claim must not be needlessly weak)
        up = bool((f_hi > f_lo + tol).any())
        down = bool((f_hi < f_lo - tol).any())
        assert up and down, f"{case.id} declared nonmonotone in arg {i} ({region}) but is not"


def _sign_cases():
    out = []
    for case in CASES:
        regions = ["any"]
        if any(_domain(case, i) is Domain.REAL for i in _variable_args(case)):
            regions += ["nonneg", "nonpos"]
        for region in regions:
            var = _variable_args(case)
            sign = case.atom.sign(_nodes(case, {i: region for i in var}), case.static)
            real = all(_domain(case, i) is Domain.REAL for i in var)
            if sign is Sign.UNKNOWN and not (region == "any" and real):
                continue  # no claim to check
            out.append(pytest.param(case, region, id=f"{case.id}-{region}"))
    return out


@pytest.mark.parametrize(("case", "region"), _sign_cases())
def test_declared_sign_holds(case, region):
    gen = torch.Generator().manual_seed(3)
    var = _variable_args(case)
    nodes = _nodes(case, {i: region for i in var})
    sign = case.atom.sign(nodes, case.static)
    xs = [_sample(case, i, gen, region, scale=3.0) for i in range(len(case.args))]
    f = _impl(case, xs)
    if sign is Sign.POSITIVE:
        assert bool((f > 0).all())
    elif sign is Sign.NONNEG:
        assert bool((f >= 0).all())
    elif sign is Sign.NONPOS:
        assert bool((f <= 0).all())
    elif sign is Sign.ZERO:
        assert bool((f == 0).all())
    else:
        assert region == "any" and all(_domain(case, i) is Domain.REAL for i in var)
        # unknown over the whole real domain: both signs really occur
        assert bool((f > 0).any()) and bool((f < 0).any()), \
            f"{case.id} declared of unknown sign but all samples share one sign"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_value_matches_numpy_reference(case):
    gen = torch.Generator().manual_seed(4)
    xs = [_sample(case, i, gen) for i in range(len(case.args))]
    got = _impl(case, xs)
    for b in range(3):
        arrays = [x.numpy() if case.args[i].const is not None else x[b].numpy()
                  for i, x in enumerate(xs)]
        want = np.asarray(case.ref(*arrays))
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_impl_is_batched_over_leading_dims(case):
    gen = torch.Generator().manual_seed(5)
    xs = [_sample(case, i, gen) for i in range(len(case.args))]
    # two leading batch dims: (B,) -> (8, 8)
    xs2 = [x if case.args[i].const is not None else x.reshape((8, 8) + x.shape[1:])
           for i, x in enumerate(xs)]
    flat = _impl(case, xs)
    nested = _impl(case, xs2)
    out_shape = tuple(case.atom.shape([a.shape for a in case.args], case.static))
    assert tuple(flat.shape) == (B,) + out_shape
    assert tuple(nested.shape) == (8, 8) + out_shape
    torch.testing.assert_close(nested.reshape(flat.shape), flat, rtol=0, atol=0)
    single = _impl(case, [x if case.args[i].const is not None else x[0]
                          for i, x in enumerate(xs)])
    torch.testing.assert_close(single, flat[0], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("name", sorted(ATOMS), ids=sorted(ATOMS))
def test_record_is_documented(name):
    atom = ATOMS[name]
    assert atom.doc and "\n" not in atom.doc
    assert name in atom.doc  # the one-line math names the atom
    lo, hi = atom.arity
    assert 1 <= lo <= hi


PROX_NAMES = {"none", "lasso", "nonneg_lasso", "elastic_net", "group_lasso", "ridge",
              "nonneg_ridge", "linf", "box_indicator"}


@pytest.mark.parametrize("name", sorted(n for n, a in ATOMS.items() if a.prox),
                         ids=sorted(n for n, a in ATOMS.items() if a.prox))
def test_prox_is_named_in_the_prox_catalog(name):
    atom = ATOMS[name]
    assert atom.prox in PROX_NAMES
    assert not atom.smooth or name == "sum_squares"
    assert atom.prox_hyper > 0


def test_nonsmooth_atoms_are_declared_nonsmooth():
    # kinks at 0: |x|, max(x, 0), max_i, the norms
    kinked = {"abs", "norm1", "norm2", "norm_inf", "pos", "neg", "max", "min"}
    assert {n for n, a in ATOMS.items() if not a.smooth} == kinked


def test_parameter_nodes_are_constants_for_dcp():
    p = Parameter(N, name="p", nonneg=True)
    assert p.curvature is Curvature.CONSTANT and p.sign is Sign.NONNEG


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_matches_finite_differences(case):
    """gradcheck at float64 on random points of the domain (kinks have measure zero)."""
    gen = torch.Generator().manual_seed(6)
    var = _variable_args(case)
    xs = [_sample(case, i, gen)[:3] if i in var else _sample(case, i, gen)
          for i in range(len(case.args))]
    inputs = tuple(xs[i].clone().requires_grad_(True) for i in var)

    def f(*vs):
        ts = list(xs)
        for i, v in zip(var, vs, strict=True):
            ts[i] = v
        return _impl(case, ts)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def _kink_cases():
    # real-domain arguments only: at 0 (and at ties for two-argument max/min) every
    # implementation must give a finite (sub)gradient, never NaN
    return [c for c in CASES if all(_domain(c, i) is Domain.REAL for i in _variable_args(c))]


@pytest.mark.parametrize("case", _kink_cases(), ids=[c.id for c in _kink_cases()])
def test_gradient_is_finite_at_zero_and_ties(case):
    var = _variable_args(case)
    zeros = [torch.zeros((2,) + case.args[i].shape, dtype=torch.float64, requires_grad=True)
             if i in var else case.args[i].const() for i in range(len(case.args))]
    _impl(case, zeros).sum().backward()
    for i in var:
        assert bool(torch.isfinite(zeros[i].grad).all()), f"{case.id}: NaN/inf gradient at 0"
