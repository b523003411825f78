"""Newton's damping on indefinite Hessians and L-BFGS on a non-quadratic valley."""

import torch

from optlayer.solvers import LBFGS, Newton

D = torch.float64


def double_well(x):
    return (x**4 / 4 - x**2 / 2).sum(-1)


def test_newton_damps_an_indefinite_hessian_and_reaches_a_minimiser():
    # At x = ±0.1 the Hessian 3x² - 1 is negative: Cholesky fails, damping takes over.
    init = torch.tensor([[0.1, -0.1], [2.0, -3.0]], dtype=D)
    out = Newton(double_well).run(init)
    assert out.state.status.tolist() == [0, 0]
    torch.testing.assert_close(out.params, torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=D),
                               rtol=0, atol=1e-10)


def test_lbfgs_rosenbrock():
    def rosen(x, a):
        return ((a - x[..., :-1]) ** 2 + 100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2).sum(-1)

    a = torch.tensor(1.0, dtype=D)
    out = LBFGS(rosen, maxiter=2000).run(torch.tensor([[-1.2, 1.0, 0.5]], dtype=D), a)
    assert out.state.status.tolist() == [0]
    torch.testing.assert_close(out.params, torch.ones(1, 3, dtype=D), rtol=0, atol=1e-8)
