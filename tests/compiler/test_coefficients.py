"""Coefficients carried through the IR (``compiler.coefficients``): every tangent rule of the
atom registry, the quadratic compositions and the QP data of every shipped QP-path example,
against evaluation at points with autograd (the read-off they replace). The layers that use
them: ``tests/layer/test_coefficient_paths.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.compiler import canonicalize_qp, expand_params
from optlayer.compiler.coefficients import AffineMaps, QuadraticModel
from optlayer.compiler.lower import Layout, Tape
from optlayer.compiler.quadratic import quadratic_data
from optlayer.layer import random_params

D = torch.float64
B = 3

x = ol.Variable(3, name="x")
Y = ol.Variable((2, 3), name="Y")
Z = ol.Variable((3, 3), name="Z")
A = ol.Parameter((4, 3), name="A")
M = ol.Parameter((3, 2), name="M")
C = ol.Parameter((3, 3), name="C")
a = ol.Parameter(3, name="a")
s = ol.Parameter(name="s", pos=True)
LAYOUT = Layout([x, Y, Z])
N = LAYOUT.size


def _params(seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    P = {p.name: torch.randn(B, *p.shape, generator=g, dtype=D) for p in (A, M, C, a)}
    P["s"] = torch.rand(B, generator=g, dtype=D) + 0.5
    return {k: v.requires_grad_(grad) for k, v in P.items()}


def _values(exprs, z, P):
    """The expressions evaluated by the tape at ``z (B, N)``, stacked as ``(B, rows)``."""
    env = dict(P)
    env.update(LAYOUT.unpack(z))
    vals = Tape(exprs).run(env)
    n = z.shape[0]
    return torch.cat([vals[id(e)].expand(n, *e.shape).reshape(n, -1)
                      if vals[id(e)].dim() == len(e.shape) or vals[id(e)].shape[0] != n
                      else vals[id(e)].reshape(n, -1) for e in exprs], -1)


def _taylor_reference(exprs, P, second=False):
    """Value at 0, Jacobian (and Hessians) of the rows by autograd at ``z = 0``."""
    z0 = torch.zeros(B, N, dtype=D)
    c = _values(exprs, z0, P)
    k = c.shape[1]
    jac = torch.autograd.functional.jacobian(lambda z: _values(exprs, z, P).sum(0), z0,
                                             create_graph=True)
    J = jac.permute(1, 0, 2)                       # (B, k, N): items are independent
    if not second:
        return c, J
    H = torch.stack([torch.autograd.functional.hessian(
        lambda z, i=i: _values(exprs, z, P)[:, i].sum(), z0).diagonal(dim1=0, dim2=2)
        .permute(2, 0, 1) for i in range(k)], 1)   # (B, k, N, N)
    return c, J, H


AFFINE = {
    "matrix @ vector": A @ x - ol.sum(a),
    "vector @ matrix": x @ M,
    "matrix @ matrix (moving left)": Y @ M,
    "matrix @ matrix (moving right)": A @ Y.T,
    "vector @ vector": a @ x,
    "dot, moving right": ol.dot(a, x),
    "dot, moving left": ol.dot(x, a),
    "scalar param times vector": s * x,
    "vector times param vector": x * a,
    "param vector times vector": a * x,
    "division by a scalar": x / s,
    "scalar param plus vector": s + x,
    "scalar affine plus param vector": ol.sum(x) + a,
    "negation and subtraction": -(x - a) - (a - 2 * x),
    "index": x[1] + Y[1, 2] - Z[0, 0],
    "slices": x[0:2] + Y[1, 1:3] - Y[0, 0:2],
    "row and column": Y[1] + Z[:, 2],
    "transpose": Y.T @ a[0:2] + Z.T[1],
    "sums and means": ol.sum(Y) + ol.mean(Z) * s + ol.sum(x),
    "trace": ol.trace(Z) + ol.trace(C @ Z),
    "diag of a vector": ol.diag(x) @ a,
    "diag of a matrix": ol.diag(Z) - ol.diag(C) * x,
    "power one": (x - a) ** 1,
    "let": ol.let("r", A @ x - 1.0) * s,
    "composition": C @ (x + s * a) - ol.sum(Y @ M) * a,
    "constant rows": x - 1.0,
}


@pytest.mark.parametrize("expr", list(AFFINE.values()), ids=list(AFFINE))
def test_affine_coefficients_equal_autograd(expr):
    maps = AffineMaps(LAYOUT, [expr])
    assert maps.ok
    P = _params()
    c, J = maps.rows(P, B, torch.zeros((), dtype=D))
    c0, J0 = _taylor_reference([expr], P)
    torch.testing.assert_close(c, c0, rtol=0, atol=1e-12)
    torch.testing.assert_close(J, J0, rtol=0, atol=1e-12)


def test_affine_coefficients_of_several_rows_stack_in_order():
    exprs = [AFFINE["matrix @ vector"], AFFINE["trace"], AFFINE["slices"]]
    maps = AffineMaps(LAYOUT, exprs)
    c, J = maps.rows(_params(1), B, torch.zeros((), dtype=D))
    c0, J0 = _taylor_reference(exprs, _params(1))
    assert maps.sizes == [4, 1, 2]
    torch.testing.assert_close(c, c0, rtol=0, atol=1e-12)
    torch.testing.assert_close(J, J0, rtol=0, atol=1e-12)


def test_affine_coefficients_are_differentiable_in_the_parameters():
    exprs = [AFFINE["composition"], AFFINE["matrix @ matrix (moving right)"].T[0]]
    W = torch.randn(B, 7, N, dtype=D, generator=torch.Generator().manual_seed(3))

    def loss(c, J):
        return (W * J).sum() + (c * W[..., 0]).sum()

    P = _params(2, grad=True)
    g = torch.autograd.grad(loss(*AffineMaps(LAYOUT, exprs).rows(P, B, P["s"])), list(P.values()),
                            allow_unused=True, materialize_grads=True)
    g0 = torch.autograd.grad(loss(*_taylor_reference(exprs, P)), list(P.values()),
                             allow_unused=True, materialize_grads=True)
    assert any(t.abs().sum() > 0 for t in g)
    for u, v in zip(g, g0, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


QUADRATIC = {
    "sum_squares": ol.sum_squares(A @ x - 1.0),
    "scaled by a parameter": s * ol.sum_squares(x - a),
    "over a parameter": ol.sum_squares(Y @ M) / s,
    "quad_form, nonsymmetric matrix": ol.quad_form(x - a, C),
    "square of a scalar": ol.square(a @ x - 1.0),
    "power two": (a @ x + ol.trace(Z)) ** 2,
    "sum of squares spelled out": ol.sum(ol.square(A @ x)),
    "mixed": 0.5 * ol.sum_squares(x) - a @ x + s * ol.sum_squares(Z) - (-ol.sum(Y)),
    "let": ol.let("q", ol.sum_squares(x - a)) + 2.0,
    "affine only": a @ x + s,
}


@pytest.mark.parametrize("expr", list(QUADRATIC.values()), ids=list(QUADRATIC))
def test_quadratic_model_equals_autograd(expr):
    P = _params(4)
    model = QuadraticModel(LAYOUT, [(0.7, expr)])
    assert model.ok
    Q, p = model(P, B, torch.zeros((), dtype=D))
    Q0, p0 = quadratic_data(lambda z, PP: 0.7 * _values([expr], z, PP)[:, 0], P, B, N, D, "cpu")
    torch.testing.assert_close(Q, Q0, rtol=0, atol=1e-11)
    torch.testing.assert_close(p, p0, rtol=0, atol=1e-11)
    c, J, H = model.rows(P, B, torch.zeros((), dtype=D))
    c0, J0, H0 = _taylor_reference([expr], P, second=True)
    torch.testing.assert_close(c, 0.7 * c0, rtol=0, atol=1e-11)
    torch.testing.assert_close(J, 0.7 * J0, rtol=0, atol=1e-11)
    torch.testing.assert_close(H, 0.7 * H0, rtol=0, atol=1e-11)


def test_quadratic_model_is_differentiable_in_the_parameters():
    terms = [(1.0, QUADRATIC["mixed"]), (0.3, QUADRATIC["quad_form, nonsymmetric matrix"]),
             (2.0, QUADRATIC["over a parameter"])]
    W = torch.randn(B, N, N, dtype=D, generator=torch.Generator().manual_seed(5))

    def f(z, PP):
        return sum(w * _values([e], z, PP)[:, 0] for w, e in terms)

    P = _params(6, grad=True)
    Q, p = QuadraticModel(LAYOUT, terms)(P, B, torch.zeros((), dtype=D))
    Q0, p0 = quadratic_data(f, P, B, N, D, "cpu")
    for (u, v) in ((Q, Q0), (p, p0)):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-11)
    params = list(P.values())
    g = torch.autograd.grad((W * Q).sum() + (W[..., 0] * p).sum(), params,
                            allow_unused=True, materialize_grads=True)
    g0 = torch.autograd.grad((W * Q0).sum() + (W[..., 0] * p0).sum(), params,
                             allow_unused=True, materialize_grads=True)
    for u, v in zip(g, g0, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-11)


@pytest.mark.parametrize("expr", [ol.mean(ol.square(x)), ol.dot(x, x), ol.sum(x * x),
                                  ol.sum_squares(x) * ol.sum(x), ol.exp(ol.sum(x))],
                         ids=["mean of squares", "dot", "product", "cubic", "exp"])
def test_forms_not_covered_say_so(expr):
    assert not QuadraticModel(LAYOUT, [(1.0, expr)]).ok


def test_an_atom_without_a_tangent_rule_is_not_affine_covered():
    assert not AffineMaps(LAYOUT, [ol.exp(x)]).ok
    assert not AffineMaps(LAYOUT, [ol.sum_squares(x)]).ok


# ----------------------------------------------------------------- the paths using them

PROBLEMS = sorted(p.stem for p in (Path(__file__).parents[2] / "examples" / "problems")
                  .glob("*.opt"))


def _qp_layers():
    for name in PROBLEMS:
        layer = ol.load(f"examples/problems/{name}.opt")
        if layer.method == "kkt" and layer.plan.solver != "convex":
            yield name, layer


def test_every_qp_example_reads_the_same_data_from_its_coefficients(monkeypatch):
    # (not through the affine map of the data, tests/compiler/test_param_affine.py)
    monkeypatch.setattr(defaults, "PARAM_AFFINE_MAX_ENTRIES", 0)
    covered = seen = 0
    for name, layer in _qp_layers():
        seen += 1
        P, Bq, _ = expand_params(layer.problem, {k: v.requires_grad_(True) for k, v in
                                                 random_params(layer.problem, batch=2,
                                                               seed=7).items()})
        ours = canonicalize_qp(layer.program, P, Bq, D, "cpu")
        rows = layer.program.derived["rows"]
        covered += layer.program.quadratic_model().ok and all(
            r._coefficients[False].ok for r in rows if r)
        monkeypatch.setattr(defaults, "READOFF_COEFFICIENTS", False)
        ref = canonicalize_qp(layer.program, P, Bq, D, "cpu")
        monkeypatch.setattr(defaults, "READOFF_COEFFICIENTS", True)
        assert ours[6:] == ref[6:], name
        tensors = [(u, v) for u, v in zip(ours[:6], ref[:6], strict=True) if v is not None]
        for u, v in tensors:
            torch.testing.assert_close(u, v, rtol=0, atol=1e-12, msg=name)
        # and the same vector-Jacobian products to the parameters
        ws = [torch.linspace(-1, 1, v.numel(), dtype=D).reshape(v.shape) for _, v in tensors]
        pairs = list(zip(ws, tensors, strict=True))
        gu = torch.autograd.grad(sum((w * u).sum() for w, (u, _) in pairs),
                                 list(P.values()), allow_unused=True, materialize_grads=True)
        gv = torch.autograd.grad(sum((w * v).sum() for w, (_, v) in pairs),
                                 list(P.values()), allow_unused=True, materialize_grads=True)
        for u, v in zip(gu, gv, strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=1e-11, msg=name)
    assert covered == seen >= 7   # every shipped QP-path example is covered


def test_parts_without_parameters_are_made_once_and_reused():
    """Nodes and terms of no parameter are evaluated once per dtype and device: later calls
    with other parameters, in inference mode first or with gradients, agree with autograd."""
    rows = [AFFINE["composition"], x - 1.0, ol.sum(Y) + ol.trace(Z)]
    maps = AffineMaps(LAYOUT, rows)
    assert {id(n) for n in maps.fixed} >= {id(x), id(Y), id(Z)}
    terms = [(1.0, 0.5 * ol.sum_squares(x) + ol.sum(Y)), (2.0, s * ol.sum_squares(C @ x - a))]
    model = QuadraticModel(LAYOUT, terms)
    assert model.fixed == [True, False]
    for seed, mode in ((10, torch.inference_mode), (11, torch.enable_grad),
                       (12, torch.no_grad)):
        P = _params(seed, grad=mode is torch.enable_grad)
        with mode():
            c, J = maps.rows(P, B, torch.zeros((), dtype=D))
            Q, p = model(P, B, torch.zeros((), dtype=D))
        c0, J0 = _taylor_reference(rows, P)
        Q0, p0 = quadratic_data(lambda z, PP: sum(w * _values([e], z, PP)[:, 0]
                                                  for w, e in terms), P, B, N, D, "cpu")
        for u, v in ((c, c0), (J, J0), (Q, Q0), (p, p0)):
            torch.testing.assert_close(u, v, rtol=0, atol=1e-11)
        if mode is torch.enable_grad:   # the fixed parts do not stop the gradients
            assert J.requires_grad and Q.requires_grad
