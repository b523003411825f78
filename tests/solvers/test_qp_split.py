"""optlayer.solvers._qp_ipm: the active-set factorization that the polish and the
backward pass solve with (its Schur complement over each item's active rows only,
widened and merged across batches with different numbers of active rows)."""

from __future__ import annotations

import pytest
import torch

from optlayer.solvers import _qp_ipm as ipm

F64 = torch.float64
B, N, M, ME = 4, 7, 9, 2


def _data(equalities):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(B, N, N, generator=g, dtype=F64)
    Q = X @ X.transpose(1, 2) + 0.1 * torch.eye(N, dtype=F64)
    Q = 0.5 * (Q + Q.transpose(1, 2))
    G = torch.randn(B, M, N, generator=g, dtype=F64)
    A = torch.randn(B, ME, N, generator=g, dtype=F64) if equalities else None
    b = torch.randn(B, ME, generator=g, dtype=F64) if equalities else None
    return ipm.make_data(Q, torch.randn(B, N, generator=g, dtype=F64), G,
                         torch.rand(B, M, generator=g, dtype=F64), A, b)


def _point(active_counts, seed):
    """(s, z) whose active set z > s has the given number of rows per item."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, M, 1, generator=g, dtype=F64) + 0.5
    z = torch.rand(B, M, 1, generator=g, dtype=F64) * 0.4
    for i, k in enumerate(active_counts):
        rows = torch.randperm(M, generator=g)[:k]
        z[i, rows] = 2.0
    return s, z


def _reference(d, J, a1, a3, a2):
    """The active-set KKT system of each item, solved densely."""
    out = []
    for i in range(B):
        rows = J[i, :, 0].nonzero().view(-1)
        blocks = [d.G[i, rows]] + ([d.A[i]] if d.A is not None else [])
        C = torch.cat(blocks, dim=0)
        k = C.shape[0]
        K = torch.zeros(N + k, N + k, dtype=F64)
        K[:N, :N] = d.Q[i]
        K[:N, N:] = C.T
        K[N:, :N] = C
        rhs = torch.cat([a1[i, :, 0], a3[i, rows, 0]] + ([a2[i, :, 0]] if a2 is not None else []))
        sol = torch.linalg.solve(K, rhs)
        dz = torch.zeros(M, dtype=F64)
        dz[rows] = sol[N:N + rows.numel()]
        out.append((sol[:N], dz, sol[N + rows.numel():]))
    return out


def _check(d, f, J, a1, a3, a2, items=range(B)):
    dx, dz, dy = ipm.split_solve(d, f, a1, a3, a2, refine=1)
    ref = _reference(d, J, a1, a3, a2)
    for i in items:
        torch.testing.assert_close(dx[i, :, 0], ref[i][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(dz[i, :, 0], ref[i][1], rtol=1e-9, atol=1e-9)
        if a2 is not None:
            torch.testing.assert_close(dy[i, :, 0], ref[i][2], rtol=1e-9, atol=1e-9)


def _rhs(d, seed):
    g = torch.Generator().manual_seed(seed)
    a2 = torch.randn(B, ME, 1, generator=g, dtype=F64) if d.A is not None else None
    return (torch.randn(B, N, 1, generator=g, dtype=F64),
            torch.randn(B, M, 1, generator=g, dtype=F64), a2)


@pytest.mark.parametrize("equalities", [False, True])
def test_the_schur_complement_has_the_largest_active_count_of_rows(equalities):
    d = _data(equalities)
    s, z = _point([2, 5, 0, 3], seed=1)
    f = ipm.split_factor(d, s, z)
    assert f.ok.all()
    assert f.Jk.shape == (B, 5, 1)
    assert f.V.shape == (B, N, 5 + (ME if equalities else 0))
    # each item's active rows come first in its order
    assert torch.equal(f.Jk.sum(dim=(1, 2)), torch.tensor([2, 5, 0, 3]))
    _check(d, f, z > s, *_rhs(d, 2))


@pytest.mark.parametrize("equalities", [False, True])
def test_a_widened_factor_solves_the_same_system(equalities):
    d = _data(equalities)
    s, z = _point([1, 3, 2, 0], seed=4)
    f = ipm.split_factor(d, s, z)
    wide = ipm.widen(f, M)
    assert wide.Jk.shape[1] == M and wide.Ls.shape[1] == M + (ME if equalities else 0)
    assert ipm.widen(f, f.Jk.shape[1]) is f
    rhs = _rhs(d, 5)
    for a, b in zip(ipm.split_solve(d, f, *rhs, refine=0),
                    ipm.split_solve(d, wide, *rhs, refine=0), strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    _check(d, wide, z > s, *rhs)


def test_factors_with_different_active_counts_merge():
    d = _data(True)
    s, z = _point([1, 2, 1, 2], seed=6)
    s2, z2 = _point([6, 4, 5, 3], seed=7)
    narrow, broad = ipm.split_factor(d, s, z), ipm.split_factor(d, s2, z2)
    assert narrow.Jk.shape[1] == 2 and broad.Jk.shape[1] == 6
    idx = torch.tensor([1, 3])
    merged = ipm.merge_factors(narrow, idx, ipm.SplitFactor(*(
        None if t is None else t.index_select(0, idx) for t in broad)))
    assert merged.Jk.shape[1] == 6
    J = torch.where(torch.isin(torch.arange(B), idx).view(B, 1, 1), z2 > s2, z > s)
    _check(d, merged, J, *_rhs(d, 8))
