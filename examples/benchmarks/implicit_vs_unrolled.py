"""Implicit differentiation vs unrolling: time and backward memory of a hyperparameter gradient.

Problem (ridge regression, m = 100 samples, n = 500 features, float64):

    x*(λ) = argmin_x  ½‖X x − y‖²/m + ½ λ‖x‖²,      outer loss  L(λ) = ½‖X_val x*(λ) − y_val‖²

The *same* solver -- gradient descent x ← T(x, λ) = x − η ∇f(x, λ) run for
``maxiter`` steps -- is differentiated two ways:

* unrolled: the loop runs with autograd recording every step; ``L.backward()``
  walks back through all ``maxiter`` steps;
* implicit: the loop is decorated with ``optlayer.custom_fixed_point(T)``; it
  runs without a graph and ``L.backward()`` solves one linear system with
  ``I − ∂₁T`` (symmetric positive definite here, so ``solve=solve_cg``; the
  default dense LU is timed too).

Memory method. ``tracemalloc`` does not see torch's allocator, and the CPU
build has no ``max_memory_allocated``. What backward needs is what autograd
keeps from the forward, so we count it exactly: ``saved_tensors_hooks`` see
every tensor saved for backward, and we add the bytes of the distinct
storages among them (``X`` saved by every step is counted once). This is the
memory a backward pass holds on to, device-independent; the linear solve's
own workspace in the implicit backward (a few vectors of size n for CG) is
not included and does not depend on ``maxiter`` either. On CUDA the script
also prints ``torch.cuda.max_memory_allocated`` around the backward.

Timing: median of several repeats after a warm-up, single-threaded
(``torch.set_num_threads(1)``) because the machine is shared and these are
small kernels. Bars (PASS/FAIL printed per bar):

1. implicit backward memory flat in maxiter: 10000 vs 100 within 10 %;
2. implicit backward ≥ 10× faster than unrolled backward at maxiter = 1000;
3. seed ridge Jacobian (m = 442, n = 10, random data): ``jacrev`` through
   ``custom_root`` within 10× of ``jacrev`` through the closed-form solver.

Run: ``python examples/benchmarks/implicit_vs_unrolled.py`` (about a minute).
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

import optlayer as ol
from optlayer.linalg import solve_cg

torch.set_num_threads(1)
DT = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward inside the block."""

    def __init__(self):
        self.storages = {}

    def _pack(self, t):
        st = t.untyped_storage()
        self.storages[(st.data_ptr(), t.device)] = st.nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def make_problem(m=100, n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, generator=g, dtype=DT).to(DEVICE)
    y = torch.randn(m, generator=g, dtype=DT).to(DEVICE)
    X_val = torch.randn(m, n, generator=g, dtype=DT).to(DEVICE)
    y_val = torch.randn(m, generator=g, dtype=DT).to(DEVICE)
    L = float(torch.linalg.matrix_norm(X, ord=2) ** 2) / m
    lam0 = 1.0
    eta = 1.0 / (L + lam0)

    def T(x, lam):
        return x - eta * (X.T @ (X @ x - y) / m + lam * x)

    def gd(init, lam, maxiter):
        x = init
        for _ in range(maxiter):
            x = T(x, lam)
        return x

    def outer(x):
        return 0.5 * ((X_val @ x - y_val) ** 2).sum()

    return dict(T=T, gd=gd, outer=outer, n=n, lam0=lam0)


def run_case(P, maxiter, method, solve=None):
    """Returns (forward time, backward time, saved bytes, gradient)."""
    T, gd, outer, n = P["T"], P["gd"], P["outer"], P["n"]

    def solver_k(init, lam):  # the same gradient-descent loop for both methods
        return gd(init, lam, maxiter)

    solver = solver_k if method == "unrolled" else ol.custom_fixed_point(T, solve=solve)(solver_k)
    repeats = 3 if maxiter >= 10000 else 7

    def forward():
        lam = torch.tensor(P["lam0"], dtype=DT, device=DEVICE, requires_grad=True)
        x = solver(torch.zeros(n, dtype=DT, device=DEVICE), lam)
        return lam, outer(x)

    t_fwd = median_time(forward, repeats)
    state = {}

    def setup_and_backward():
        lam, loss = forward()
        t0 = time.perf_counter()
        loss.backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        state.setdefault("bwd", []).append(time.perf_counter() - t0)
        state["grad"] = lam.grad

    setup_and_backward()  # warm-up
    state["bwd"] = []
    for _ in range(repeats):
        setup_and_backward()
    t_bwd = statistics.median(state["bwd"])
    lam = torch.tensor(P["lam0"], dtype=DT, device=DEVICE, requires_grad=True)
    with SavedBytes() as sb:  # the solver only: the outer loss saves the same for both
        x = solver(torch.zeros(n, dtype=DT, device=DEVICE), lam)
    loss = outer(x)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss.backward()
        state["cuda_peak"] = torch.cuda.max_memory_allocated() - base
    else:
        loss.backward()
    return t_fwd, t_bwd, sb.total, float(state["grad"])


