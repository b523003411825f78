"""optlayer.solvers._qp_elim: equality constraints eliminated before the reduced kernel."""

from __future__ import annotations

import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_elim as elim
from optlayer.solvers import _qp_ipm as ipm
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

from ._kernels import force

F64 = torch.float64


def _batch(seed, B, n, m, me):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    Q = M @ M.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=F64)
    p = torch.randn(B, n, generator=g, dtype=F64)
    x0 = torch.randn(B, n, generator=g, dtype=F64)
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    h = (G @ x0.unsqueeze(-1)).squeeze(-1) + torch.rand(B, m, generator=g, dtype=F64)
    A = torch.randn(B, me, n, generator=g, dtype=F64)
    b = (A @ x0.unsqueeze(-1)).squeeze(-1)
    return [Q, p, G, h, A, b]


def _solve_and_grad(data, w):
    ins = [t.clone().requires_grad_() for t in data]
    sol = solve_qp(*ins, tol=1e-12, on_failure="ignore")
    loss = (sol.x * w).sum() + sol.eq_dual.sum() + sol.ineq_dual.sum()
    return sol, torch.autograd.grad(loss, ins)


def _spy(monkeypatch):
    calls = []
    real = elim.eliminate
    monkeypatch.setattr(elim, "eliminate", lambda *a: calls.append(r := real(*a)) or r)
    return calls


@pytest.mark.parametrize("kernel", ["reduced", "reduced-schur"])
@pytest.mark.parametrize("rank_deficient_item", [None, 2])
def test_eliminated_equalities_give_the_point_and_gradients_of_the_full_system(
        monkeypatch, rank_deficient_item, kernel):
    force(monkeypatch, kernel)
    data = _batch(0, 5, 8, 10, 3)
    if rank_deficient_item is not None:   # a repeated row: the whole batch keeps A
        A, b = data[4], data[5]
        A[rank_deficient_item, 2] = A[rank_deficient_item, 0]
        b[rank_deficient_item, 2] = b[rank_deficient_item, 0]
    w = torch.randn(5, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    calls = _spy(monkeypatch)
    sol, grads = _solve_and_grad(data, w)
    assert len(calls) == 1 and (calls[0] is None) == (rank_deficient_item is not None)
    monkeypatch.setattr(defaults, "IPM_ELIMINATE_EQUALITIES", False)
    ref, ref_grads = _solve_and_grad(data, w)
    assert len(calls) == 1
    assert (sol.status == Status.OPTIMAL).all() and (ref.status == Status.OPTIMAL).all()
    for a, r in zip((sol.x, sol.eq_dual, sol.ineq_dual, sol.slack),
                    (ref.x, ref.eq_dual, ref.ineq_dual, ref.slack), strict=True):
        torch.testing.assert_close(a, r, atol=1e-9, rtol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-8)


def test_the_returned_point_is_judged_on_the_original_problem(monkeypatch):
    force(monkeypatch, "reduced")
    Q, p, G, h, A, b = _batch(3, 4, 7, 9, 2)
    sol = solve_qp(Q, p, G, h, A, b, on_failure="raise")
    x, y, z, s = (t.unsqueeze(-1) for t in (sol.x, sol.eq_dual, sol.ineq_dual, sol.slack))
    stationarity = Q @ x + p.unsqueeze(-1) + G.transpose(1, 2) @ z + A.transpose(1, 2) @ y
    assert stationarity.abs().max() <= 1e-10
    assert (A @ x - b.unsqueeze(-1)).abs().max() <= 1e-12
    assert (G @ x + s - h.unsqueeze(-1)).abs().max() <= 1e-12
    # the residuals reported are those of the original data at the returned point, bit for
    # bit (the original problem is kept unstacked where its equalities are eliminated)
    r = ipm.residuals(ipm.make_data(Q, p, G, h, A, b, stacked=False), x, s, z, y)
    assert torch.equal(sol.dual_residual, r.dres) and torch.equal(sol.primal_residual, r.pres)
    assert torch.equal(sol.gap, r.gap)


def test_the_reduced_gap_is_scaled_by_the_original_objective():
    # the reduced objective drops the constant 1/2 x0'Qx0 + p'x0; the gap's scale keeps it
    Q, p, G, h, A, b = _batch(4, 3, 6, 8, 2)
    p = p + 50.0                                  # a large objective
    d = ipm.make_data(Q, p, G, h, A, b)
    e = elim.eliminate(d, torch.ones(3, dtype=torch.bool))
    u = torch.randn(3, 4, 1, dtype=F64)
    s, z = torch.rand(3, 8, 1, dtype=F64), torch.rand(3, 8, 1, dtype=F64)
    x = e.x0 + e.Z @ u
    reduced = ipm.residuals(e.data, u, s, z, None)
    full = ipm.residuals(d, x, s, z, torch.zeros(3, 2, 1, dtype=F64))
    torch.testing.assert_close(reduced.obj_scale, full.obj_scale, atol=0, rtol=1e-12)
    assert (e.data.obj0.abs() > 1.0).all()
    torch.testing.assert_close(A @ e.x0, b.unsqueeze(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(A @ e.Z, torch.zeros(3, 2, 4, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("me", [4, 5])
def test_as_many_equalities_as_variables_are_kept_in_the_iterations(monkeypatch, me):
    # no null space to iterate in (me = n) or more rows than variables (me > n, consistent)
    force(monkeypatch, "reduced")
    calls = _spy(monkeypatch)
    Q, p, G, h, A, b = _batch(5, 3, 4, 3, me)
    sol = solve_qp(Q, p, G, h, A, b, on_failure="raise")
    assert calls == [] and (sol.status == Status.OPTIMAL).all()
    x = torch.linalg.lstsq(A, b.unsqueeze(-1)).solution          # the only feasible point
    torch.testing.assert_close(sol.x, x.squeeze(-1), atol=1e-9, rtol=0)


def test_an_infeasible_item_returns_a_farkas_certificate_of_the_original_problem(monkeypatch):
    # x >= 0 with sum(x) = -1 (item 1) next to a feasible item; the equality is eliminated
    force(monkeypatch, "reduced")
    calls = _spy(monkeypatch)
    n = 4
    Q = torch.eye(n, dtype=F64).expand(2, n, n)
    p = torch.ones(2, n, dtype=F64)
    G, h = -torch.eye(n, dtype=F64).expand(2, n, n), torch.zeros(2, n, dtype=F64)
    A = torch.ones(2, 1, n, dtype=F64)
    b = torch.tensor([[1.0], [-1.0]], dtype=F64)
    sol = solve_qp(Q, p, G, h, A, b, on_failure="ignore")
    assert calls[0] is not None
    assert sol.status.tolist() == [Status.OPTIMAL, Status.INFEASIBLE]
    z, y = sol.ineq_dual[1:].unsqueeze(-1), sol.eq_dual[1:].unsqueeze(-1)
    d = ipm.make_data(Q[1:], p[1:], G[1:], h[1:], A[1:], b[1:])
    Gtz_Aty = G[1:].transpose(1, 2) @ z + A[1:].transpose(1, 2) @ y
    assert ipm.infeasibility_certificate(d, Gtz_Aty, z, y, 1e-8).item()
