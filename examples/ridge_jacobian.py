"""The seed example: implicit differentiation of a ridge-regression solver.

A solver for ridge regression is decorated with ``custom_root(F)`` where
``F = ∇ₓ f`` is the gradient of the objective (the stationarity condition);
``torch.func.jacrev`` then differentiates the solution with respect to the
regularisation θ by the implicit function theorem, and the result is compared
with the closed-form Jacobian ``∂x*/∂θ = -(XᵀX + θI)⁻¹ x*``.

Run: ``python examples/ridge_jacobian.py``
"""

from __future__ import annotations

import statistics
import time

import torch

import optlayer as ol

torch.manual_seed(0)
torch.set_num_threads(1)  # small ops: one thread avoids OpenMP contention on a shared machine
dtype = torch.float64
m, n = 442, 10  # the shape of the diabetes data set of the paper's Figure 1 (random data here)
X_tr = torch.randn(m, n, dtype=dtype)
y_tr = torch.randn(m, dtype=dtype)


def f(x, theta):
    residual = X_tr @ x - y_tr
    return ((residual**2).sum() + theta * (x**2).sum()) / 2


F = torch.func.grad(f)  # optimality condition: F(x*, θ) = 0


@ol.custom_root(F)
def ridge_solver(init, theta):
    XX = X_tr.T @ X_tr
    Xy = X_tr.T @ y_tr
    eye = torch.eye(n, dtype=dtype)
    return torch.linalg.solve(XX + theta * eye, Xy)


def closed_form_jacobian(theta):
    M = X_tr.T @ X_tr + theta * torch.eye(n, dtype=dtype)
    return -torch.linalg.solve(M, torch.linalg.solve(M, X_tr.T @ y_tr))


def median_time(fn, repeats=30):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    theta = torch.tensor(10.0, dtype=dtype)
    J = torch.func.jacrev(ridge_solver, argnums=1)(None, theta)
    J_ref = closed_form_jacobian(theta)
    err = (J - J_ref).abs().max().item()
    print("Jacobian of the ridge solution w.r.t. theta at theta = 10 (implicit differentiation):")
    print(J)
    print(f"max |J_implicit - J_closed_form| = {err:.3e}  ({'PASS' if err < 1e-8 else 'FAIL'}"
          " at 1e-8)")
    t_imp = median_time(lambda: torch.func.jacrev(ridge_solver, argnums=1)(None, theta))
    t_closed = median_time(lambda: closed_form_jacobian(theta))
    t_auto = median_time(lambda: torch.func.jacrev(
        lambda t: torch.linalg.solve(X_tr.T @ X_tr + t * torch.eye(n, dtype=dtype), X_tr.T @ y_tr)
    )(theta))
    print(f"time: jacrev through custom_root {t_imp * 1e3:.3f} ms, "
          f"jacrev through the closed-form solver {t_auto * 1e3:.3f} ms, "
          f"hand-written closed-form Jacobian {t_closed * 1e3:.3f} ms (median of 30)")


if __name__ == "__main__":
    main()
