"""The dual active-set method of solve_qp (optlayer.solvers._qp_active).

Solutions against cvxpy, steps that drop a constraint, items it must leave to
the interior point, and which batches it takes. (Every test of test_qp.py and
test_qp_grad.py also runs with it forced: tests/solvers/_kernels.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_active as active_set
from optlayer.solvers import _qp_dense as dense
from optlayer.solvers import _qp_ipm as ipm
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

from .test_qp import _cvxpy, _random_qp

F64 = torch.float64


def _batch(insts):
    """(B, ...) tensors of the instances (G, A as given, possibly None)."""
    out = []
    for k in range(6):
        parts = [inst[k] for inst in insts]
        out.append(None if parts[0] is None else torch.as_tensor(np.stack(parts), dtype=F64))
    return out


def _run(insts, maxiter=50):
    Q, p, G, h, A, b = _batch(insts)
    d = ipm.stack(ipm.make_data(Q, p, G, h, A, b, augmented=False))
    active = torch.ones(Q.shape[0], dtype=torch.bool)
    return active_set.run_active(d, active=active, tol=defaults.tol(F64), maxiter=maxiter,
                                 want_factor=True)


def _small(seed):
    """A strictly convex instance (seed 2: the method drops a constraint on the way, 5
    iterations for 3 rows in the final working set)."""
    g = np.random.default_rng(seed)
    n, m = 4, 6
    M = g.standard_normal((n, n))
    Q = M @ M.T + 0.1 * np.eye(n)
    G = g.standard_normal((m, n))
    x0 = g.standard_normal(n)
    return Q, g.standard_normal(n), G, G @ x0 + g.uniform(0.05, 0.5, m), None, None


@pytest.mark.parametrize("seeds", [[0, 1, 2, 3], [10, 11]])
def test_solutions_match_cvxpy_and_pass_the_kkt_check(seeds):
    insts = [_random_qp(s, 8, 10, 2) for s in seeds]
    res = _run(insts)
    assert (res.status == Status.OPTIMAL).all()
    err = torch.maximum(torch.maximum(res.primal_residual, res.dual_residual), res.gap)
    assert (err <= 1e-12).all()            # the KKT system of the working set, to rounding
    for i, inst in enumerate(insts):
        _, x_ref, _ = _cvxpy(*inst)
        np.testing.assert_allclose(res.x[i, :, 0].numpy(), x_ref, atol=1e-9)


def test_a_step_that_drops_a_constraint_still_ends_at_the_solution(monkeypatch):
    monkeypatch.setattr(defaults, "ACTIVE_SET_PDAS_ITERS", 0)   # the dual method alone
    inst = _small(2)
    res = _run([inst])
    held = int((res.factor.J).sum())
    # each iteration adds the target to W or drops a row: more iterations than rows
    # in the final working set means some step dropped one
    assert int(res.iter_num) > held
    assert res.status.item() == Status.OPTIMAL
    _, x_ref, _ = _cvxpy(*inst)
    np.testing.assert_allclose(res.x[0, :, 0].numpy(), x_ref, atol=1e-9)
    z = res.z[0, :, 0]
    assert (z >= 0).all() and ((z > 0) <= res.factor.J[0, :, 0]).all()


def test_the_primal_dual_rule_settles_a_box_in_fewer_iterations_than_active_rows():
    # min 1/2|x - c|^2 + small coupling over a box: the rule moves every violated bound
    # into W at once, the dual method one row per iteration
    g = np.random.default_rng(4)
    n = 12
    M = g.standard_normal((n, n))
    Q = np.eye(n) + 0.05 * (M @ M.T) / n
    p = -3.0 * g.standard_normal(n)
    G, h = np.vstack([np.eye(n), -np.eye(n)]), np.ones(2 * n)
    inst = (Q, p, G, h, None, None)
    res = _run([inst])
    active_rows = int(res.factor.J.sum())
    assert active_rows >= 6
    assert res.status.item() == Status.OPTIMAL and int(res.iter_num) < active_rows
    _, x_ref, _ = _cvxpy(*inst)
    np.testing.assert_allclose(res.x[0, :, 0].numpy(), x_ref, atol=1e-9)


def test_a_cycle_of_the_primal_dual_rule_is_finished_by_the_dual_method(monkeypatch):
    insts = [_random_qp(0, 2, 4, 0), _random_qp(5, 2, 4, 0)]   # the rule cycles on the second
    res = _run(insts, maxiter=60)
    assert (res.status == Status.OPTIMAL).all()
    assert int(res.iter_num[0]) <= defaults.ACTIVE_SET_PDAS_ITERS
    assert int(res.iter_num[1]) > defaults.ACTIVE_SET_PDAS_ITERS
    for i, inst in enumerate(insts):
        _, x_ref, _ = _cvxpy(*inst)
        np.testing.assert_allclose(res.x[i, :, 0].numpy(), x_ref, atol=1e-9)
    # its gradients through solve_qp (the backward reads the factorization of the
    # dual method's final working set) against central differences
    Q, p, G, h, _, _ = _batch(insts)
    p = p.clone().requires_grad_(True)
    c = torch.tensor([[1.0, -2.0], [0.5, 1.5]], dtype=F64)
    (solve_qp(Q, p, G, h).x * c).sum().backward()
    eps, fd = 1e-6, torch.zeros_like(p)
    with torch.no_grad():
        for i in range(2):
            for j in range(2):
                e = torch.zeros_like(p)
                e[i, j] = eps
                fd[i, j] = ((solve_qp(Q, p + e, G, h).x * c).sum()
                            - (solve_qp(Q, p - e, G, h).x * c).sum()) / (2 * eps)
    torch.testing.assert_close(p.grad, fd, atol=1e-7, rtol=1e-6)
    # the rule alone, given every iteration, does not settle
    monkeypatch.setattr(defaults, "ACTIVE_SET_PDAS_ITERS", 60)
    assert _run([inst], maxiter=60).status.item() == Status.MAX_ITER


def test_items_it_cannot_solve_are_left_to_the_interior_point():
    strict = _random_qp(20, 5, 2, 0)
    lp = _random_qp(21, 5, 6, 1, lp=True)              # Q = 0: no dual active-set method
    n = 5
    infeasible = (np.eye(n), np.ones(n), np.vstack([np.eye(n)[:1], -np.eye(n)[:1]]),
                  np.array([-1.0, -1.0]), None, None)   # x1 <= -1 and x1 >= 1
    # the method itself: OPTIMAL only where it solved the item
    res = _run([strict, infeasible])
    assert res.status.tolist() == [Status.OPTIMAL, Status.MAX_ITER]
    # through solve_qp: the interior point gives the others their verdict
    for inst, want in ((strict, Status.OPTIMAL), (lp, Status.OPTIMAL),
                       (infeasible, Status.INFEASIBLE)):
        args = [None if t is None else torch.as_tensor(t, dtype=F64) for t in inst]
        sol = solve_qp(*args, on_failure="ignore")
        assert sol.status.item() == want
        if want == Status.OPTIMAL:
            _, x_ref, _ = _cvxpy(*inst)
            np.testing.assert_allclose(sol.x.numpy(), x_ref, atol=1e-8)


def test_a_batch_mixing_strictly_convex_items_and_an_lp():
    insts = [_random_qp(30, 6, 6, 1), _random_qp(31, 6, 6, 1, lp=True)]
    # the LP has 18 rows (its box): pad the strictly convex item's G with far rows
    Q0, p0, G0, h0, A0, b0 = insts[0]
    G_pad = np.vstack([G0, np.zeros((12, 6))])
    h_pad = np.concatenate([h0, np.ones(12)])
    insts[0] = (Q0, p0, G_pad, h_pad, A0, b0)
    Q, p, G, h, A, b = _batch(insts)
    sol = solve_qp(Q, p, G, h, A, b, on_failure="raise")
    for i, inst in enumerate(insts):
        _, x_ref, _ = _cvxpy(*inst)
        np.testing.assert_allclose(sol.x[i].numpy(), x_ref, atol=1e-8)


def test_which_batches_it_takes():
    assert active_set.applies(10, 10, 2, 1)        # the qp.py benchmark at batch 1
    assert active_set.applies(10, 10, 2, 64)
    assert active_set.applies(100, 100, 20, 1)
    assert not active_set.applies(10, 10, 2, 128)  # batch * (n + m + me)^2 above the cap
    assert not active_set.applies(50, 50, 10, 8)
    assert not active_set.applies(20, 200, 0, 1)   # more inequalities than the cap


def test_maxiter_caps_its_iterations():
    res = _run([_small(2)], maxiter=2)
    assert int(res.iter_num) == 2 and res.status.item() == Status.MAX_ITER


def test_many_items_left_to_the_interior_point_keep_the_full_system_backward():
    # 60 of 64 items are infeasible: the interior point that takes them would be the
    # reduced kernel at that batch, but it must return the full system's kind of
    # factorization (the backward of the whole batch is one dense adjoint solve)
    insts = [_random_qp(s, 10, 10, 2) for s in range(64)]
    for i in range(4, 64):
        Q, p, G, h, A, b = insts[i]
        G, h = G.copy(), h.copy()
        G[0], h[0] = -G[1], -h[1] - 1.0           # G_1 x <= h_1 and G_1 x >= h_1 + 1
        insts[i] = (Q, p, G, h, A, b)
    Q, p, G, h, A, b = _batch(insts)
    assert active_set.applies(10, 10, 2, 64) and dense.kernel_for(10, 10, 2, 60) == "reduced"
    p = p.clone().requires_grad_(True)
    sol = solve_qp(Q, p, G, h, A, b, on_failure="ignore")
    assert (sol.status[:4] == Status.OPTIMAL).all() and (sol.status[4:] == Status.INFEASIBLE).all()
    sol.x[:4].sum().backward()
    for i in range(4):
        _, x_ref, _ = _cvxpy(*insts[i])
        np.testing.assert_allclose(sol.x[i].detach().numpy(), x_ref, atol=1e-8)
        p_i = p[i].detach().clone().requires_grad_(True)
        solve_qp(Q[i], p_i, G[i], h[i], A[i], b[i]).x.sum().backward()
        torch.testing.assert_close(p.grad[i], p_i.grad, atol=1e-9, rtol=1e-9)
    assert (p.grad[4:] == 0).all()