def seed_ridge_bar():
    g = torch.Generator().manual_seed(0)
    m, n = 442, 10
    X = torch.randn(m, n, generator=g, dtype=DT).to(DEVICE)
    y = torch.randn(m, generator=g, dtype=DT).to(DEVICE)
    eye = torch.eye(n, dtype=DT, device=DEVICE)

    def f(x, theta):
        return (((X @ x - y) ** 2).sum() + theta * (x**2).sum()) / 2

    def closed(theta):
        return torch.linalg.solve(X.T @ X + theta * eye, X.T @ y)

    ridge_solver = ol.custom_root(torch.func.grad(f))(lambda init, theta: closed(theta))
    theta = torch.tensor(10.0, dtype=DT, device=DEVICE)
    J = torch.func.jacrev(ridge_solver, argnums=1)(None, theta)
    J_ref = torch.func.jacrev(closed)(theta)
    err = float((J - J_ref).abs().max())
    t_imp = median_time(lambda: torch.func.jacrev(ridge_solver, argnums=1)(None, theta), 50)
    t_ref = median_time(lambda: torch.func.jacrev(closed)(theta), 50)
    return err, t_imp, t_ref


def main():
    print(f"device: {DEVICE}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    P = make_problem()
    cg = functools.partial(solve_cg, tol=1e-10)
    rows = {}
    print("\nridge hyperparameter gradient dL/dλ, m=100, n=500 (times: median, ms)")
    header = (f"{'maxiter':>8} {'method':>16} {'fwd ms':>9} {'bwd ms':>9} "
              f"{'saved for bwd':>14} {'dL/dλ':>14}")
    print(header)
    for maxiter in (100, 1000, 10000):
        for method, solve in (("unrolled", None), ("implicit_cg", cg), ("implicit_default", None)):
            kind = "unrolled" if method == "unrolled" else "implicit"
            r = run_case(P, maxiter, kind, solve)
            rows[(maxiter, method)] = r
            print(f"{maxiter:>8} {method:>16} {r[0] * 1e3:>9.2f} {r[1] * 1e3:>9.2f} "
                  f"{r[2] / 1024:>11.1f} KiB {r[3]:>14.8e}")

    print("\nratios (unrolled / implicit_cg):")
    for maxiter in (100, 1000, 10000):
        u, i = rows[(maxiter, "unrolled")], rows[(maxiter, "implicit_cg")]
        print(f"  maxiter={maxiter:>5}: backward time {u[1] / i[1]:7.1f}x, "
              f"saved memory {u[2] / i[2]:8.1f}x, forward time {u[0] / i[0]:5.2f}x")
    g_u, g_i = rows[(10000, "unrolled")][3], rows[(10000, "implicit_cg")][3]
    print(f"  gradient agreement at maxiter=10000: |implicit - unrolled| / |unrolled| = "
          f"{abs(g_i - g_u) / abs(g_u):.2e}")

    m100, m10k = rows[(100, "implicit_cg")][2], rows[(10000, "implicit_cg")][2]
    mem_ratio = m10k / m100
    speed = rows[(1000, "unrolled")][1] / rows[(1000, "implicit_cg")][1]
    err, t_imp, t_ref = seed_ridge_bar()
    print("\nseed ridge Jacobian (m=442, n=10): jacrev through custom_root "
          f"{t_imp * 1e3:.3f} ms vs jacrev through the closed form {t_ref * 1e3:.3f} ms "
          f"({t_imp / t_ref:.1f}x), max abs error {err:.1e}")
    print("\nbars:")
    bars = [
        (f"implicit backward memory flat: maxiter 10000 / 100 = {mem_ratio:.3f} (within 10%)",
         abs(mem_ratio - 1) <= 0.10),
        (f"implicit backward {speed:.1f}x faster than unrolled at maxiter 1000 (>= 10x)",
         speed >= 10),
        (f"seed ridge jacrev through custom_root {t_imp / t_ref:.1f}x the closed form "
         "(<= 10x, error < 1e-8)", t_imp / t_ref <= 10 and err < 1e-8),
    ]
    for text, ok in bars:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
