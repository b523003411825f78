"""Rows of one smooth atom of an affine argument (``coef φ(u) + rest``) on the convex path:
the compiler reads them into closed-form models (SmoothAtomRows), which match autograd of
the rows; solutions and multipliers match cvxpy; gradients match finite differences.
Rows of another shape fall back to autograd and still solve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optlayer as ol
from optlayer.compiler.canon import _models, _start, row_functions
from optlayer.compiler.lower import expand_params
from optlayer.layer import random_params
from optlayer.solvers.convex_models import AutogradRows, SmoothAtomRows

from .reference import solve_reference_duals

D = torch.float64
HEAD = ("dim n = 3\nparam A[n, n]\nparam c[n]\nparam w[n] nonneg\nparam r pos\nvar x[n]\n"
        "minimize sum_squares(x - c - 1)\nsubject to\n    lab: ")

# every atom of the table, each reduction, a weight (scalar, vector, divided), an affine
# part with and without variables, the atom on either side of the inequality
CASES = {
    "logsumexp_weighted": "0.5 * logsumexp(A @ x) + 0.1 * sum(x) <= 1",
    "logsumexp_right": "1 >= logsumexp(A @ x) - r",
    "exp_rows": "exp(A @ x) <= 2",
    "exp_vector_weight": "sum(w * exp(x - 1)) / r <= 2",
    "log_rows": "log(x + 2) >= 1.2",
    "sqrt_rows": "sqrt(x + 3) >= 2.1",
    "logistic_sum": "2 * sum(logistic(A @ x)) - sum(x) <= 6",
    "softplus_negated": "sum(softplus(-x)) <= 1.5",
    "power_sum": "sum((x + 2) ^ 3) <= 30",
    "entropy": "entropy(x + 1) >= -1",
}
# rows outside the pattern (two atoms; a scalar atom broadcast to rows): autograd models
FALLBACK = {
    "two_atoms": "exp(x[0]) + exp(-x[1]) <= 3",
    "broadcast": "exp(sum(x) - 2) <= w + 1",
}


def _layer(con, **kw):
    return ol.compile(HEAD + con, **kw)


def _model_kinds(layer, P, B):
    n = layer.program.layout.size
    models = _models(layer.program, P, B, n, D, torch.device("cpu"))
    return models["ineq_model"](P), n


@pytest.mark.parametrize("con,expected", [(c, True) for c in CASES.values()]
                         + [(c, False) for c in FALLBACK.values()],
                         ids=list(CASES) + list(FALLBACK))
def test_models_match_autograd_of_the_rows(con, expected):
    layer = _layer(con)
    prog = layer.program
    P, B, _ = expand_params(layer.problem, random_params(layer.problem, batch=3, seed=0))
    rows, n = _model_kinds(layer, P, B)
    parts = rows.parts if hasattr(rows, "parts") else [rows]
    assert any(isinstance(m, SmoothAtomRows) for m in parts) == expected
    gfun = row_functions(prog)[0]
    gen = torch.Generator().manual_seed(1)
    z = _start(prog, P, B, n, D, "cpu", 0.2 * torch.randn(B, n, dtype=D, generator=gen)) + 0.0
    lam = torch.rand(B, gfun(z, P).shape[-1], dtype=D, generator=gen) + 0.1
    ref = AutogradRows(gfun, P)
    zero = torch.zeros(B, n, n, dtype=D)
    for got, want in zip(rows.second(z, lam), ref.second(z, lam), strict=True):
        got, want = (zero if got is None else got), (zero if want is None else want)
        torch.testing.assert_close(got.expand_as(want), want, rtol=1e-12, atol=1e-12)
    for got, want in zip(rows.first(z, lam), ref.first(z, lam), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("con", list(CASES.values()) + list(FALLBACK.values()),
                         ids=list(CASES) + list(FALLBACK))
def test_solution_and_multiplier_match_cvxpy(con):
    layer = _layer(con)
    assert layer.plan.solver == "convex"
    vals = random_params(layer.problem, batch=4, seed=11)
    x = layer(**vals)
    assert layer.info.status.tolist() == [0] * 4
    for i in range(4):
        ref, _obj, duals = solve_reference_duals(
            layer.problem, {k: v[i].numpy() for k, v in vals.items()})
        # Clarabel stops near 1e-7 (1e-6 on entropy) on exponential and power cones
        np.testing.assert_allclose(x[i].numpy(), ref["x"], atol=5e-6, rtol=0)
        np.testing.assert_allclose(layer.duals("lab")[i].reshape(-1).numpy(), duals["lab"],
                                   atol=2e-5, rtol=0)


def test_some_cases_have_active_rows():
    # the comparisons above test the closed-form curvature only where a row binds
    active = 0
    for con in CASES.values():
        layer = _layer(con)
        layer(**random_params(layer.problem, batch=4, seed=11))
        active += int((layer.duals("lab") > 1e-3).any())
    assert active >= 8


@pytest.mark.parametrize("name", ["logsumexp_weighted", "exp_vector_weight", "log_rows",
                                  "entropy"])
def test_gradient_matches_finite_differences(name):
    layer = _layer(CASES[name], tol=1e-13, maxiter=500)
    vals = random_params(layer.problem, seed=12)
    gen = torch.Generator().manual_seed(3)
    wt = torch.randn(layer(**vals).shape, generator=gen, dtype=D)
    v = {k: torch.randn(t.shape, generator=gen, dtype=D) for k, t in vals.items()}
    ins = {k: t.clone().requires_grad_(True) for k, t in vals.items()}
    grads = torch.autograd.grad((layer(**ins) * wt).sum(), list(ins.values()),
                                allow_unused=True)
    analytic = sum((g * v[k]).sum() for k, g in zip(ins, grads, strict=True) if g is not None)
    eps = 1e-5
    with torch.no_grad():
        plus = (layer(**{k: t + eps * v[k] for k, t in vals.items()}) * wt).sum()
        minus = (layer(**{k: t - eps * v[k] for k, t in vals.items()}) * wt).sum()
    numeric = float((plus - minus) / (2 * eps))
    assert abs(numeric) > 1e-3  # the solution moves with the data
    assert abs(float(analytic) - numeric) <= 1e-6 * max(1.0, abs(numeric))
