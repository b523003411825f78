"""optlayer.solvers._qp_fast: the unguarded loop that runs first on small QPs without
equality constraints, and the guarded kernel that takes the items it leaves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_fast as fast
from optlayer.solvers import qp
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

from ._kernels import force
from .test_qp import _infeasible, _random_qp, _t

F64 = torch.float64


@pytest.fixture
def spy(monkeypatch):
    """Records the batch size of every call of the fast loop and of the guarded kernel."""
    calls = {"fast": [], "guarded": []}
    real_fast, real_guarded = fast.run_fast, qp._run_guarded

    def run_fast(d, **kw):
        calls["fast"].append(d.Q.shape[0])
        return real_fast(d, **kw)

    def run_guarded(d, *a, **kw):
        calls["guarded"].append(d.Q.shape[0])
        return real_guarded(d, *a, **kw)

    monkeypatch.setattr(fast, "run_fast", run_fast)
    monkeypatch.setattr(qp, "_run_guarded", run_guarded)
    force(monkeypatch, "fast")
    return calls


def _batch(insts):
    return [_t(np.stack([inst[k] for inst in insts])) for k in range(4)]


def _solve_with_grads(args):
    args = [a.clone().requires_grad_() for a in args]
    sol = solve_qp(*args, on_failure="raise")
    (sol.x.sin().sum() + sol.ineq_dual.cos().sum()).backward()
    return sol, [a.grad for a in args]


@pytest.mark.parametrize("lp", [False, True], ids=["qp", "lp"])
def test_the_fast_loop_alone_agrees_with_the_guarded_kernel(monkeypatch, spy, lp):
    insts = [_random_qp(60 + i, 5, 7, 0, lp=lp) for i in range(12)]
    args = _batch(insts)
    sol, grads = _solve_with_grads(args)
    assert spy == {"fast": [12], "guarded": []}          # every item finished in the loop
    assert (sol.status == Status.OPTIMAL).all()
    monkeypatch.setattr(defaults, "IPM_FAST_LOOP", False)
    ref, ref_grads = _solve_with_grads(args)
    assert spy["guarded"] == [12]
    torch.testing.assert_close(sol.x, ref.x, atol=1e-9, rtol=0)
    torch.testing.assert_close(sol.ineq_dual, ref.ineq_dual, atol=1e-9, rtol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-7, rtol=1e-7)


def _feasible_like(bad, seed):
    """A strictly convex instance with the constraint matrix of ``bad`` and a
    feasible right-hand side."""
    g = np.random.default_rng(seed)
    n = bad[1].shape[0]
    M = g.standard_normal((n, n))
    G = bad[2]
    return (M @ M.T / n + 0.1 * np.eye(n), g.standard_normal(n), G,
            G @ g.standard_normal(n) + g.uniform(0.1, 1.0, G.shape[0]))


@pytest.mark.parametrize("kind", ["box-contradiction", "lp-unbounded", "psd-unbounded"])
def test_items_the_fast_loop_leaves_get_their_verdicts_from_the_guarded_kernel(spy, kind):
    bad = _infeasible(kind)[:4]
    insts = [_feasible_like(bad, 1), bad, _feasible_like(bad, 2)]
    sol = solve_qp(*_batch(insts), on_failure="ignore")
    expected = Status.INFEASIBLE if kind == "box-contradiction" else Status.UNBOUNDED
    assert sol.status.tolist() == [Status.OPTIMAL, expected, Status.OPTIMAL]
    assert spy == {"fast": [3], "guarded": [1]}          # only the bad item went on
    for i in (0, 2):
        alone = solve_qp(*[_t(a) for a in insts[i]], on_failure="raise")
        torch.testing.assert_close(sol.x[i], alone.x, atol=1e-10, rtol=0)


def test_the_fast_loop_gives_up_early_and_never_certifies():
    # it has no Farkas check: a bad item must end without a verdict and well before
    # maxiter (the worst error stops halving), leaving the iterations to the guarded kernel
    from optlayer.solvers import _qp_ipm as ipm

    for kind in ("box-contradiction", "lp-unbounded", "psd-unbounded"):
        Q, p, G, h = (_t(a)[None] for a in _infeasible(kind)[:4])
        d = ipm.make_data(0.5 * (Q + Q.mT), p, G, h, None, None)
        res = fast.run_fast(d, active=torch.ones(1, dtype=torch.bool), tol=1e-10, maxiter=50,
                            want_factor=False)
        assert res.status.item() not in (Status.OPTIMAL, Status.INFEASIBLE, Status.UNBOUNDED)
        assert res.iter_num.item() <= 2 * defaults.IPM_STALL_ITERS


def test_both_loops_count_against_maxiter(spy):
    bad = _infeasible("box-contradiction")[:4]
    for maxiter in (3, 8):
        sol = solve_qp(*[_t(a) for a in bad], maxiter=maxiter, on_failure="ignore")
        assert sol.iter_num.item() <= maxiter
        assert sol.status.item() in (Status.MAX_ITER, Status.INFEASIBLE)


def test_the_fast_loop_runs_only_without_equalities(spy):
    inst = _random_qp(3, 5, 6, 2)
    sol = solve_qp(*[_t(a) for a in inst], on_failure="raise")
    assert sol.status.item() == Status.OPTIMAL
    assert spy == {"fast": [], "guarded": [1]}


@pytest.fixture
def eliminating(monkeypatch, spy):
    """Equalities eliminated first (the reduced kernel's rule), what is left small enough
    for the fast loop: as quantile_regression at batch 32 with the defaults."""
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_WORK", 1e9)
    monkeypatch.setattr(defaults, "IPM_DENSE_EQ_SHARE", 0.0)
    return spy


def _solve_eq_with_grads(args):
    args = [a.clone().requires_grad_() for a in args]
    sol = solve_qp(*args, on_failure="ignore")
    (sol.x.sin().sum() + sol.ineq_dual.cos().sum() + sol.eq_dual.sin().sum()).backward()
    return sol, [a.grad for a in args]


@pytest.mark.parametrize("lp", [False, True], ids=["qp", "lp"])
def test_after_elimination_the_fast_loop_agrees_with_the_reduced_kernel(monkeypatch,
                                                                      eliminating, lp):
    insts = [_random_qp(80 + i, 6, 5, 2, lp=lp) for i in range(10)]
    args = [_t(np.stack([inst[k] for inst in insts])) for k in range(6)]
    sol, grads = _solve_eq_with_grads(args)
    assert eliminating == {"fast": [10], "guarded": []}
    assert (sol.status == Status.OPTIMAL).all()
    monkeypatch.setattr(defaults, "IPM_FAST_LOOP", False)
    ref, ref_grads = _solve_eq_with_grads(args)
    assert eliminating["guarded"] == [10]
    for a, b in ((sol.x, ref.x), (sol.ineq_dual, ref.ineq_dual), (sol.eq_dual, ref.eq_dual)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-7, rtol=1e-7)


def test_after_elimination_lost_items_go_to_the_reduced_kernel(eliminating):
    # x >= 0 with sum(x) = -1 (infeasible) between two feasible items of the same shape
    bad = _infeasible("simplex-negative-sum")
    good = [_random_qp(90 + i, 4, 4, 1) for i in range(2)]
    insts = [good[0], bad, good[1]]
    args = [_t(np.stack([inst[k] for inst in insts])) for k in range(6)]
    sol, grads = _solve_eq_with_grads(args)
    assert sol.status.tolist() == [Status.OPTIMAL, Status.INFEASIBLE, Status.OPTIMAL]
    assert eliminating == {"fast": [3], "guarded": [1]}   # only the bad item went on
    for i in (0, 2):
        alone, alone_grads = _solve_eq_with_grads([_t(a) for a in insts[i]])
        torch.testing.assert_close(sol.x[i], alone.x, atol=1e-10, rtol=0)
        for g, r in zip(grads, alone_grads, strict=True):
            torch.testing.assert_close(g[i], r, atol=1e-8, rtol=1e-8)


def test_the_polish_of_a_problem_without_a_unique_solution_stays_near_the_iterate():
    # min x1 s.t. 0 <= x1 <= 1, 1 <= x2 <= 2: x2 is free in [1, 2] at the optimum, the
    # active-set system is singular in x2, and the solution nearest 0 (x2 = 0) violates
    # x2 >= 1: the polish must keep x2 where the iterate has it (the polish of this loop
    # and of _qp_dense.run_dense; here once, not under every kernel of test_qp.py)
    from optlayer.solvers import _qp_dense, _qp_ipm

    Q = torch.zeros(1, 2, 2, dtype=F64)
    p = torch.tensor([[[1.0], [0.0]]], dtype=F64)
    G = torch.tensor([[[1.0, 0], [-1, 0], [0, 1], [0, -1]]], dtype=F64)
    h = torch.tensor([[[1.0], [0.0], [2.0], [-1.0]]], dtype=F64)
    d = _qp_ipm.make_data(Q, p.squeeze(-1), G, h.squeeze(-1), None, None)
    x = torch.tensor([[[1e-4], [1.4]]], dtype=F64)            # an iterate near the optimum
    s = h - G @ x
    z = torch.tensor([[[1e-4], [1.0 + 1e-4], [1e-4], [1e-4]]], dtype=F64)
    pol = _qp_dense._polish(d, x, s, z, None)
    px = pol.point[0].view(-1)
    torch.testing.assert_close(px, torch.tensor([0.0, 1.4], dtype=F64), atol=1e-12, rtol=0)
    assert pol.err.item() <= 1e-12
