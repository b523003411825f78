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


def test_solve_lu_routes_agree_and_the_graph_route_differentiates():
    # solve_lu's two routes: lu_solve on the factors where nothing differentiates the
    # solve (the layers' backward), unpacked factors and triangular solves where a graph,
    # a forward-mode tangent or a torch.func transform may (lu_solve is wrong or fails
    # there in torch 2.13); the same solution, and the graph route still differentiates
    from optlayer.linalg import solve_lu
    from optlayer.linalg.dense import _differentiated

    g = torch.Generator().manual_seed(3)
    A = torch.randn(4, 6, 6, dtype=D, generator=g) + 6 * torch.eye(6, dtype=D)
    b = torch.randn(4, 6, dtype=D, generator=g)
    assert not _differentiated(A, b)
    plain = solve_lu(A, b)
    Ag = A.clone().requires_grad_(True)
    assert _differentiated(Ag, b)
    graph = solve_lu(Ag, b)
    torch.testing.assert_close(plain, graph.detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close((A @ plain.unsqueeze(-1)).squeeze(-1), b, rtol=0, atol=1e-12)
    (gA,) = torch.autograd.grad(graph.sum(), Ag)
    # d(sum x)/dA = -A^-T 1 x^T
    w = torch.linalg.solve(A.mT, torch.ones(4, 6, 1, dtype=D))
    torch.testing.assert_close(gA, -w @ plain.unsqueeze(-2), rtol=0, atol=1e-12)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(b, torch.ones_like(b))
        assert _differentiated(A, dual)
    seen = []
    torch.func.vmap(lambda v: seen.append(_differentiated(A[0], v)) or v)(b)
    assert seen == [True]   # under a torch.func transform
