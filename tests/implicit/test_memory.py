"""Backward memory is O(solution size): no solver iterate is kept alive or saved."""

import gc
import weakref

import pytest
import torch

import optlayer as ol

DT = torch.float64
G = torch.Generator().manual_seed(11)
X = torch.randn(20, 6, generator=G, dtype=DT)
Y = torch.randn(20, generator=G, dtype=DT)
STEP = 1.0 / float(torch.linalg.matrix_norm(X, ord=2) ** 2 + 1.0)


def T(x, l2reg, y):
    return x - STEP * (X.T @ (X @ x - y) + l2reg * x)


def make_solver(maxiter, refs):
    @ol.custom_fixed_point(T)
    def solver(init, l2reg, y):
        x = init
        for _ in range(maxiter):
            x = T(x, l2reg, y)
            refs.append(weakref.ref(x))
        return x

    return solver


def _saved_bytes(maxiter):
    """Bytes of the tensors autograd saves while the forward runs (saved_tensors_hooks)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    l2reg = torch.tensor(0.5, dtype=DT, requires_grad=True)
    y = Y.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = make_solver(maxiter, [])(torch.zeros(6, dtype=DT), l2reg, y)
    out.sum().backward()
    return total[0], l2reg.grad


def test_no_iterate_survives_the_forward():
    refs = []
    l2reg = torch.tensor(0.5, dtype=DT, requires_grad=True)
    out = make_solver(50, refs)(torch.zeros(6, dtype=DT), l2reg, Y)
    gc.collect()
    assert len(refs) == 50
    assert all(r() is None for r in refs), "a solver iterate is still referenced"
    assert out.grad_fn is not None  # the graph is alive, yet holds no iterate
    out.sum().backward()
    assert l2reg.grad is not None and torch.isfinite(l2reg.grad)


@pytest.mark.parametrize("maxiter", [10, 300], ids=["10_iters", "300_iters"])
def test_saved_tensor_bytes_independent_of_iterations(maxiter):
    saved, grad = _saved_bytes(maxiter)
    saved_ref, _ = _saved_bytes(3)
    assert saved == saved_ref
    # solution (6) + l2reg (1) + y (20) float64 = 216 bytes: O(solution + arguments)
    assert saved == (6 + 1 + 20) * 8
    assert torch.isfinite(grad)
