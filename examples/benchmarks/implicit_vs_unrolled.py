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
not in that count; a second column, "bwd peak", is the peak of bytes the
backward pass allocates above its starting level, and "bwd total" their sum.
The peak comes from ``torch.profiler``
memory events (allocations attributed to ops, frees as ``[memory]`` events,
summed in time order), and includes that workspace (for the default dense
solve, the materialised n x n matrix).

The unrolled backward at 10000 steps is not profiled (~10^5 recorded events
would take minutes); its row shows nan there, and its saved bytes suffice.

Timing: median of several repeats after a warm-up, single-threaded
(``torch.set_num_threads(1)``) because the machine is shared and these are
small kernels. Bars (PASS/FAIL printed per bar):

1. implicit backward memory flat in maxiter: 10000 vs 100 within 10 %;
2. implicit backward ≥ 10× faster than unrolled backward at maxiter = 1000;
3. seed ridge Jacobian (m = 442, n = 10, random data): ``jacrev`` through
   ``custom_root`` within 10× of ``jacrev`` through the closed-form solver.

Run: ``python examples/benchmarks/implicit_vs_unrolled.py`` (1-2 minutes).
"""

from __future__ import annotations

import functools
import os
import statistics
import time

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # silence profiler allocator notes

import torch  # noqa: E402

import optlayer as ol  # noqa: E402
from optlayer.linalg import solve_cg  # noqa: E402

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


def profiler_peak_bytes(fn) -> int:
    """Peak of live bytes allocated by torch while ``fn`` runs (torch.profiler, CPU or CUDA).

    Allocations are the ops' self memory usage, frees the ``[memory]`` events; the
    running sum over time order gives the peak above the starting level.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=acts, profile_memory=True) as prof:
        fn()
    field = "self_device_memory_usage" if DEVICE == "cuda" else "self_cpu_memory_usage"
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    cur = best = 0
    for e in events:
        cur += getattr(e, field, 0) or 0
        best = max(best, cur)
    return best


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
    outer(x).backward()
    # Peak of the memory the backward pass itself allocates above what the forward
    # left saved (profiler; skipped for unrolled at 10000 steps, whose ~10^5 recorded
    # backward events would take minutes to profile -- its saved bytes tell the story).
    peak = float("nan")
    if method != "unrolled" or maxiter <= 1000:
        lam_ = torch.tensor(P["lam0"], dtype=DT, device=DEVICE, requires_grad=True)
        loss_ = outer(solver(torch.zeros(n, dtype=DT, device=DEVICE), lam_))
        peak = profiler_peak_bytes(loss_.backward)
    return t_fwd, t_bwd, sb.total, float(state["grad"]), peak


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
    # interleaved repeats so both see the same machine load; medians
    imp = lambda: torch.func.jacrev(ridge_solver, argnums=1)(None, theta)  # noqa: E731
    ref = lambda: torch.func.jacrev(closed)(theta)  # noqa: E731
    t_i, t_r = [], []
    for _ in range(5):
        imp(), ref()
    for _ in range(60):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        imp()
        t2 = time.perf_counter()
        t_r.append(t1 - t0)
        t_i.append(t2 - t1)
    t_imp, t_ref = statistics.median(t_i), statistics.median(t_r)
    return err, t_imp, t_ref


def main():
    print(f"device: {DEVICE}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    P = make_problem()
    cg = functools.partial(solve_cg, tol=1e-10)
    rows = {}
    print("\nridge hyperparameter gradient dL/dλ, m=100, n=500 (times: median, ms)")
    header = (f"{'maxiter':>8} {'method':>16} {'fwd ms':>9} {'bwd ms':>9} "
              f"{'saved for bwd':>14} {'+ bwd peak':>13} {'= bwd total':>13} {'dL/dλ':>16}")
    print(header)
    for maxiter in (100, 1000, 10000):
        for method, solve in (("unrolled", None), ("implicit_cg", cg), ("implicit_default", None)):
            kind = "unrolled" if method == "unrolled" else "implicit"
            r = run_case(P, maxiter, kind, solve)
            rows[(maxiter, method)] = r
            print(f"{maxiter:>8} {method:>16} {r[0] * 1e3:>9.2f} {r[1] * 1e3:>9.2f} "
                  f"{r[2] / 1024:>10.1f} KiB {r[4] / 1024:>9.1f} KiB "
                  f"{(r[2] + r[4]) / 1024:>9.1f} KiB {r[3]:>16.8e}")

    print("\nratios (unrolled / implicit_cg):")
    for maxiter in (100, 1000, 10000):
        u, i = rows[(maxiter, "unrolled")], rows[(maxiter, "implicit_cg")]
        tot = (u[2] + u[4]) / (i[2] + i[4])
        print(f"  maxiter={maxiter:>5}: backward time {u[1] / i[1]:7.1f}x, "
              f"saved memory {u[2] / i[2]:8.1f}x, backward total {tot:8.1f}x, "
              f"forward time {u[0] / i[0]:5.2f}x")
    g_u, g_i = rows[(10000, "unrolled")][3], rows[(10000, "implicit_cg")][3]
    print(f"  gradient agreement at maxiter=10000: |implicit - unrolled| / |unrolled| = "
          f"{abs(g_i - g_u) / abs(g_u):.2e}")

    m100, m10k = rows[(100, "implicit_cg")][2], rows[(10000, "implicit_cg")][2]
    mem_ratio = m10k / m100
    def total(key):
        return rows[key][2] + rows[key][4]

    peak_ratio = total((10000, "implicit_cg")) / total((100, "implicit_cg"))
    peak_ratio_default = total((10000, "implicit_default")) / total((100, "implicit_default"))
    speed = rows[(1000, "unrolled")][1] / rows[(1000, "implicit_cg")][1]
    err, t_imp, t_ref = seed_ridge_bar()
    print("\nseed ridge Jacobian (m=442, n=10): jacrev through custom_root "
          f"{t_imp * 1e3:.3f} ms vs jacrev through the closed form {t_ref * 1e3:.3f} ms "
          f"({t_imp / t_ref:.1f}x), max abs error {err:.1e}")
    print("\nbars:")
    bars = [
        (f"implicit backward memory flat: maxiter 10000 / 100 = {mem_ratio:.3f} saved for "
         f"backward, {peak_ratio:.3f} backward total (cg), {peak_ratio_default:.3f} backward "
         "total (default solve) (all within 10%)",
         all(abs(r - 1) <= 0.10 for r in (mem_ratio, peak_ratio, peak_ratio_default))),
        (f"implicit backward {speed:.1f}x faster than unrolled at maxiter 1000 (>= 10x)",
         speed >= 10),
        (f"seed ridge jacrev through custom_root {t_imp / t_ref:.1f}x the closed form "
         "(<= 10x, error < 1e-8)", t_imp / t_ref <= 10 and err < 1e-8),
    ]
    for text, ok in bars:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
