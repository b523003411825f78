"""``linalg._common.lu_factor``: the batched LU factorisations that torch 2.13 with MKL
cannot do with several threads above ~150 rows (they hang, or fail in DLASWP) run one
matrix at a time, with the factors of each matrix alone; so the convex interior point
(one LU of its Newton system per iteration) finishes at ``N > 150`` unknowns."""

from __future__ import annotations

import pytest
import torch

import optlayer as ol
from optlayer.layer import random_params
from optlayer.linalg._common import lu_factor

D = torch.float64


@pytest.mark.parametrize("n", [8, 200])
def test_lu_factor_batched_above_the_mkl_limit(n):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(n)
        A = torch.randn(3, 2, n, n, dtype=D, generator=g) + n * torch.eye(n, dtype=D)
        b = torch.randn(3, 2, n, 1, dtype=D, generator=g)
        LU, piv, info = lu_factor(A)
        assert LU.shape == A.shape and piv.shape == A.shape[:-1] and info.shape == (3, 2)
        assert bool((info == 0).all())
        x = torch.linalg.lu_solve(LU, piv, b)
        torch.testing.assert_close(A @ x, b, rtol=0, atol=1e-10)
        # each item's factors are those of the matrix alone
        LU1, piv1, _ = torch.linalg.lu_factor_ex(A[2, 1])
        torch.testing.assert_close(LU[2, 1], LU1, rtol=0, atol=0)
        assert torch.equal(piv[2, 1], piv1)
    finally:
        torch.set_num_threads(threads)


def test_convex_interior_point_above_150_unknowns():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = ol.load("examples/problems/robust_ls.opt", dims={"m": 200, "n": 160, "k": 10})
        vals = random_params(layer.problem, batch=2, seed=0)
        x = layer(**vals)
        assert x.shape == (2, 160)
        assert bool((layer.info.status == 0).all())
    finally:
        torch.set_num_threads(threads)
