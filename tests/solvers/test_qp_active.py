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


def test_a_step_that_drops_a_constraint_still_ends_at_the_solution():
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
    assert active_set.applies(10, 10, 2, 32)
    assert not active_set.applies(10, 10, 2, 64)   # batch * (n + m + me)^2 above the cap
    assert not active_set.applies(40, 40, 8, 1)    # more inequalities than the cap


def test_maxiter_caps_its_iterations():
    res = _run([_small(2)], maxiter=2)
    assert int(res.iter_num) == 2 and res.status.item() == Status.MAX_ITER
