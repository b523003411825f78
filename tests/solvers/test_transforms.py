"""torch.func transforms through a batched solver (block-diagonal implicit solve)."""

import torch

from optlayer.prox import lasso
from optlayer.solvers import ProximalGradient

D = torch.float64


def _solver():
    return ProximalGradient(lambda x, y: 0.5 * ((x - y) ** 2).sum(-1), lasso)


def test_jacrev_of_batched_run_is_block_diagonal_closed_form():
    # x*_b = soft(y_b, lam): ∂x*_b/∂y_c = δ_bc diag(|y_b| > lam).
    y = torch.tensor([[2.0, 0.3, -1.0], [0.1, -3.0, 0.7]], dtype=D)
    lam = torch.tensor(0.5, dtype=D)
    solver = _solver()
    J = torch.func.jacrev(lambda y: solver.run(torch.zeros(2, 3, dtype=D), lam, y).params)(y)
    expect = torch.zeros(2, 3, 2, 3, dtype=D)
    for b in range(2):
        expect[b, :, b, :] = torch.diag((y[b].abs() > lam).to(D))
    torch.testing.assert_close(J, expect, rtol=0, atol=1e-12)


def test_float32_backward_matches_closed_form():
    y = torch.tensor([[2.0, 0.3, -1.0], [0.1, -3.0, 0.7]], requires_grad=True)
    lam = torch.tensor(0.5)
    out = _solver().run(torch.zeros(2, 3), lam, y)
    assert out.params.dtype == torch.float32
    out.params.sum().backward()
    torch.testing.assert_close(y.grad, (y.detach().abs() > lam).float(), rtol=0, atol=1e-5)


def test_lambda_gradient_of_lasso_closed_form():
    y = torch.tensor([[2.0, 0.3, -1.0]], dtype=D)
    lam = torch.tensor(0.5, dtype=D, requires_grad=True)
    out = _solver().run(torch.zeros(1, 3, dtype=D), lam, y)
    (g,) = torch.autograd.grad(out.params.sum(), lam)
    expect = -(torch.sign(y) * (y.abs() > 0.5)).sum()
    torch.testing.assert_close(g, expect, rtol=0, atol=1e-12)
