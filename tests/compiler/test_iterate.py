"""The compiler's forward solvers (optlayer.compiler.iterate / quadratic): quadratic data,
stacked-copy Jacobians, forward-backward Newton vs cvxpy and vs the plain first-order
loop, Newton steps in mirror descent, reported non-convergence, the backward's dense
Jacobian check."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import optlayer as ol
import optlayer.ir as ir
from optlayer import defaults
from optlayer.compiler import expand_params, iterate
from optlayer.compiler.quadratic import is_quadratic, lambda_max
from optlayer.layer import random_params

D = torch.float64


def _bound(layer, batch, seed):
    vals = random_params(layer.problem, batch=batch, seed=seed)
    P, B, _ = expand_params(layer.problem, layer.problem.check_params(vals))
    return vals, P, B


def test_jacobian_matches_jacrev():
    A = torch.randn(4, 4, dtype=D, generator=torch.Generator().manual_seed(0))

    def G(z):
        return torch.tanh(z @ A.T) + z**3

    z = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    J = iterate.jacobian(lambda Z, k: G(Z), z)
    ref = torch.stack([torch.func.jacrev(G)(z[b:b + 1])[0, :, 0, :] for b in range(3)])
    torch.testing.assert_close(J, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("text,expected", [
    ("sum_squares(A @ x - y) + 2 * quad_form(x, S) + y @ x", True),
    ("sum_squares(x) / r + mean(square(x))", True),
    ("sum(exp(x))", False),
    ("square(sum_squares(x))", False),  # degree 4
    ("sum_squares(x)^2", False),
    ("sum(exp(y)) * sum_squares(x)", True),  # parameter-only factors are constants
], ids=["lsq_quadform", "div_by_param", "exp", "quartic", "quartic_power", "param_atom"])
def test_is_quadratic(text, expected):
    src = (f"dim n = 3\nparam A[n, n]\nparam S[n, n] psd\nparam y[n]\nparam r pos\nvar x[n]\n"
           f"minimize {text}\n")
    layer = ol.compile(src)
    assert is_quadratic([e for _, e in layer.plan.smooth]) is expected
    assert layer.program.quadratic is expected


def test_quadratic_data_is_exact():
    layer = ol.load("examples/problems/elastic_net.opt")
    _vals, P, B = _bound(layer, 3, 0)
    prog = layer.program
    Q, p = prog.quad(P)
    z = torch.randn(B, prog.layout.size, dtype=D, generator=torch.Generator().manual_seed(2))
    zero = torch.zeros_like(z)
    lhs = prog.f(z, P) - prog.f(zero, P)
    rhs = 0.5 * (z * (Q @ z.unsqueeze(-1)).squeeze(-1)).sum(-1) + (p * z).sum(-1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Q, Q.transpose(-1, -2))
    assert bool((lambda_max(Q) >= torch.linalg.eigvalsh(Q)[..., -1] - 1e-12).all())


SRC_SIMPLEX = """dim n = 6
param M[n, n]
param q[n]
var x[n]
minimize 0.5 * sum_squares(M @ x) + 0.01 * sum_squares(x) + q @ x
subject to
    x in simplex
