"""solve_one_quadratic_row: Newton on the multiplier of one convex quadratic row, against
cvxpy, and the items it declines (for the interior point); through a layer, the same
solution, duals and gradients as the interior point."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import optlayer as ol
from optlayer.compiler import canon
from optlayer.layer import random_params
from optlayer.solvers.secular import solve_one_quadratic_row
from optlayer.status import Status

F64 = torch.float64
SCS = {"solver": cp.SCS, "eps": 1e-11, "max_iters": 200_000}
EXAMPLES = canon.__file__.rsplit("/optlayer/", 1)[0] + "/examples/problems"


def _ball(seed, B=8, n=5, k=3, scale=1.0):
    """``min ½x'Qx + p'x s.t. |Fx - t|² - r² <= 0`` as ``(Q, p, P, q, c)`` and ``(F, t, r)``:
    the radius from 0.3 to 1.6 times the row's norm at the unconstrained minimiser, so the
    row binds for some items only."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    Q = M @ M.mT / n + 0.1 * torch.eye(n, dtype=F64)
    p = torch.randn(B, n, generator=g, dtype=F64)
    F = scale * torch.randn(B, k, n, generator=g, dtype=F64)
    t = scale * torch.randn(B, k, generator=g, dtype=F64)
    x0 = -torch.linalg.solve(Q, p)                      # the unconstrained minimiser
    r = torch.linspace(0.3, 1.6, B, dtype=F64) * ((F @ x0.unsqueeze(-1)).squeeze(-1)
                                                  - t).norm(dim=-1)
    P = 2 * F.mT @ F
    q = -2 * (F.mT @ t.unsqueeze(-1)).squeeze(-1)
    c = (t * t).sum(-1) - r * r
    return (Q, p, P, q, c), (F, t, r)


def _cvxpy(Q, p, row):
    """Per item: ``x`` and the multiplier of the row ``row(x, i) <= 0`` (a cvxpy expression)
    for the objective ``½|L'x|² + p'x`` (``Q = LL'``), by SCS at eps 1e-11 (Clarabel stops
    1e-4 away on some of these items, "optimal_inaccurate")."""
    L = torch.linalg.cholesky(Q)
    xs, lams = [], []
    for i in range(p.shape[0]):
        x = cp.Variable(p.shape[1])
        con = row(x, i) <= 0
        cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L[i].mT.numpy() @ x) + p[i].numpy() @ x),
                   [con]).solve(**SCS)
        xs.append(x.value)
        lams.append(float(np.asarray(con.dual_value).reshape(-1)[0]))
    return torch.tensor(np.array(xs)), torch.tensor(lams, dtype=F64)


