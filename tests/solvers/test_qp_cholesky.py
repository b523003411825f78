"""optlayer.solvers.qp, the two kernels that factor the reduced system by Cholesky
(``full-cholesky`` and ``reduced``): dynamic regularization and the LU rescue."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_ipm
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

from ._kernels import force
from .test_qp import _cvxpy, _ill_conditioned, _random_qp, _t

cp = pytest.importorskip("cvxpy")

CHOLESKY = ["full-cholesky", "reduced"]


@pytest.fixture(params=CHOLESKY)
def kernel(request, monkeypatch):
    return force(monkeypatch, request.param)


def _stack(insts):
    return [_t(np.stack([inst[k] for inst in insts])) for k in range(6)]


def test_a_failed_factorization_retries_with_more_regularization(kernel, monkeypatch):
    # the Cholesky of the reduced operator reports a failure for item 0 in the
    # second loop iteration: the item must take no step, retry with a boosted
    # diagonal and still end OPTIMAL at the reference solution
    calls, boosts = [], []
    real, real_factor = torch.linalg.cholesky_ex, _qp_ipm.factor
    # the (n x n) reduced operator; the reduced kernel eliminates the 2 equalities first
    size = 4 if kernel == "reduced" else 6

    def flaky(H, *a, **k):
        L, info = real(H, *a, **k)
        if H.shape[-1] == size:
            calls.append(1)
            if len(calls) == 3:                # start, first iteration, second iteration
                info = info.clone()
                info[0] = 1
        return L, info

    def spy(d, W, boost=None):
        if boost is not None:
            boosts.append(boost[0].item())
        return real_factor(d, W, boost)

    monkeypatch.setattr(_qp_ipm.torch.linalg, "cholesky_ex", flaky)
    monkeypatch.setattr(_qp_ipm, "factor", spy)
    insts = [_random_qp(60 + i, 6, 8, 2) for i in range(3)]
    sol = solve_qp(*_stack(insts), on_failure="raise")
    assert max(boosts) == defaults.IPM_REG_BOOST        # item 0 retried once, boosted
    for i, inst in enumerate(insts):
        _, x_ref, _ = _cvxpy(*inst)
        np.testing.assert_allclose(sol.x[i].numpy(), x_ref, atol=1e-8)


def _broken_for(item, monkeypatch):
    """Every loop factorization of ``item`` fails (its retries too)."""
    real_factor = _qp_ipm.factor

    def broken(d, W, boost=None):
        f = real_factor(d, W, boost)
        ok = f.ok.clone()
        ok[item] = False
        return f._replace(ok=ok)

    monkeypatch.setattr(_qp_ipm, "factor", broken)


def test_an_item_the_loop_gives_up_on_is_solved_again_with_lu(kernel, monkeypatch):
    # item 1's factorizations all fail: after its retries the Cholesky loop has no
    # verdict for it, and the LU rescue must return the reference solution with
    # the right iteration count, and gradients (the backward of the kernel at the
    # rescued point) equal to those of the item solved alone
    insts = [_random_qp(70 + i, 5, 7, 2) for i in range(3)]
    alone = solve_qp(*[t[1] for t in _stack(insts)])
    _broken_for(1, monkeypatch)
    leaves = [t.requires_grad_() for t in _stack(insts)]
    sol = solve_qp(*leaves, on_failure="raise")
    assert (sol.status == Status.OPTIMAL).all()
    assert sol.iter_num[1] > alone.iter_num         # the loop's tries count too
    for i, inst in enumerate(insts):
        _, x_ref, _ = _cvxpy(*inst)
        np.testing.assert_allclose(sol.x[i].detach().numpy(), x_ref, atol=1e-8)
    w = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((w * sol.x).sum(), leaves)
    monkeypatch.undo()
    one = [t[1].detach().clone().requires_grad_() for t in _stack(insts)]
    ref = torch.autograd.grad((w[1] * solve_qp(*one).x).sum(), one)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g[1], r, atol=1e-9, rtol=1e-7)


def test_a_rescued_float32_item_is_as_accurate_as_float32_stores(kernel, monkeypatch):
    # solve_qp works in float64 whatever the dtype: the rescued item comes back in
    # float32 and OPTIMAL, within float32's rounding of the float64 solution
    data = _ill_conditioned()
    ref = solve_qp(*data).x
    _broken_for(0, monkeypatch)
    sol = solve_qp(*[t.float() for t in data], on_failure="raise")
    assert sol.x.dtype == torch.float32 and sol.status.item() == Status.OPTIMAL
    assert (sol.x.double() - ref).abs().max() <= 1e-5


def _infeasible():
    """Draw 51 of examples/benchmarks/qp_status.py at seed 0: a QP whose inequalities
    and equalities cannot hold together, which both Cholesky loops stop on
    (NUMERICAL_ERROR) before they have the accuracy its Farkas certificate needs."""
    path = Path(__file__).resolve().parents[2] / "examples" / "benchmarks" / "qp_status.py"
    spec = importlib.util.spec_from_file_location("_qp_status_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    for _ in range(51):
        bench.instance(rng)
    return bench.instance(rng)


def test_an_infeasible_item_the_cholesky_loop_cannot_certify_is_certified_by_lu(
        kernel, monkeypatch):
    inst = _infeasible()
    Q, p, G, h, A, b = inst
    x = cp.Variable(p.shape[0])
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + p @ x),
                      [G @ x <= h, A @ x == b])
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == "infeasible"
    tensors = [_t(a) for a in inst]
    if kernel == "reduced":   # with its equalities eliminated, the loop certifies it itself
        rescue = defaults.IPM_RESCUE_MAX_SIZE
        monkeypatch.setattr(defaults, "IPM_RESCUE_MAX_SIZE", 0)
        assert solve_qp(*tensors, on_failure="ignore").status == Status.INFEASIBLE
        monkeypatch.setattr(defaults, "IPM_RESCUE_MAX_SIZE", rescue)
        monkeypatch.setattr(defaults, "IPM_ELIMINATE_EQUALITIES", False)
    assert solve_qp(*tensors, on_failure="ignore").status == Status.INFEASIBLE
    monkeypatch.setattr(defaults, "IPM_RESCUE_MAX_SIZE", 0)
    # without the rescue the loop ends without a verdict (the case this guards)
    assert solve_qp(*tensors, on_failure="ignore").status in (Status.NUMERICAL_ERROR,
                                                              Status.MAX_ITER)