"""

SRC_LASSO = """dim n = 6
param M[n, n]
param q[n]
param lam pos
var x[n]
minimize 0.5 * sum_squares(M @ x) + q @ x + lam * norm1(x)
"""


@pytest.mark.parametrize("src", [SRC_SIMPLEX, SRC_LASSO], ids=["simplex", "lasso"])
def test_forward_backward_newton_matches_cvxpy(src):
    """Random QPs (seeded batch of 16; on the lasso one, full semismooth Newton steps
    without a line search cycle on 7 items): the envelope line search reaches the cvxpy
    solution on every item."""
    layer = ol.compile(src)
    assert layer.program.quadratic
    vals, P, B = _bound(layer, 16, 3)
    qp = layer.program.quad(P)
    r = iterate.fbn_solve(layer.program, P, torch.zeros(B, 6, dtype=D), 1e-12, 500, qp)
    assert r.status.tolist() == [0] * B
    for b in range(B):
        M, q = vals["M"][b].numpy(), vals["q"][b].numpy()
        x = cp.Variable(6)
        obj = 0.5 * cp.sum_squares(M @ x) + q @ x
        if "simplex" in src:
            cons = [x >= 0, cp.sum(x) == 1]
            obj = obj + 0.01 * cp.sum_squares(x)
        else:
            cons = []
            obj = obj + float(vals["lam"][b]) * cp.norm(x, 1)
        cp.Problem(cp.Minimize(obj), cons).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        np.testing.assert_allclose(r.z[b].numpy(), x.value, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, flat", [("lasso", True), ("elastic_net", True),
                                        ("constrained_ls", True), ("svm_dual", True),
                                        ("group_lasso", False), ("psd_trace", False),
                                        ("cone_sets", False)])
def test_a_program_knows_whether_its_terms_and_sets_are_polyhedral(name, flat):
    assert ol.load(f"examples/problems/{name}.opt").program.polyhedral is flat


def test_a_polyhedral_envelope_takes_the_trial_step_of_least_value(monkeypatch):
    # lasso at batch 32 (an l1 term): the trial of least envelope value reaches the
    # solution in fewer iterations than the largest step that passes (the same point)
    layer = ol.load("examples/problems/lasso.opt")
    _vals, P, B = _bound(layer, 32, 0)
    prog = layer.program
    z0 = torch.zeros(B, prog.layout.size, dtype=D)
    least = iterate.fbn_solve(prog, P, z0, 1e-12, 500, prog.quad(P))
    monkeypatch.setattr(type(prog), "polyhedral", property(lambda self: False))
    largest = iterate.fbn_solve(prog, P, z0, 1e-12, 500, prog.quad(P))
    assert least.status.tolist() == largest.status.tolist() == [0] * B
    torch.testing.assert_close(least.z, largest.z, atol=1e-9, rtol=0)
    assert least.iterations < largest.iterations


@pytest.mark.parametrize("name", ["svm_dual", "group_lasso", "portfolio"])
def test_forward_backward_newton_agrees_with_first_order(name):
    layer = ol.load(f"examples/problems/{name}.opt")
    _vals, P, B = _bound(layer, 8, 0)
    prog = layer.program
    z0 = prog.init(P, B, D, "cpu")
    fast = iterate.fbn_solve(prog, P, z0, 1e-12, 500, prog.quad(P))
    slow = iterate.prox_grad_solve(prog, P, z0, 1e-12, 20000, None)
    assert fast.status.tolist() == [0] * B and slow.status.tolist() == [0] * B
    assert fast.iterations <= 30
    torch.testing.assert_close(fast.z, slow.z, atol=1e-8, rtol=0)


def test_newton_steps_in_mirror_descent_agree_with_plain_eg(monkeypatch):
    layer = ol.load("examples/problems/entropic_assignment.opt")
    _vals, P, B = _bound(layer, 4, 1)
    prog = layer.program
    z0 = prog.init(P, B, D, "cpu")
    fast = iterate.mirror_solve(prog, P, z0, 1e-12, 5000)
    monkeypatch.setattr(defaults, "FP_NEWTON_MAX_SIZE", 0)
    plain = iterate.mirror_solve(prog, P, z0, 1e-12, 5000)
    assert fast.iterations < plain.iterations
    torch.testing.assert_close(fast.z, plain.z, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["lasso", "water_filling", "entropic_assignment",
                                  "huber_regression"])
def test_non_convergence_is_reported(name):
    layer = ol.load(f"examples/problems/{name}.opt", maxiter=1, on_failure="ignore")
    layer(**random_params(layer.problem, batch=3, seed=0))
    assert bool((layer.info.status != 0).all())


def test_backward_after_an_interleaved_call():
    """The backward's dense blocks come from the call's own saved values: another call
    between a forward and its backward leaves the gradient equal to a fresh layer's."""
    layer = ol.load("examples/problems/lasso.opt")
    v1 = {k: t.requires_grad_() for k, t in random_params(layer.problem, batch=3, seed=0).items()}
    v2 = {k: t.requires_grad_() for k, t in random_params(layer.problem, batch=3, seed=1).items()}
    out1 = layer(**v1)
    layer(**v2)  # replaces the layer's dense Jacobian builder
    g_stale = torch.autograd.grad(out1.sum(), list(v1.values()))
    fresh = ol.load("examples/problems/lasso.opt")
    g_ref = torch.autograd.grad(fresh(**v1).sum(), list(v1.values()))
    for a, b in zip(g_stale, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_tape_constants_first_made_in_inference_mode_stay_ordinary():
    """A tape caches its constants per dtype and device; one first made inside
    torch.inference_mode (where the forward-backward Newton solve runs) must still serve
    a later differentiable evaluation."""
    from optlayer.compiler.lower import Tape

    x = ir.Variable(2, name="x")
    root = ir.apply("sum_squares", [x * ir.Constant(3.0)])
    tape = Tape([root])
    with torch.inference_mode():
        tape.run({"x": torch.zeros(1, 2, dtype=D)})
    z = torch.ones(1, 2, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(tape.run({"x": z})[id(root)].sum(), z)
    torch.testing.assert_close(g, torch.tensor([[18.0, 18.0]], dtype=D))   # 2 c^2 x


def test_second_order_through_the_layer():
    """A create_graph backward takes the differentiable N-product path: the derivative of
    a gradient matches a central finite difference of that gradient."""
    layer = ol.compile("dim n = 3\nparam y[n]\nparam lam pos\nvar x[n]\n"
                       "minimize sum(exp(x)) + sum_squares(x - y) + lam * sum_squares(x)\n",
                       tol=1e-13)
    lam = torch.tensor(0.7, dtype=D)

    def g(yy):
        yy = yy.detach().requires_grad_()
        (gy,) = torch.autograd.grad((layer(y=yy, lam=lam) ** 2).sum(), yy, create_graph=True)
        return yy, gy

    y0 = torch.tensor([0.3, -0.2, 0.5], dtype=D)
    yy, gy = g(y0)
    (hv,) = torch.autograd.grad(gy.sum(), yy)
    eps, e0 = 1e-5, torch.eye(3, dtype=D)[0]
    fd = (g(y0 + eps * e0)[1].sum() - g(y0 - eps * e0)[1].sum()).detach() / (2 * eps)
    torch.testing.assert_close(hv[0], fd, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,data", [("ridge", "X"), ("group_lasso", "X1"),
                                       ("constrained_ls", "A")])
def test_second_order_through_a_quadratic_layer(name, data):
    """A quadratic f's map uses the forward's (Q, p), differentiable in the parameters:
    a create_graph backward through it (stationary, prox_grad, proj_grad) gives the
    derivative of the gradient, as a central finite difference of the gradient does."""
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "problems" / f"{name}.opt"
    layer = ol.load(path, tol=1e-13)
    assert layer.program.quadratic
    vals = random_params(layer.problem, batch=2, seed=3)

    def grad_of(t, graph):
        t = t.detach().requires_grad_()
        out = layer(**{**vals, data: t})
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        (g,) = torch.autograd.grad(sum((o ** 2).sum() for o in outs), t, create_graph=graph)
        return t, g

    gen = torch.Generator().manual_seed(4)
    w = torch.randn(vals[data].shape, generator=gen, dtype=D)
    d = torch.randn(vals[data].shape, generator=gen, dtype=D)
    t, g = grad_of(vals[data], True)
    (hw,) = torch.autograd.grad((g * w).sum(), t)
    eps = 1e-6
    fd = ((grad_of(vals[data] + eps * d, False)[1] - grad_of(vals[data] - eps * d, False)[1])
          * w).sum() / (2 * eps)
    torch.testing.assert_close((hw * d).sum(), fd, atol=1e-6 * (1 + float(fd.abs())), rtol=0)


def test_torch_func_over_a_layer_refused_clearly_or_exact():
    """A forward solver that takes autograd inside cannot run under torch.func: an
    OptTypeError saying so and what to use, not torch's internal error; where the
    forward can run (ridge's closed-form Newton), jacrev is exact."""
    from pathlib import Path

    root = Path(__file__).parents[2] / "examples" / "problems"
    lasso = ol.load(root / "lasso.opt")
    vals = random_params(lasso.problem, seed=0)
    with pytest.raises(ol.OptTypeError, match="torch.func transform") as info:
        torch.func.jacrev(lambda X: lasso(**{**vals, "X": X}))(vals["X"])
    assert "torch.autograd.functional.jacobian" in info.value.hint
    J = torch.autograd.functional.jacobian(lambda X: lasso(**{**vals, "X": X}), vals["X"])
    X = vals["X"].clone().requires_grad_()
    (row,) = torch.autograd.grad(lasso(**{**vals, "X": X})[0], X)
    assert J.shape == (5, *X.shape)
    torch.testing.assert_close(J[0], row, rtol=0, atol=1e-12)

    ridge = ol.load(root / "ridge.opt", tol=1e-13)
    rv = random_params(ridge.problem, seed=0)
    Jf = torch.func.jacrev(lambda X: ridge(**{**rv, "X": X}))(rv["X"])
    Ja = torch.autograd.functional.jacobian(lambda X: ridge(**{**rv, "X": X}), rv["X"])
    torch.testing.assert_close(Jf, Ja, rtol=0, atol=1e-12)


def test_value_and_jacobian_matches_jacobian():
    A = torch.randn(4, 4, dtype=D, generator=torch.Generator().manual_seed(2))

    def G(Z, step, k):
        return torch.tanh(Z @ A.T) * step[:, None] + Z ** 2

    z = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(3))
    step = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    Tz, J = iterate.value_and_jacobian(G, z, step)
    torch.testing.assert_close(Tz, G(z, step, 1), rtol=0, atol=1e-14)
    ref = iterate.jacobian(lambda Z, k: G(Z, step.repeat(k), k), z)
    torch.testing.assert_close(J, ref, rtol=0, atol=1e-14)


