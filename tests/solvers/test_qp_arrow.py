"""optlayer.solvers._qp_arrow: the reduced kernel's factorization of an epigraph-shaped
``Q + G'WG`` by its diagonal block (detection, solves against the dense Cholesky, and
solve_qp's solutions and gradients with it against cvxpy and the dense path)."""

from __future__ import annotations

import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_arrow as arrow
from optlayer.solvers import _qp_dense as dense
from optlayer.solvers import _qp_ipm as ipm
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

F64 = torch.float64


def _lad(B=3, rows=60, d=6, ridge=0.1, seed=0):
    """``min sum |X w - t| + ridge |w|^2`` as a QP in ``(w, u)``: ``X w - u <= t``,
    ``-X w - u <= -t`` (u the epigraph variables: one per row pair)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, rows, d, generator=g, dtype=F64)
    t = torch.randn(B, rows, generator=g, dtype=F64)
    n = d + rows
    Q = torch.zeros(B, n, n, dtype=F64)
    Q[:, :d, :d] = 2 * ridge * torch.eye(d, dtype=F64)
    p = torch.cat([torch.zeros(B, d, dtype=F64), torch.ones(B, rows, dtype=F64)], dim=1)
    eye = torch.eye(rows, dtype=F64).expand(B, rows, rows)
    G = torch.cat([torch.cat([X, -eye], dim=2), torch.cat([-X, -eye], dim=2)], dim=1)
    h = torch.cat([t, -t], dim=1)
    return Q, p, G, h


def _H(QA, G, W, reg_abs, reg_rel):
    H = QA + G.mT @ (W * G)
    dg = H.diagonal(dim1=1, dim2=2)
    dg.add_(dg.abs() * reg_rel + reg_abs)
    return H


def test_detect_finds_the_epigraph_columns_not_the_weights():
    Q, p, G, h = _lad(B=2, rows=70, d=5)
    a = arrow.detect(Q, G)
    assert a is not None
    assert a.T.tolist() == list(range(5, 75)) and a.F.tolist() == list(range(5))
    # each row's T-entry: row i and row 70 + i both bound u_i, with coefficient -1
    assert a.row.tolist() == list(range(70)) * 2
    assert torch.equal(a.g, torch.full((2, 140, 1), -1.0, dtype=F64))


def test_detect_declines_where_it_would_not_pay():
    Q, p, G, h = _lad(B=2, rows=70, d=5)
    dense_Q = Q.clone()
    dense_Q[:, 5:, 5:] = 1.0                       # the epigraph block no longer diagonal
    assert arrow.detect(dense_Q, G) is None
    Qs, _, Gs, _ = _lad(B=2, rows=12, d=5)         # n = 17 < IPM_ARROW_MIN_SIZE
    assert arrow.detect(Qs, Gs) is None
    # every row touching two of the diagonal columns: the search ends with none
    Gd = torch.ones(2, 10, 80, dtype=F64)
    assert arrow.detect(torch.zeros(2, 80, 80, dtype=F64), Gd) is None


def test_detect_a_diagonal_box_qp_is_all_diagonal():
    B, n = 2, 70
    Q = torch.diag_embed(torch.rand(B, n, dtype=F64) + 1.0)
    G = torch.cat([torch.eye(n, dtype=F64), -torch.eye(n, dtype=F64)]).expand(B, 2 * n, n)
    a = arrow.detect(Q, G)
    assert a is not None and a.T.numel() == n and a.F.numel() == 0
    W = torch.rand(B, 2 * n, 1, dtype=F64) + 0.5
    L, ok = arrow.factor(a, W, torch.full((B, 1), 1e-12, dtype=F64), 1e-14)
    r = torch.randn(B, n, 1, dtype=F64)
    H = _H(Q, G, W, 1e-12, 1e-14)
    assert ok.all() and torch.allclose(H @ arrow.solve(L, r), r, atol=1e-12)


@pytest.mark.parametrize("W", ["random", "spread", "one"])
def test_factor_and_solve_agree_with_the_dense_cholesky(W):
    Q, p, G, h = _lad(B=3, rows=70, d=6)
    B, m, n = G.shape
    # a dense F block with cross terms, as a ridge on correlated weights gives
    M = torch.randn(B, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    Q[:, :6, :6] = M @ M.mT
    g = torch.Generator().manual_seed(1)
    Wt = {"random": torch.rand(B, m, 1, generator=g, dtype=F64) + 0.1,
          # near an interior point's end: z / s from 1e-8 to 1e8
          "spread": 10.0 ** (16 * torch.rand(B, m, 1, generator=g, dtype=F64) - 8),
          "one": 1.0}[W]
    reg_abs, reg_rel = torch.full((B, 1), 1e-13, dtype=F64), 1e-15
    a = arrow.detect(Q, G)
    L, ok = arrow.factor(a, Wt, reg_abs, reg_rel)
    assert ok.all()
    H = _H(Q, G, Wt, reg_abs, reg_rel)
    r = torch.randn(B, n, 3, generator=g, dtype=F64)
    x = arrow.solve(L, r)
    ref = torch.cholesky_solve(r, torch.linalg.cholesky(H))
    assert torch.allclose(x, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    assert float((H @ x - r).abs().max()) <= 1e-8 * float(H.abs().max()) * float(x.abs().max())


def test_a_failed_pivot_is_reported_per_item():
    Q, p, G, h = _lad(B=2, rows=70, d=6)
    a = arrow.detect(Q, G)
    W = torch.rand(2, 140, 1, dtype=F64) + 0.1
    W[1] = -5.0                                    # item 1: an indefinite H
    L, ok = arrow.factor(a, W, torch.full((2, 1), 1e-13, dtype=F64), 1e-15)
    assert ok.tolist() == [True, False]


def test_take_selects_items():
    Q, p, G, h = _lad(B=4, rows=70, d=6)
    d = ipm.with_arrow(ipm.make_data(Q, p, G, h, None, None))
    assert d.arrow is not None
    idx = torch.tensor([3, 1])
    part = ipm.take(d, idx)
    alone = ipm.with_arrow(ipm.make_data(Q[idx], p[idx], G[idx], h[idx], None, None))
    for name in arrow.Arrow._fields:
        assert torch.equal(getattr(part.arrow, name), getattr(alone.arrow, name)), name


def _solve_both(Q, p, G, h, monkeypatch, **kw):
    assert dense.kernel_for(Q.shape[1], G.shape[1], 0, Q.shape[0]) == "reduced"
    with_arrow = solve_qp(Q, p, G, h, **kw)
    monkeypatch.setattr(defaults, "IPM_ARROW_MIN_SIZE", 10 ** 9)
    without = solve_qp(Q, p, G, h, **kw)
    monkeypatch.undo()
    return with_arrow, without


def test_solve_qp_with_the_arrow_matches_cvxpy_and_the_dense_factorization(monkeypatch):
    cp = pytest.importorskip("cvxpy")
    Q, p, G, h = _lad(B=3, rows=60, d=6)
    seen = []
    orig = arrow.factor
    monkeypatch.setattr(arrow, "factor", lambda *a: seen.append(1) or orig(*a))
    sol, ref = _solve_both(Q, p, G, h, monkeypatch)
    assert seen, "the reduced kernel did not take the arrow factorization"
    assert (sol.status == int(Status.OPTIMAL)).all()
    assert torch.allclose(sol.x, ref.x, atol=1e-9)
    assert torch.equal(sol.iter_num, ref.iter_num)
    for i in range(3):
        x = cp.Variable(66)
        Qi, pi, Gi, hi = (v[i].numpy() for v in (Q, p, G, h))
        prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Qi)) + pi @ x),
                          [Gi @ x <= hi])
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        assert torch.allclose(sol.x[i, :6], torch.from_numpy(x.value[:6]), atol=1e-6)


def test_gradients_with_the_arrow_match_finite_differences(monkeypatch):
    Q, p, G, h = _lad(B=2, rows=60, d=6, seed=4)
    w = torch.randn(2, 66, dtype=F64, generator=torch.Generator().manual_seed(5))
    seen = []
    orig = arrow.factor
    monkeypatch.setattr(arrow, "factor", lambda *a: seen.append(1) or orig(*a))

    def loss(h):
        return (solve_qp(Q, p, G, h, tol=1e-12).x * w).sum()

    hv = h.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(hv), hv)
    assert seen
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        v = torch.randn(h.shape, generator=g, dtype=F64)
        eps = 1e-6
        fd = (loss(h + eps * v) - loss(h - eps * v)) / (2 * eps)
        assert abs(float(fd) - float((grad * v).sum())) <= 1e-6 * (1 + abs(float(fd)))


def test_the_active_set_factorization_agrees_with_the_dense_one():
    """``split_factor`` / ``split_solve`` (the polish and the backward of the reduced
    kernel) through the arrow factorization: the dense one's solutions, with rows whose
    epigraph column two active rows share and dummy rows in the Schur complement."""
    Q, p, G, h = _lad(B=3, rows=40, d=5, seed=2)
    B, m, n = G.shape
    g = torch.Generator().manual_seed(7)
    s = torch.rand(B, m, 1, generator=g, dtype=F64)
    z = torch.rand(B, m, 1, generator=g, dtype=F64)
    z[:, :40] = s[:, :40] * 0.5            # at most one row of each u_i active ...
    for i in range(5):                     # ... but in item 0 both rows of u_0, ..., u_4
        z[0, i] = z[0, 40 + i] = s[0, i] + s[0, 40 + i] + 1.0
    d = ipm.make_data(Q, p, G, h, None, None)
    da = ipm.with_arrow(d)
    assert da.arrow is not None
    fa, fd = ipm.split_factor(da, s, z), ipm.split_factor(d, s, z)
    assert isinstance(fa.L, arrow.ArrowL) and fa.ok.all() and fd.ok.all()
    a1 = torch.randn(B, n, 1, generator=g, dtype=F64)
    a3 = torch.randn(B, m, 1, generator=g, dtype=F64)
    for refine in (0, 1):
        xa, za, _ = ipm.split_solve(da, fa, a1, a3, None, refine=refine)
        xd, zd, _ = ipm.split_solve(d, fd, a1, a3, None, refine=refine)
        scale = float(xd.abs().max()) + float(zd.abs().max())
        assert torch.allclose(xa, xd, atol=1e-9 * scale)
        assert torch.allclose(za, zd, atol=1e-9 * scale)
    # merged items keep the arrow factorization's type (the polish of a few items)
    idx = torch.tensor([2])
    part = ipm.split_factor(ipm.take(da, idx), s[idx], z[idx])
    merged = ipm.merge_factors(fa, idx, part)
    xm, zm, _ = ipm.split_solve(da, merged, a1, a3, None, refine=0)
    xa, za, _ = ipm.split_solve(da, fa, a1, a3, None, refine=0)
    assert torch.allclose(xm, xa, atol=1e-12) and torch.allclose(zm, za, atol=1e-12)


def test_the_iterations_factor_with_equalities_on_the_other_columns():
    """Equality rows that meet only the weights keep the epigraph block diagonal in
    ``Q + rho A'A``: the reduced system ``[[H, A'], [A, 0]]`` solved through the arrow
    factorization (its Schur complement of ``A`` included) equals the dense solve."""
    Q, p, G, h = _lad(B=2, rows=40, d=5, seed=8)
    B, m, n = G.shape
    g = torch.Generator().manual_seed(9)
    A = torch.zeros(B, 2, n, dtype=F64)
    A[:, :, :5] = torch.randn(B, 2, 5, generator=g, dtype=F64)
    b = torch.randn(B, 2, generator=g, dtype=F64)
    d = ipm.make_data(Q, p, G, h, A, b)
    da = ipm.with_arrow(d)
    assert da.arrow is not None and da.arrow.F.tolist() == list(range(5))
    W = 10.0 ** (8 * torch.rand(B, m, 1, generator=g, dtype=F64) - 4)
    fa, fd = ipm.factor(da, W), ipm.factor(d, W)
    assert isinstance(fa.L, arrow.ArrowL) and fa.ok.all() and fd.ok.all()
    r1 = torch.randn(B, n, 1, generator=g, dtype=F64)
    r2 = torch.randn(B, 2, 1, generator=g, dtype=F64)
    ua, wa = ipm.kkt_solve(da, fa, r1, r2, refine=1)
    ud, wd = ipm.kkt_solve(d, fd, r1, r2, refine=1)
    assert torch.allclose(ua, ud, rtol=1e-9, atol=1e-9 * float(ud.abs().max()))
    assert torch.allclose(wa, wd, rtol=1e-9, atol=1e-9 * float(wd.abs().max()))
