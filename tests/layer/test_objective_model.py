"""The closed-form derivative model of a smooth objective (``compiler.smooth.objective_model``)
that the stationary Newton solve, the first-order loop and the convex interior point use in
place of autograd: its value, gradient and Hessian equal autograd's on the lowered
objective; the solvers take the same steps with it as without; objectives it cannot model,
and data too large for its read-off, keep autograd; and the layers built on it (including
``huber`` with a parameter ``M``, new to the smooth-atom models) solve to cvxpy's solution
with the gradients of finite differences. ``huber`` rows on the convex path use the same
atom model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optlayer as ol
from optlayer.compiler import iterate
from optlayer.compiler.canon import _structure
from optlayer.compiler.smooth import objective_model
from optlayer.layer import random_params

from .reference import solve_reference

D = torch.float64

MODELLED = {
    "huber": "dim m = 6\ndim n = 3\nparam X[m, n]\nparam t[m]\nvar w[n]\n"
             "minimize sum(huber(X @ w - t)) + 0.1 * sum_squares(w)",
    "huber_param_M": "dim m = 6\ndim n = 3\nparam X[m, n]\nparam t[m]\nparam M pos\nvar w[n]\n"
                     "minimize sum(huber(X @ w - t, M)) + 0.1 * sum_squares(w)",
    "logistic_weighted": "dim m = 6\ndim n = 3\nparam X[m, n]\nparam s[m]\nparam lam pos\n"
                         "var w[n]\nminimize 2 * sum(logistic(-s * (X @ w))) / lam"
                         " + lam * sum_squares(w - 1)",
    "logsumexp_and_linear": "dim k = 4\ndim d = 3\nparam W[k, d]\nparam t[k]\nvar v[d]\n"
                            "minimize logsumexp(W @ v) - dot(t, W @ v) + 0.5 * sum_squares(v)",
    "two_atoms": "dim n = 3\nparam a[n]\nparam y[n]\nvar x[n]\n"
                 "minimize exp(dot(a, x)) + sum(huber(x - y)) + 0.2 * sum_squares(x)",
}


def _prog_and_params(src, seed=0, batch=4):
    layer = ol.compile(src)
    P = random_params(layer.problem, batch=batch, seed=seed)
    return layer, P


def _autograd_derivatives(program, P, z):
    zz = z.clone().requires_grad_(True)
    with torch.enable_grad():
        f = program.f(zz, P)
        (g,) = torch.autograd.grad(f.sum(), zz, create_graph=True)
        H = torch.stack([torch.autograd.grad(g[:, j].sum(), zz, retain_graph=True)[0]
                         for j in range(z.shape[1])], 1)
    return f.detach(), g.detach(), H


@pytest.mark.parametrize("name", list(MODELLED), ids=list(MODELLED))
def test_model_equals_autograd(name):
    layer, P = _prog_and_params(MODELLED[name])
    assert layer.method == "stationary"
    program = layer.program
    model = objective_model(program, P)
    assert model is not None
    N = program.layout.size
    for seed in (1, 2):
        z = torch.randn(4, N, generator=torch.Generator().manual_seed(seed), dtype=D)
        f0, g0, H0 = _autograd_derivatives(program, P, z)
        f, g, H = model.value_grad_hess(z)
        torch.testing.assert_close(f, f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.value(z), f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(H.expand_as(H0), H0, rtol=1e-12, atol=1e-12)


def test_huber_model_has_both_pieces_in_the_test():
    # the huber cases above are only a test of both pieces if residuals fall on both sides
    layer, P = _prog_and_params(MODELLED["huber_param_M"])
    r = P["X"] @ torch.randn(3, dtype=D, generator=torch.Generator().manual_seed(1)) - P["t"]
    inside = r.abs() <= P["M"].view(-1, 1)
    assert bool(inside.any()) and bool((~inside).any())


@pytest.mark.parametrize("name", ["huber_param_M", "logistic_weighted", "two_atoms"])
def test_newton_takes_the_same_steps_with_the_model(name):
    layer, P = _prog_and_params(MODELLED[name], batch=8)
    program = layer.program
    z0 = program.init(P, 8, D, torch.device("cpu"))
    with torch.no_grad():
        with_model = iterate.newton_solve(program, P, z0, 1e-12, 50, None,
                                          objective_model(program, P))
        without = iterate.newton_solve(program, P, z0, 1e-12, 50, None, None)
    assert with_model.iterations == without.iterations >= 2
    torch.testing.assert_close(with_model.z, without.z, rtol=0, atol=1e-12)
    assert with_model.status.tolist() == without.status.tolist() == [0] * 8
    assert without.jacobian is None and with_model.jacobian is not None


def test_objective_without_a_model_falls_back_to_autograd():
    # exp(x ^ 2) is smooth and convex but not a smooth atom of an affine argument
    layer, P = _prog_and_params("dim n = 3\nparam y[n]\nvar x[n]\n"
                                "minimize sum(exp(square(x))) + sum_squares(x - y)")
    assert layer.method == "stationary"
    assert objective_model(layer.program, P) is None
    x = layer(**P)
    assert layer.info.status.tolist() == [0] * 4
    # stationary in closed form: 2 x exp(x^2) + 2 (x - y) = 0 (cvxpy's exponential cone
    # solve is only good to ~1e-6 here)
    grad = 2 * x * torch.exp(x * x) + 2 * (x - P["y"])
    assert float(grad.abs().max()) <= 1e-9 and float(x.abs().max()) > 0.1


@pytest.mark.parametrize("name", ["huber_param_M", "two_atoms"])
def test_layer_matches_cvxpy_and_finite_differences(name):
    layer = ol.compile(MODELLED[name], tol=1e-13)
    P = random_params(layer.problem, batch=3, seed=3)
    out = layer(**P)
    assert layer.info.status.tolist() == [0] * 3
    for i in range(3):
        ref, _ = solve_reference(layer.problem, {k: v[i].numpy() for k, v in P.items()})
        np.testing.assert_allclose(out[i].numpy(), next(iter(ref.values())), atol=1e-6, rtol=0)
    # every parameter (M included) moves the solution as finite differences say
    gen = torch.Generator().manual_seed(7)
    wt = torch.randn(out.shape, generator=gen, dtype=D)
    dirs = {k: torch.randn(v.shape, generator=gen, dtype=D) for k, v in P.items()}
    ins = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    grads = torch.autograd.grad((layer(**ins) * wt).sum(), list(ins.values()))
    analytic = sum(float((g * dirs[k]).sum()) for g, k in zip(grads, ins, strict=True))
    eps = 1e-6
    with torch.no_grad():
        plus = layer(**{k: v + eps * dirs[k] for k, v in P.items()})
        minus = layer(**{k: v - eps * dirs[k] for k, v in P.items()})
    numeric = float(((plus - minus) * wt).sum()) / (2 * eps)
    assert abs(numeric) > 1e-2
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_huber_row_on_the_convex_path_matches_cvxpy():
    # the same atom model serves a constraint row (smooth-atom row, closed-form derivatives)
    layer = ol.compile("dim m = 5\ndim n = 3\nparam A[m, n]\nparam b[m]\nparam y[n]\nvar x[n]\n"
                       "minimize sum_squares(x - y)\nsubject to\n"
                       "    sum(huber(A @ x - b, 0.5)) <= 4")
    assert layer.plan.solver == "convex"
    P = random_params(layer.problem, batch=3, seed=4)
    st = _structure(layer.program, P, layer.program.layout.size, False)
    assert [kind for kind, *_ in st["blocks"]] == [6]   # a smooth-atom row, not autograd
    P["y"] = 3.0 * P["y"]   # far from the feasible set: the row binds
    x = layer(**P)
    assert layer.info.status.tolist() == [0] * 3
    for i in range(3):
        ref, ref_obj = solve_reference(layer.problem, {k: v[i].numpy() for k, v in P.items()})
        # the objective is flat along the row's linear pieces: x to Clarabel's accuracy,
        # the optimal value and the KKT conditions tightly
        np.testing.assert_allclose(x[i].numpy(), ref["x"], atol=1e-5, rtol=0)
        d = x[i] - P["y"][i]
        assert abs(float(d @ d) - ref_obj) <= 1e-8 * ref_obj
        r = P["A"][i] @ x[i] - P["b"][i]
        m = r.clamp(-0.5, 0.5)
        assert abs(float((m * (2 * r - m)).sum()) - 4.0) <= 1e-7   # active
        grad_g = P["A"][i].T @ (2 * m)   # x - y = -lam grad g / 2 with lam > 0
        assert float((d @ -grad_g) / (d.norm() * grad_g.norm())) >= 1 - 1e-12


@pytest.mark.parametrize("name", ["water_filling", "softplus_box", "sqrt_utility"])
def test_prox_gradient_with_the_model_takes_the_same_steps(name):
    # f, grad f and the Newton steps' dT/dz = J_prox (I - eta H) in closed form: the same
    # iterates and the same Jacobian as the tape with stacked autograd
    # (the layer's forward is Newton on the normal map; FISTA finishes what it leaves)
    layer = ol.load(f"examples/problems/{name}.opt")
    program = layer.program
    assert program.forward_solver() == "normal_newton" and not program.quadratic
    P = random_params(layer.problem, batch=8, seed=2)
    z0 = program.init(P, 8, D, torch.device("cpu"))
    model = objective_model(program, P)
    assert model is not None and program.prox_jacobian_fn(P) is not None
    with torch.no_grad():
        with_model = iterate.prox_grad_solve(program, P, z0, 1e-12, 2000, None, model)
        without = iterate.prox_grad_solve(program, P, z0, 1e-12, 2000, None, None)
    assert with_model.iterations == without.iterations
    assert with_model.status.tolist() == without.status.tolist() == [0] * 8
    torch.testing.assert_close(with_model.z, without.z, rtol=0, atol=1e-12)
    assert with_model.jacobian is not None and without.jacobian is not None
    torch.testing.assert_close(with_model.jacobian, without.jacobian, rtol=0, atol=1e-10)
    # Newton on the normal map: the same point, its Jacobian dT/dx that of the map
    with torch.no_grad():
        normal = iterate.normal_newton_solve(program, P, z0, 1e-12, 2000, model,
                                             program.prox_jacobian_fn(P))
    assert normal.status.tolist() == [0] * 8 and normal.iterations < with_model.iterations
    torch.testing.assert_close(normal.z, with_model.z, rtol=0, atol=1e-10)
    x = normal.z.clone().requires_grad_(True)
    step = normal.step
    with torch.enable_grad():
        T = program.fixed_point(x, P, step)
        rows = torch.stack([torch.autograd.grad(T[:, i].sum(), x, retain_graph=True)[0]
                            for i in range(x.shape[1])], 1)
    torch.testing.assert_close(normal.jacobian, rows, rtol=0, atol=1e-8)


def test_convex_path_takes_the_objective_model(monkeypatch):
    # a non-quadratic objective under general constraints: the interior point's objective
    # model is the closed form (was autograd), with the same solution and iterations
    from optlayer.compiler import canon
    from optlayer.compiler.smooth import ObjectiveModel

    src = ("dim n = 3\nparam c[n]\nparam A[2, n]\nparam b[2]\nvar x[n]\n"
           "minimize sum(exp(x - c)) + 0.5 * sum_squares(x) - 2 * sum(log(x + 3))\n"
           "subject to\n    lab: A @ x <= b\n    sum(x ^ 2) <= 4")
    layer = ol.compile(src, tol=1e-12)
    assert layer.plan.solver == "convex"
    P = random_params(layer.problem, batch=4, seed=6)
    P["b"] = P["b"].abs() - 0.5   # some rows bind
    N = layer.program.layout.size
    models = canon._models(layer.program, P, 4, N, D, torch.device("cpu"))
    assert isinstance(models["objective_model"](None), ObjectiveModel)
    x = layer(**P)
    iters = layer.info.iterations
    assert layer.info.status.tolist() == [0] * 4
    for i in range(4):
        ref, _ = solve_reference(layer.problem, {k: v[i].numpy() for k, v in P.items()})
        np.testing.assert_allclose(x[i].numpy(), ref["x"], atol=1e-6, rtol=0)
    assert float(layer.duals("lab").amax()) > 1e-3
    monkeypatch.setattr(canon, "objective_model", lambda program, P: None)   # autograd
    x0 = layer(**P)
    assert layer.info.iterations == iters
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-10)


def test_explain_says_where_the_derivatives_come_from():
    def line(layer):
        return next(t for t in layer.explain().splitlines() if "derivatives of f" in t)

    assert "closed form" in line(ol.compile(MODELLED["huber_param_M"]))
    assert "autograd" in line(ol.compile("dim n = 3\nparam y[n]\nvar x[n]\n"
                                         "minimize sum(exp(square(x))) + sum_squares(x - y)"))
    assert "(Q, p)" in line(ol.load("examples/problems/ridge.opt"))


def test_no_model_where_its_read_off_would_copy_too_much(monkeypatch):
    # the read-off at points evaluates the pieces on one copy of the parameters per affine
    # output: large data keep autograd (a huber fit with m = 2000, n = 150 would copy X
    # 2000 times); the coefficients (the default) make no copies, so the bound is not theirs
    from optlayer import defaults

    limit = defaults.OBJECTIVE_MODEL_MAX_ELEMENTS
    monkeypatch.setattr(defaults, "READOFF_COEFFICIENTS", False)
    layer, P = _prog_and_params(MODELLED["huber"])
    assert objective_model(layer.program, P) is not None
    monkeypatch.setattr(defaults, "OBJECTIVE_MODEL_MAX_ELEMENTS", 4 * 6 * 24 - 1)
    assert objective_model(layer.program, P) is None       # 4 items, 6 outputs, 24 elements
    monkeypatch.setattr(defaults, "OBJECTIVE_MODEL_MAX_ELEMENTS", 4 * 6 * 24)
    assert objective_model(layer.program, P) is not None
    big = ol.compile("dim m = 2000\ndim n = 150\nparam X[m, n]\nparam t[m]\nvar w[n]\n"
                     "minimize sum(huber(X @ w - t)) + 0.1 * sum_squares(w)")
    monkeypatch.setattr(defaults, "OBJECTIVE_MODEL_MAX_ELEMENTS", limit)
    Pb = {"X": torch.zeros(2, 2000, 150, dtype=D), "t": torch.zeros(2, 2000, dtype=D)}
    assert objective_model(big.program, Pb) is None
    monkeypatch.setattr(defaults, "READOFF_COEFFICIENTS", True)
    assert objective_model(big.program, Pb) is not None