_PROX_JAC = {
    "simplex_blocks": "dim m = 4\nparam y[2 * m]\nvar a[m]\nvar b[m]\n"
                      "minimize sum_squares(a - y[0:m]) + sum_squares(b - y[m:2 * m])\n"
                      "subject to\n a in simplex\n b in simplex(2)",
    "group_blocks": "dim k = 3\nparam y[2 * k]\nparam lam pos\nvar a[k]\nvar b[k]\n"
                    "minimize sum_squares(a - y[0:k]) + sum_squares(b - y[k:2 * k])"
                    " + lam * norm2(a) + lam * norm2(b)",
    "mixed": "dim n = 3\nparam y[3 * n + 1]\nparam lam pos\nvar u[n]\nvar v[n]\nvar w[n]\nvar s\n"
             "minimize sum_squares(u - y[0:n]) + sum_squares(v - y[n:2 * n])"
             " + sum_squares(w - y[2 * n:3 * n]) + square(s - y[3 * n]) + lam * norm1(v)"
             "\nsubject to\n u >= 0\n w in simplex\n s <= 0.5",
    "balls": "dim n = 3\nparam y[3 * n]\nparam r pos\nvar u[n]\nvar v[n]\nvar w[n]\n"
             "minimize sum_squares(u - y[0:n]) + sum_squares(v - y[n:2 * n])"
             " + sum_squares(w - y[2 * n:3 * n])"
             "\nsubject to\n u in ball1(r)\n v in ball2(r)\n w in ballinf(0.7)",
    "psd": "dim n = 3\nparam C[n, n]\nvar X[n, n] psd\nminimize sum_squares(X - C)",
    # group blocks beside another variable, weights large enough that some groups are cut
    "group_cut": "dim k = 3\nparam y[2 * k + 2]\nparam lam pos\nvar s[2]\nvar a[k]\nvar b[k]\n"
                 "minimize sum_squares(s - y[0:2]) + sum_squares(a - y[2:k + 2])"
                 " + sum_squares(b - y[k + 2:2 * k + 2]) + 3 * lam * norm2(a)"
                 " + 3 * lam * norm2(b)\nsubject to\n s >= 0",
}