def _assert_kkt(sol, Q, p, P, q, c, atol=1e-9):
    """The KKT conditions at the returned point, computed here (for a convex problem they
    certify the optimum): stationarity, feasibility, a nonnegative multiplier,
    complementarity."""
    x, lam = sol.x, sol.lam[:, 0]
    g = 0.5 * torch.einsum("bi,bij,bj->b", x, P, x) + (q * x).sum(-1) + c
    stat = torch.einsum("bij,bj->bi", Q + lam[:, None, None] * P, x) + p + lam[:, None] * q
    assert float(stat.abs().max()) <= atol
    assert float(g.max()) <= atol and bool((lam >= 0).all())
    assert float((lam * g).abs().max()) <= atol


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_cvxpy_where_the_row_binds_and_where_it_does_not(seed):
    data, (F, t, r) = _ball(seed)
    sol = solve_one_quadratic_row(*data, tol=1e-10)
    _assert_kkt(sol, *data)
    x_ref, lam_ref = _cvxpy(data[0], data[1], lambda x, i: cp.sum_squares(
        F[i].numpy() @ x - t[i].numpy()) - float(r[i]) ** 2)
    assert sol.status.tolist() == [int(Status.OPTIMAL)] * 8
    torch.testing.assert_close(sol.x, x_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(sol.lam[:, 0], lam_ref, atol=1e-6, rtol=0)
    inactive = lam_ref < 1e-9
    assert bool(inactive.any()) and bool((~inactive).any())   # both kinds of items
    assert bool((sol.lam[inactive] == 0).all())                # exactly: x = -Q^-1 p
    assert bool((sol.error <= 1e-10).all())
    assert int(sol.iterations.max()) <= 12


def test_a_row_unbounded_below_takes_newton_on_the_row_itself():
    """``x₀² + x₁ - 1 <= 0``: ``q`` is outside the range of ``P`` (kappa infinite)."""
    data, _ = _ball(3, B=4, n=3)
    Q, p = data[0], data[1] * 3
    P = torch.diag(torch.tensor([2.0, 0.0, 0.0], dtype=F64)).expand(4, 3, 3)
    q = torch.tensor([0.0, 1.0, 0.0], dtype=F64).expand(4, 3)
    c = torch.full((4,), -1.0, dtype=F64)
    sol = solve_one_quadratic_row(Q, p, P, q, c, tol=1e-10)
    _assert_kkt(sol, Q, p, P, q, c)
    x_ref, lam_ref = _cvxpy(Q, p, lambda x, i: cp.square(x[0]) + x[1] - 1)
    assert sol.status.tolist() == [int(Status.OPTIMAL)] * 4
    assert bool((lam_ref > 1e-3).any())
    torch.testing.assert_close(sol.x, x_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(sol.lam[:, 0], lam_ref, atol=1e-6, rtol=0)


def test_large_row_constants_converge_at_their_roundoff():
    """The row scaled by 1e6 (``|t|`` ~ 1e3): the same ``x``, the multiplier 1e-6 times."""
    data, _ = _ball(4)
    big, _ = _ball(4, scale=1e3)
    sol, sol_big = (solve_one_quadratic_row(*d, tol=1e-10) for d in (data, big))
    assert sol_big.status.tolist() == [int(Status.OPTIMAL)] * 8
    torch.testing.assert_close(sol_big.x, sol.x, atol=1e-8, rtol=0)
    torch.testing.assert_close(sol_big.lam * 1e6, sol.lam, atol=1e-8, rtol=1e-6)


def test_declines_what_it_cannot_certify():
    """Item 0 solvable; item 1 infeasible (``|Fx - t|² <= -1``); item 2 on the edge of
    feasibility (radius 0 with ``F`` of full row rank: a single feasible set of points, no
    strictly feasible one); item 3 with a singular ``Q``: NUMERICAL_ERROR, for the
    interior point to certify."""
    (Q, p, P, q, c), (F, t, r) = _ball(5, B=4)
    c = c.clone()
    c[1] = (t[1] * t[1]).sum() + 1.0
    c[2] = (t[2] * t[2]).sum()
    Q = Q.clone()
    Q[3] = 0.0
    sol = solve_one_quadratic_row(Q, p, P, q, c, tol=1e-10)
    assert sol.status.tolist() == [int(Status.OPTIMAL)] + [int(Status.NUMERICAL_ERROR)] * 3


def _layer_both_ways(monkeypatch, path, seed):
    """``(x, duals, gradients)`` of the example at batch 8 by Newton on the multiplier and
    by the interior point (the rule turned off)."""
    out = []
    for on in (True, False):
        if not on:
            monkeypatch.setattr(canon, "one_quadratic_row", lambda program: False)
        layer = ol.load(path)
        vals = {k: v.requires_grad_(True) for k, v in
                random_params(layer.problem, batch=8, seed=seed).items()}
        x = layer(**vals)
        (x * torch.arange(1.0, x.shape[-1] + 1, dtype=F64)).sum().backward()
        out.append((x.detach(), layer.duals("robust"), layer.info.status,
                    {k: v.grad for k, v in vals.items()}))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_robust_ls_agrees_with_the_interior_point(monkeypatch, seed):
    (x1, d1, s1, g1), (x2, d2, s2, g2) = _layer_both_ways(
        monkeypatch, EXAMPLES + "/robust_ls.opt", seed)
    assert s1.tolist() == s2.tolist() == [0] * 8
    assert bool((d1 > 1e-6).any())                # the constraint binds somewhere
    torch.testing.assert_close(x1, x2, atol=1e-8, rtol=0)
    torch.testing.assert_close(d1, d2, atol=1e-7, rtol=0)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=1e-6, rtol=1e-6)


def test_the_rule_reads_the_problem():
    """One scalar quadratic row, a quadratic objective, nothing else; an equality, a second
    row, an elementwise row or a linear objective (no Q to factor) leaves the interior
    point."""
    base = "dim n = 3\nparam c[n]\nvar x[n]\nminimize sum_squares(x - c)\nsubject to\n"
    assert canon.one_quadratic_row(ol.compile(base + "    sum_squares(x) <= 1\n").program)
    for src in (base + "    sum_squares(x) <= 1\n    sum(x) == 1\n",
                base + "    sum_squares(x) <= 1\n    sum_squares(x - 1) <= 2\n",
                base + "    square(x) <= 1\n",
                base.replace("sum_squares(x - c)", "c @ x") + "    sum_squares(x) <= 1\n"):
        layer = ol.compile(src)
        assert layer.plan.solver == "convex"
        assert not canon.one_quadratic_row(layer.program)
        assert "optlayer.solvers.secular" not in layer.explain()
    assert "optlayer.solvers.secular" in ol.load(EXAMPLES + "/robust_ls.opt").explain()


def test_a_batch_with_declined_items_merges_them_from_the_interior_point(monkeypatch):
    """Item 1's ``A`` has a zero column (``Q`` singular: declined, solved by the interior
    point, unique because the row binds); item 3 has no feasible point (INFEASIBLE). The
    others come from Newton on the multiplier; all match the interior point's run."""
    src = ("dim m = 5\ndim n = 3\nparam A[m, n]\nparam t[m]\nparam r\nvar x[n]\n"
           "minimize sum_squares(A @ x - t)\nsubject to\n    ball: sum_squares(x - 1) <= r\n")
    g = torch.Generator().manual_seed(7)
    A = torch.randn(4, 5, 3, generator=g, dtype=F64)
    A[1, :, 2] = 0.0
    t = 5 * torch.randn(4, 5, generator=g, dtype=F64)
    r = torch.tensor([0.5, 0.5, 0.5, -1.0], dtype=F64)
    calls = []
    real = canon.one_quadratic_row
    out = []
    for on in (True, False):
        monkeypatch.setattr(canon, "one_quadratic_row",
                            (lambda p: calls.append(1) or real(p)) if on else (lambda p: False))
        layer = ol.compile(src, on_failure="mask")
        A_, t_ = A.clone().requires_grad_(True), t.clone().requires_grad_(True)
        x = layer(A=A_, t=t_, r=r)
        (x[[0, 1, 2]] * torch.tensor([1.0, 2.0, 3.0], dtype=F64)).sum().backward()
        out.append((x.detach(), layer.info.status.tolist(), A_.grad, t_.grad))
    assert calls
    (x1, s1, gA1, gt1), (x2, s2, gA2, gt2) = out
    assert s1 == s2 == [0, 0, 0, int(Status.INFEASIBLE)]
    torch.testing.assert_close(x1[:3], x2[:3], atol=1e-8, rtol=0)
    assert bool(x1[3].isnan().all())
    torch.testing.assert_close(gA1, gA2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gt1, gt2, atol=1e-6, rtol=1e-6)


def test_an_eigendecomposition_that_fails_declines_every_item(monkeypatch):
    def fail(M):
        raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", fail)
    data, _ = _ball(6, B=3)
    sol = solve_one_quadratic_row(*data, tol=1e-10)
    assert sol.status.tolist() == [int(Status.NUMERICAL_ERROR)] * 3
    assert bool(sol.x.isnan().all())
