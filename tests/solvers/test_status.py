"""Per-item statuses and the on_failure policies; bad inputs give clear errors."""

import math

import pytest
import torch

from optlayer.errors import OptTypeError, SolverError
from optlayer.prox import lasso
from optlayer.solvers import ConvexInteriorPoint, GradientDescent, ProximalGradient
from optlayer.status import OptimizationWarning, Status

D = torch.float64


def quad(x, d, y):
    """½ Σ d_i (x_i - y_i)²: minimiser y; condition number max(d) / min(d) per item."""
    return 0.5 * (d * (x - y) ** 2).sum(-1)


@pytest.fixture
def mixed():
    # Item 0 is perfectly conditioned (converges at once), item 1 has condition 1e6.
    d = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1e-3, 1e-6]], dtype=D)
    y = torch.tensor([[1.0, -2.0, 0.5], [1.0, 1.0, 1.0]], dtype=D)
    return torch.zeros(2, 3, dtype=D), d, y


def _solver(policy, **kw):
    return GradientDescent(quad, maxiter=30, acceleration=False, on_failure=policy, **kw)


def test_one_non_converging_item_reports_max_iter_only_for_it(mixed):
    init, d, y = mixed
    out = _solver("ignore").run(init, d, y)
    assert out.state.status.tolist() == [int(Status.OPTIMAL), int(Status.MAX_ITER)]
    assert out.state.iter_num[0] < out.state.iter_num[1] == 30
    torch.testing.assert_close(out.params[0], y[0], rtol=0, atol=1e-12)
    assert out.state.error[1] > 1e-10


def test_raise_names_the_failed_index(mixed):
    init, d, y = mixed
    with pytest.raises(SolverError, match="MAX_ITER at batch index 1") as info:
        _solver("raise").run(init, d, y)
    assert info.value.indices == [1]
    assert info.value.statuses == [Status.MAX_ITER]


def test_warn_returns_the_result_and_warns(mixed):
    init, d, y = mixed
    with pytest.warns(OptimizationWarning, match="increase maxiter"):
        out = _solver("warn").run(init, d, y)
    torch.testing.assert_close(out.params[0], y[0], rtol=0, atol=1e-12)
    assert torch.isfinite(out.params).all()


def test_mask_gives_nan_rows_and_zero_gradient_for_failed_items(mixed):
    init, d, y = mixed
    y = y.clone().requires_grad_(True)
    out = _solver("mask").run(init, d, y)
    assert torch.isnan(out.params[1]).all()
    torch.testing.assert_close(out.params[0], y[0].detach(), rtol=0, atol=1e-12)
    p = out.params
    loss = torch.where(torch.isnan(p), torch.zeros_like(p), p).sum()
    (g,) = torch.autograd.grad(loss, y)
    assert (g[1] == 0).all()
    torch.testing.assert_close(g[0], torch.ones(3, dtype=D), rtol=0, atol=1e-10)


def test_nonfinite_input_is_reported_per_item(mixed):
    init, d, y = mixed
    y = y.clone()
    y[1, 0] = math.nan
    out = GradientDescent(quad, on_failure="ignore").run(init, d, y)
    assert out.state.status.tolist() == [int(Status.OPTIMAL), int(Status.NONFINITE_INPUT)]
    torch.testing.assert_close(out.params[0], y[0], rtol=0, atol=1e-12)


def test_check_every_reaches_the_same_solution(mixed):
    init, d, y = mixed
    a = GradientDescent(quad, check_every=7).run(init[:1], d[:1], y[:1])
    assert a.state.status.tolist() == [0]
    torch.testing.assert_close(a.params, y[:1], rtol=0, atol=1e-12)


def test_interior_point_mixed_feasible_and_infeasible_batch():
    # min ½‖x - c‖² s.t. x₀ ≥ r, x₀ ≤ 1: item 1 (r = 2) is infeasible.
    def g(x, r):
        return torch.stack([r - x[..., 0], x[..., 0] - 1.0], -1)

    c = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=D)
    r = torch.tensor([0.5, 2.0], dtype=D)
    solver = ConvexInteriorPoint(lambda x, c: 0.5 * ((x - c) ** 2).sum(-1), g,
                                 on_failure="ignore")
    out = solver.run(torch.full((2, 2), 5.0, dtype=D), c, None, r)
    assert out.state.status.tolist() == [int(Status.OPTIMAL), int(Status.INFEASIBLE)]
    x, nu, lam = out.params
    torch.testing.assert_close(x[0], torch.tensor([0.5, 1.0], dtype=D), rtol=0, atol=1e-8)
    torch.testing.assert_close(lam[0], torch.tensor([0.5, 0.0], dtype=D), rtol=0, atol=1e-8)
    assert nu.shape == (2, 0)


def test_interior_point_never_reports_optimal_for_infeasible():
    def g(x, r):
        return torch.stack([(x**2).sum(-1) - r, 2.0 - x.sum(-1)], -1)  # ‖x‖² ≤ r, Σx ≥ 2

    solver = ConvexInteriorPoint(lambda x, c: (c * x).sum(-1), g, on_failure="raise")
    with pytest.raises(SolverError, match="INFEASIBLE"):
        solver.run(torch.zeros(3, dtype=D), torch.ones(3, dtype=D), None,
                   torch.tensor(1.0, dtype=D))


def test_bad_settings_and_inputs_raise_clear_errors():
    f = lambda x: (x**2).sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match="on_failure must be one of"):
        GradientDescent(f, on_failure="explode").run(torch.zeros(2, dtype=D))
    with pytest.raises(TypeError, match="fun must be callable"):
        ProximalGradient(3.0)
    with pytest.raises(OptTypeError, match="at least one dimension"):
        GradientDescent(f).run(torch.tensor(1.0, dtype=D))
    with pytest.raises(OptTypeError, match="floating-point tensor"):
        GradientDescent(f).run(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="tol must be a positive number"):
        GradientDescent(f, tol=-1.0).run(torch.zeros(2, dtype=D))


def test_torch_func_jacrev_through_proximal_gradient():
    # Lasso with f = ½‖x - y‖²: x* = soft(y, lam), ∂x*/∂y = diag(|y| > lam).
    y = torch.tensor([2.0, 0.3, -1.0], dtype=D)
    lam = torch.tensor(0.5, dtype=D)
    solver = ProximalGradient(lambda x, y: 0.5 * ((x - y) ** 2).sum(-1), lasso)

    def run(y):
        return solver.run(torch.zeros(3, dtype=D), lam, y).params

    soft = torch.sign(y) * (y.abs() - lam).clamp(min=0)
    torch.testing.assert_close(run(y), soft, rtol=0, atol=1e-12)
    J = torch.func.jacrev(run)(y)
    torch.testing.assert_close(J, torch.diag((y.abs() > lam).to(D)), rtol=0, atol=1e-12)