@pytest.mark.parametrize("name", list(_PROX_JAC), ids=list(_PROX_JAC))
def test_prox_jacobian_matches_autograd(name):
    """The closed-form prox Jacobian equals autograd's on random points (generic: no
    point on a kink)."""
    layer = ol.compile(_PROX_JAC[name], method="prox_grad" if "lam" in _PROX_JAC[name]
                       and "simplex" not in _PROX_JAC[name] else None)
    _vals, P, B = _bound(layer, 5, 0)
    prog = layer.program
    jac = prog.prox_jacobian_fn(P)
    assert jac is not None
    g = torch.Generator().manual_seed(4)
    y = 2 * torch.randn(B, prog.layout.size, dtype=D, generator=g)
    step = 0.3 + torch.rand(B, dtype=D, generator=g)
    x = prog.prox(y, step, P)
    torch.testing.assert_close(prog.prox_fn(P)(y, step), x, rtol=0, atol=1e-14)
    ref = iterate.jacobian(lambda Y, k: prog.prox(Y, iterate.replicate(step, k),
                                                  iterate.replicate(P, k)), y)
    torch.testing.assert_close(jac(y, x, step), ref, rtol=0, atol=1e-12)
    if name == "group_cut":  # both branches of the group Jacobian are exercised
        cut = x[:, 2:].unflatten(1, (2, 3)).norm(dim=-1) == 0
        assert bool(cut.any()) and not bool(cut.all())


