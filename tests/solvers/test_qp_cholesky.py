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
from .test_qp import _cvxpy, _random_qp, _t

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

    def flaky(H, *a, **k):
        L, info = real(H, *a, **k)
        if H.shape[-1] == 6:                   # the (n x n) reduced operator
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


def _ill_conditioned():
    """Item 169 of the family of examples/benchmarks/qp.py at n = 20, batch 512,
    seed 1: in float32 a KKT error of 1e-5 leaves its solution off by 6e-3."""
    path = Path(__file__).resolve().parents[2] / "examples" / "benchmarks" / "qp.py"
    spec = importlib.util.spec_from_file_location("_qp_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return [t[169:170] for t in bench.make_batch(20, 512, 1, "cpu")[:6]]


def test_the_rescue_of_a_float32_item_runs_in_float64(kernel, monkeypatch):
    # the rescued item comes back in float32 and OPTIMAL, as accurate as float32 can
    # store the float64 solution, not merely within float32's KKT tolerance
    data = _ill_conditioned()
    ref = solve_qp(*data).x
    _broken_for(0, monkeypatch)
    sol = solve_qp(*[t.float() for t in data], on_failure="raise")
    assert sol.x.dtype == torch.float32 and sol.status.item() == Status.OPTIMAL
    assert (sol.x.double() - ref).abs().max() <= 1e-5


# A PSD QP with a box whose inequalities cannot hold together with Ax = b (from
# examples/benchmarks/qp_status.py, seed 0, draw 145): both Cholesky kernels lose
# the accuracy the Farkas certificate needs before they can check it.
_INFEASIBLE = dict(
    Q=[
        [4.011164188772805, -0.75410757796985, 0.9628296076938543],
        [-0.75410757796985, 0.25886969147317446, -0.2908899874776127],
        [0.9628296076938543, -0.2908899874776127, 0.33421635637920216],
    ],
    p=[
        1.0192402868317985, 0.05590476394421001, 0.9258975437347514,
    ],
    G=[
        [-0.6561834870801888, 0.6450247265620744, 0.3460498784699542],
        [-0.8670017021659481, 0.35684802699273976, -0.6794419343671579],
        [-1.4852939116375927, 0.5129676032496794, 0.5122981906695058],
        [-1.366205843877831, -0.3390495166054388, -1.6504357510529781],
        [-0.161770329596612, 0.04062125622029484, 0.3811894895307023],
        [1.8098066797382177, -1.3489740435050943, -1.4945236465722993],
        [-0.894160500872987, -0.7844219859800711, -0.564961963941794],
        [-0.3268464306399815, -0.5932726966173443, 0.8325309778603145],
    ],
    h=[
        1.7403332781061673, -0.2881772774725655, 2.476457278962511,
        -1.7104710522497286, 1.4150487798092648, -5.373227034232469,
        -0.0022653949696794795, 1.7125419062248792, 0.9197867258201173,
        2.7855709006288882, 3.748554503381718, 3.080213274179883,
        1.2144290993711118, 0.25144549661828197,
    ],
    A=[
        [-0.10672205526083732, 0.2540730901348665, -0.46480439850316996],
        [0.7270799164025702, 1.093100658362412, -0.4317261803630296],
    ],
    b=[
        -0.49786081721102127, -0.6815900653214282,
    ],
)


def _infeasible():
    d = {k: np.array(v) for k, v in _INFEASIBLE.items()}
    d["G"] = np.vstack([d["G"], np.eye(3), -np.eye(3)])
    return [d[k] for k in ("Q", "p", "G", "h", "A", "b")]


def test_an_infeasible_item_the_cholesky_loop_cannot_certify_is_certified_by_lu(
        kernel, monkeypatch):
    inst = _infeasible()
    x = cp.Variable(3)
    Q, p, G, h, A, b = inst
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + p @ x),
                      [G @ x <= h, A @ x == b])
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == "infeasible"
    tensors = [_t(a) for a in inst]
    assert solve_qp(*tensors, on_failure="ignore").status == Status.INFEASIBLE
    monkeypatch.setattr(defaults, "IPM_RESCUE_MAX_SIZE", 0)
    # without the rescue the loop ends without a verdict (the case this guards)
    assert solve_qp(*tensors, on_failure="ignore").status in (Status.NUMERICAL_ERROR,
                                                              Status.MAX_ITER)
