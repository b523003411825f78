"""The primal-dual active-set rule on the dual Schur complement (optlayer.solvers._qp_schur).

Solutions against cvxpy, the items it must leave to the interior point and their
merged backward. (Every test of test_qp.py and test_qp_grad.py also runs through it:
the ``reduced-schur`` kernel of tests/solvers/_kernels.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_ipm as ipm
from optlayer.solvers import _qp_schur as schur
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

from ._kernels import force
from .test_qp import _cvxpy, _random_qp
from .test_qp_active import _batch

F64 = torch.float64


def _run(insts, maxiter=50):
    Q, p, G, h, A, b = _batch(insts)
    d = ipm.make_data(Q, p, G, h, A, b)
    active = torch.ones(Q.shape[0], dtype=torch.bool)
    return schur.run_schur(d, active=active, tol=defaults.tol(F64), maxiter=maxiter,
                           want_factor=True)


def test_solutions_match_cvxpy_and_pass_the_kkt_check(monkeypatch):
    monkeypatch.setattr(defaults, "ACTIVE_SET_PDAS_ITERS", 20)
    insts = [_random_qp(s, 8, 12, 0) for s in range(6)]
    res = _run(insts)
    ok = res.status == Status.OPTIMAL
    assert ok.tolist() == [True] * 4 + [False, True]    # the rule cycles on item 4
    assert res.iter_num[4] == 20 and (res.iter_num[ok] <= 12).all()
    err = torch.maximum(torch.maximum(res.primal_residual, res.dual_residual), res.gap)
    assert (err[ok] <= 1e-11).all()
    for i, inst in enumerate(insts):
        if ok[i]:
            _, x_ref, _ = _cvxpy(*inst)
            np.testing.assert_allclose(res.x[i, :, 0].numpy(), x_ref, atol=1e-9)
    # its factor is the active-set system of the returned point: no multiplier off W
    assert ((res.z > 0) <= res.factor.J).all()


def test_it_leaves_what_it_cannot_solve_and_says_none_without_a_definite_q():
    strict = _random_qp(20, 5, 6, 0)
    n = 5
    infeasible = (np.eye(n), np.ones(n), np.vstack([np.eye(n)[:1], -np.eye(n)[:1],
                                                    np.zeros((4, n))]),
                  np.array([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]), None, None)
    singular = (np.zeros((n, n)),) + strict[1:]
    res = _run([strict, infeasible, singular])
    assert res.status.tolist() == [Status.OPTIMAL, Status.MAX_ITER, Status.MAX_ITER]
    assert _run([singular]) is None
    # the rule, given no iteration, solves nothing that has a violated row
    assert _run([strict], maxiter=0).status.item() == Status.MAX_ITER


def test_a_mixed_batch_through_solve_qp_matches_each_item_alone(monkeypatch):
    # strictly convex items, one the rule cycles on, one infeasible and one LP: the
    # interior point takes the last three and the merged factorization serves the
    # backward of the whole batch
    force(monkeypatch, "reduced-schur")
    lp_Q = np.zeros((2, 2))
    cyc = _random_qp(5, 2, 4, 0)
    insts = [_random_qp(0, 2, 4, 0), cyc, _random_qp(1, 2, 4, 0),
             (np.eye(2), np.ones(2), np.array([[1.0, 0], [-1.0, 0], [0, 1.0], [0, -1.0]]),
              np.array([-1.0, -1.0, 1.0, 1.0]), None, None),
             (lp_Q, np.array([1.0, -1.0]), np.vstack([np.eye(2), -np.eye(2)]), np.ones(4),
              None, None)]
    Q, p, G, h, _, _ = _batch(insts)
    assert _run([cyc]).status.item() == Status.MAX_ITER          # the rule cycles
    p = p.clone().requires_grad_(True)
    w = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.3], [0.2, 0.2], [1.0, 1.0]], dtype=F64)
    sol = solve_qp(Q, p, G, h, on_failure="ignore")
    assert sol.status.tolist() == [Status.OPTIMAL, Status.OPTIMAL, Status.OPTIMAL,
                                   Status.INFEASIBLE, Status.OPTIMAL]
    (sol.x * w).sum().backward()
    for i in (0, 1, 2, 4):
        _, x_ref, _ = _cvxpy(*insts[i])
        np.testing.assert_allclose(sol.x[i].detach().numpy(), x_ref, atol=1e-8)
        p_i = p[i].detach().clone().requires_grad_(True)
        (solve_qp(Q[i], p_i, G[i], h[i]).x * w[i]).sum().backward()
        torch.testing.assert_close(p.grad[i], p_i.grad, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("pdas", [0, 10])
def test_which_problems_it_takes(monkeypatch, pdas):
    monkeypatch.setattr(defaults, "ACTIVE_SET_PDAS_ITERS", pdas)
    Q, p, G, h, A, b = _batch([_random_qp(0, 4, 6, 1)])
    with_eq = ipm.make_data(Q, p, G, h, A, b)
    without = ipm.make_data(Q, p, G, h, None, None)
    no_ineq = ipm.make_data(Q, p, None, None, A, b)
    assert not schur.applies(with_eq) and not schur.applies(no_ineq)
    assert schur.applies(without) == (pdas > 0)