_PENALTY_CASES = {
    **{k: _PROX_JAC[k] for k in ("group_blocks", "mixed", "group_cut")},
    # group terms of two sizes (not merged), an l1 term on a nonneg variable
    "group_sizes": "dim k = 3\nparam y[2 * k + 1]\nparam lam pos\nvar a[k]\nvar b[k + 1]\n"
                   "var c[2]\nminimize sum_squares(a - y[0:k]) + sum_squares(b - y[k:2 * k + 1])"
                   " + sum_squares(c - y[0:2]) + lam * norm2(a) + 2 * lam * norm2(b)"
                   " + lam * norm1(c)\nsubject to\n c >= 0",
}


@pytest.mark.parametrize("name", list(_PENALTY_CASES), ids=list(_PENALTY_CASES))
def test_specialised_penalty_equals_the_general_one(name):
    """``penalty_fn`` (weights evaluated once, equal-size groups under one norm) gives
    ``Program.penalty``'s values, also on stacked copies of the batch."""
    layer = ol.compile(_PENALTY_CASES[name], method="prox_grad")
    _vals, P, B = _bound(layer, 5, 0)
    prog = layer.program
    assert prog._prox_parts(P) is not None    # the specialised path
    z = torch.randn(B, prog.layout.size, dtype=D, generator=torch.Generator().manual_seed(2))
    ref = prog.penalty(z, P)
    assert bool((ref > 0).all())
    torch.testing.assert_close(prog.penalty_fn(P)(z), ref, rtol=1e-15, atol=0)
    torch.testing.assert_close(prog.penalty_fn(P, 3)(z.repeat(3, 1)), ref.repeat(3),
                               rtol=1e-15, atol=0)


def test_entropy_simplex_is_one_newton_step():
    """With the curvature step eta = 1 / tau the mirror-descent map of <c, p> - tau H(p) is
    constant: the solution softmax(-c / tau) in one iteration."""
    layer = ol.load("examples/problems/entropy_simplex.opt")
    vals = random_params(layer.problem, batch=4, seed=0)
    p = layer(**vals)
    assert layer.info.iterations == 1
    ref = torch.softmax(-vals["c"] / vals["tau"][:, None], dim=-1)
    torch.testing.assert_close(p, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("value", [0.0, 1e-300], ids=["zero", "subnormal-scale"])
@pytest.mark.parametrize("name", ["kl_projection", "entropic_assignment"])
def test_mirror_descent_from_a_warm_start_on_the_boundary(name, value):
    """An entry of the warm start at (or near) zero stays there under the mirror-descent
    map (a fixed point that is not the solution): the solve must still find the
    solution, OPTIMAL."""
    layer = ol.load(f"examples/problems/{name}.opt")
    vals = random_params(layer.problem, batch=3, seed=0)
    x = layer(**vals)
    ws = x.clone()
    ws[:, 0] = value
    y = layer(**vals, warm_start=ws)
    assert (layer.info.status == 0).all()
    torch.testing.assert_close(y, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["proj_grad", "prox_grad"])
@pytest.mark.parametrize("name", ["entropy_simplex", "kl_projection"])
def test_projected_gradient_keeps_off_the_boundary_of_an_entropy_term(name, method):
    """The gradient of an entropy term is infinite at 0, its value is not: the projected
    gradient loop backs off a step onto the boundary (it ended 9 of 32 items of
    entropy_simplex NUMERICAL_ERROR after maxiter iterations), and starts from the cold
    start where the warm start lies on it."""
    layer = ol.load(f"examples/problems/{name}.opt", method=method)
    vals = random_params(layer.problem, batch=32, seed=0)
    x = ol.load(f"examples/problems/{name}.opt")(**vals)
    y = layer(**vals)
    assert (layer.info.status == 0).all()
    torch.testing.assert_close(y, x, rtol=0, atol=1e-8)
    ws = torch.zeros_like(x)
    ws[:, 0] = 1.0
    y = layer(**vals, warm_start=ws)
    assert (layer.info.status == 0).all()
    torch.testing.assert_close(y, x, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["entropic_assignment", "water_filling"])
def test_backward_with_the_forward_jacobian_of_another_call(name):
    """The backward reuses the forward's last Jacobian, saved with its own call (and
    checked against one product of the map): after an interleaved call the gradient still
    equals a fresh layer's."""
    layer = ol.load(f"examples/problems/{name}.opt")
    v1 = {k: t.requires_grad_() for k, t in random_params(layer.problem, batch=3, seed=0).items()}
    v2 = {k: t.requires_grad_() for k, t in random_params(layer.problem, batch=3, seed=1).items()}
    out1 = layer(**v1)
    layer(**v2)
    g_stale = torch.autograd.grad(out1.sum(), list(v1.values()))
    fresh = ol.load(f"examples/problems/{name}.opt")
    out = fresh(**v1)
    g_ref = torch.autograd.grad(out.sum(), list(v1.values()))
    for a, b in zip(g_stale, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_newton_keeps_going_across_huber_pieces():
    """Damped Newton steps across the pieces of a piecewise-quadratic objective make slow
    progress for a few iterations; that is not the roundoff floor (these items used to
    stop with MAX_ITER after 3 iterations)."""
    layer = ol.load("examples/problems/huber_regression.opt")
    vals = random_params(layer.problem, batch=8, seed=1)
    w = layer(**vals)
    assert layer.info.status.tolist() == [0] * 8
    wr = w.detach().requires_grad_()
    r = torch.einsum("bmn,bn->bm", vals["X"], wr) - vals["t"]
    a = r.abs()
    f = torch.where(a <= 1, a * a, 2 * a - 1).sum() + (vals["lam"][:, None] * wr * wr).sum()
    (g,) = torch.autograd.grad(f, wr)
    assert float(g.abs().max()) <= 1e-8


@pytest.mark.parametrize("name", ["entropic_assignment", "kl_projection"])
def test_mirror_step_jacobian_from_the_hessian(name):
    """The closed-form mirror-descent Jacobian from (g, H) equals autograd's on the map."""
    layer = ol.load(f"examples/problems/{name}.opt")
    _vals, P, B = _bound(layer, 4, 2)
    prog = layer.program
    g = torch.Generator().manual_seed(5)
    z = torch.softmax(torch.randn(B, prog.layout.size, dtype=D, generator=g), dim=-1)
    step = 0.2 + torch.rand(B, dtype=D, generator=g)
    reps = iterate._replicas(P)
    gz, H = iterate.value_and_jacobian(lambda Z, s, k: prog.grad(Z, reps(k)), z, z.new_ones(B))
    Tz, J = iterate.md_value_and_jacobian(prog.md_fn(P), z, gz, H, step)
    Tr, Jr = iterate.value_and_jacobian(
        lambda Z, s, k: prog.fixed_point(Z, reps(k), s), z, step)
    torch.testing.assert_close(Tz, Tr, rtol=0, atol=1e-14)
    torch.testing.assert_close(J, Jr, rtol=0, atol=1e-12)


_UNBOUNDED = {
    # minimize sum(exp(x)) - y'x: a minimiser exp(x) = y exists only where y > 0
    "stationary": "minimize sum(exp(x)) - y @ x\n",
    # minimize 0.1 |x|_1 - y'x: bounded only where |y| <= 0.1
    "prox_grad": "minimize 0.1 * norm1(x) - y @ x\n",
    # the first over x <= 1: still no minimiser where some y_i <= 0
    "proj_grad": "minimize sum(exp(x)) - y @ x\nsubject to\n    x <= 1\n",
}


@pytest.mark.parametrize("method", sorted(_UNBOUNDED))
def test_unbounded_items_are_not_called_optimal(method):
    """On an item with no minimiser the iterates run off to infinity while the gradient
    mapping stays away from zero; relative to ``1 + ||x||`` its residual vanished, and
    such items came back OPTIMAL with ``|x|`` ~ 1e16-1e19 (stationary, prox_grad).
    Relative to its own terms (``relative_residual``) it does not."""
    layer = ol.compile("dim n = 3\nparam y[n]\nvar x[n]\n" + _UNBOUNDED[method],
                       method=method, maxiter=60, on_failure="ignore")
    y = torch.tensor([[-1.0, -2.0, -0.5], [1.0, 2.0, 0.5], [0.05, -0.05, 0.02],
                      [0.5, 0.8, 0.3]], dtype=D)
    x = layer(y=y)
    bounded = {"stationary": [False, True, False, True],
               "prox_grad": [False, False, True, False],
               "proj_grad": [False, True, False, True]}[method]
    status = layer.info.status.tolist()
    for b, ok in enumerate(bounded):
        if ok:
            assert status[b] == 0, (b, status)
        else:
            assert status[b] != 0, (b, status, x[b])
    if method == "prox_grad":   # the bounded item: 0 is optimal (|y| <= 0.1)
        torch.testing.assert_close(x[2], torch.zeros(3, dtype=D), atol=1e-12, rtol=0)
    else:                       # where y > 0 in every entry: x = min(log y, 1)
        torch.testing.assert_close(x[1], torch.log(y[1]).clamp(max=1), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name,scale_lam", [("lasso", 2), ("ridge", 2), ("nnls", None),
                                            ("group_lasso", 2), ("logistic_regression", 2)])
@pytest.mark.parametrize("c", [1e3, 1e6])
def test_solutions_are_invariant_to_the_scale_of_the_data(name, scale_lam, c):
    """Scaling the data by ``c`` and ``lam`` by ``c^2`` leaves the minimiser of a least
    squares fit unchanged (for logistic regression, ``X`` by ``c`` and ``lam`` by
    ``c^2`` divide it by ``c``). The residual is judged relative to the terms it
    is made of, so the scaled problems converge in as many iterations (relative to
    ``1 + ||x||`` they ran to maxiter with MAX_ITER). Not for c < 1: the ``1 +`` makes
    the test absolute for data that small, as solve_qp's is (docs/qp.md)."""
    layer = ol.load(f"examples/problems/{name}.opt")
    vals = random_params(layer.problem, batch=6, seed=1)
    base = layer(**vals)
    its = layer.info.iterations
    scaled = {}
    for k, v in vals.items():
        if k == "lam":
            scaled[k] = v * c ** scale_lam if scale_lam else v
        elif name == "logistic_regression" and k != "X":
            scaled[k] = v
        else:
            scaled[k] = v * c
    out = layer(**scaled)
    assert layer.info.status.tolist() == [0] * 6
    assert layer.info.iterations <= its + 2
    base, out = (torch.cat(list(t), -1) if isinstance(t, tuple) else t for t in (base, out))
    expect = base / c if name == "logistic_regression" else base
    torch.testing.assert_close(out, expect, rtol=1e-7, atol=1e-9 * float(expect.abs().max()))


def test_cold_start_is_the_minimiser_on_the_affine_hull_of_the_simplices():
    """With sets only, forward-backward Newton starts cold from argmin f over the affine
    hull of the sets (``sum = value`` for each simplex). Where that point has no
    negative entry it is the solution: no iteration."""
    layer = ol.compile("param K[3, 4]\nparam L[3, 3]\nparam c[4]\nparam q[3]\nparam v pos\n"
                       "var x[4]\nvar y[3]\n"
                       "minimize 0.5 * sum_squares(K @ x + L @ y) + 5 * sum_squares(x) "
                       "+ 5 * sum_squares(y) + c @ x + q @ y\n"
                       "subject to\n x in simplex\n y in simplex(v)", method="proj_grad")
    assert layer.method == "proj_grad"
    g = torch.Generator().manual_seed(0)
    vals = {k: 0.3 * torch.randn(4, *s, dtype=D, generator=g)
            for k, s in (("K", (3, 4)), ("L", (3, 3)), ("c", (4,)), ("q", (3,)))}
    vals["v"] = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=D)
    x, y = layer(**vals)
    assert layer.info.iterations == 0
    # the closed form on z = (x, y): [Q A'; A 0] [z; lam] = [-p; b]
    A = torch.zeros(2, 7, dtype=D)
    A[0, :4] = A[1, 4:] = 1.0
    for i in range(4):
        M = torch.cat([vals["K"][i], vals["L"][i]], dim=1)
        Q = M.T @ M + 10 * torch.eye(7, dtype=D)
        p = torch.cat([vals["c"][i], vals["q"][i]])
        KKT = torch.cat([torch.cat([Q, A.T], 1), torch.cat([A, torch.zeros(2, 2, dtype=D)], 1)])
        rhs = torch.cat([-p, torch.tensor([1.0, float(vals["v"][i])], dtype=D)])
        z = torch.linalg.solve(KKT, rhs)[:7]
        assert bool((z > 0).all())
        torch.testing.assert_close(torch.cat([x[i], y[i]]), z, rtol=0, atol=1e-12)
