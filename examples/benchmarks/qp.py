"""Batched QP layers: optlayer.solve_qp against qpth and cvxpylayers.

Run:  python examples/benchmarks/qp.py            (about 3-5 minutes on 2 CPU cores)
      python examples/benchmarks/qp.py --quick    (smaller grid, for a smoke run)

Problem family: minimize 1/2 x'Qx + p'x s.t. Gx <= h (n rows), Ax = b (n/5 rows),
Q = MM'/n + 0.1 I (positive definite, so that qpth applies), a strictly feasible
point built in; float64; n in {10, 50, 100}, batch in {1, 32, 128}.

Timings: median wall clock of several repeats after a warm-up, all methods in
the same process, alternating round by round (so that load drift on a shared
machine hits them alike), forward only and forward + backward of the loss sum(c * x)
with gradients for p, G, h, A, b. torch runs with one thread by default
(``--threads``): the machine this was written on is shared, and oversubscribed
OpenMP threads make every method's timing meaningless. Every method gets the
same number of cores: cvxpylayers (diffcp) would otherwise solve and
differentiate its batch on a thread pool over all CPUs, so it is called with
``n_jobs_forward = n_jobs_backward = --threads``.

Accuracy: against a tight reference of our own, not against any of the three:
Clarabel called directly (gap and feasibility tolerances 1e-12) for x, and the
KKT derivative at Clarabel's solution with its active set (one dense solve of
[[Q, G_a', A'], [G_a, 0, 0], [A, 0, 0]]) for the gradients. Errors are
max |value - reference| / max(1, max |reference|) over the first few items.

Bars (CPU, float64, forward + backward):
  n=50, batch 128: optlayer <= 1/3 of qpth and <= 1/20 of cvxpylayers;
  n=10, batch 1:   optlayer <= 1/2 of cvxpylayers;
  solution error <= 1e-8 and gradient error <= 1e-7 against the reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from optlayer.solvers.qp import solve_qp

try:
    from qpth.qp import QPFunction
except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
    QPFunction = None
    QPTH_WHY = f"{type(exc).__name__}: {exc}"
try:
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer
except Exception as exc:  # noqa: BLE001
    CvxpyLayer = None
    CVXPYLAYERS_WHY = f"{type(exc).__name__}: {exc}"
try:
    import clarabel
    import scipy.sparse as sp
except Exception as exc:  # noqa: BLE001
    clarabel = None
    CLARABEL_WHY = f"{type(exc).__name__}: {exc}"

F64 = torch.float64


def make_batch(n: int, B: int, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    m, me = n, max(n // 5, 1)
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    Q = M @ M.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=F64)
    p = torch.randn(B, n, generator=g, dtype=F64)
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    x0 = torch.randn(B, n, generator=g, dtype=F64)
    h = (G @ x0.unsqueeze(-1)).squeeze(-1) + torch.rand(B, m, generator=g, dtype=F64)
    A = torch.randn(B, me, n, generator=g, dtype=F64)
    b = (A @ x0.unsqueeze(-1)).squeeze(-1)
    c = torch.randn(B, n, generator=g, dtype=F64)
    return [t.to(device) for t in (Q, p, G, h, A, b, c)]


# --------------------------------------------------------------------------
# the tight reference
# --------------------------------------------------------------------------

def reference(Q, p, G, h, A, b, c):
    """x and d(c'x)/d(p, G, h, A, b) for one item, from Clarabel + the KKT system."""
    n, m, me = p.shape[0], h.shape[0], b.shape[0]
    P = sp.csc_matrix(np.triu(Q))
    Acon = sp.csc_matrix(np.vstack([A, G]))
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-12
    settings.tol_ktratio = 1e-10
    settings.max_iter = 200
    solver = clarabel.DefaultSolver(P, p, Acon, np.concatenate([b, h]),
                                    [clarabel.ZeroConeT(me), clarabel.NonnegativeConeT(m)],
                                    settings)
    sol = solver.solve()
    x, zz = np.array(sol.x), np.array(sol.z)
    y, z = zz[:me], zz[me:]
    s = h - G @ x
    act = z > s
    Ga = G[act]
    k = Ga.shape[0]
    K = np.zeros((n + k + me, n + k + me))
    K[:n, :n] = Q
    K[:n, n:n + k] = Ga.T
    K[n:n + k, :n] = Ga
    K[:n, n + k:] = A.T
    K[n + k:, :n] = A
    rhs = np.concatenate([c, np.zeros(k + me)])
    sol_k = np.linalg.solve(K, rhs)
    u, za, w = sol_k[:n], sol_k[n:n + k], sol_k[n + k:]
    zeta = np.zeros(m)
    zeta[act] = za
    grads = {
        "p": -u,
        "G": -np.outer(z, u) - np.outer(zeta, x),
        "h": zeta,
        "A": -np.outer(y, u) - np.outer(w, x),
        "b": w,
    }
    return str(sol.status), x, grads


# --------------------------------------------------------------------------
# the three methods: each returns a function (data, backward) -> (x, grads)
# --------------------------------------------------------------------------

NAMES_GRAD = ("p", "G", "h", "A", "b")


def _run_torch(solve, data, backward):
    Q, p, G, h, A, b, c = data
    if not backward:
        with torch.no_grad():
            return solve(Q, p, G, h, A, b), None
    leaves = [t.detach().clone().requires_grad_() for t in (p, G, h, A, b)]
    x = solve(Q, leaves[0], leaves[1], leaves[2], leaves[3], leaves[4])
    (x * c).sum().backward()
    return x.detach(), {k: t.grad for k, t in zip(NAMES_GRAD, leaves, strict=True)}


def optlayer_method():
    def solve(Q, p, G, h, A, b):
        return solve_qp(Q, p, G, h, A, b, on_failure="warn").x
    return lambda data, backward: _run_torch(solve, data, backward)


def qpth_method():
    fn = QPFunction(verbose=-1)

    def solve(Q, p, G, h, A, b):
        return fn(Q, p, G, h, A, b)
    return lambda data, backward: _run_torch(solve, data, backward)


def cvxpylayers_method(n: int, jobs: int):
    m, me = n, max(n // 5, 1)
    x = cp.Variable(n)
    Lp, pp = cp.Parameter((n, n)), cp.Parameter(n)
    Gp, hp = cp.Parameter((m, n)), cp.Parameter(m)
    Ap, bp = cp.Parameter((me, n)), cp.Parameter(me)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Lp @ x) + pp @ x),
                      [Gp @ x <= hp, Ap @ x == bp])
    layer = CvxpyLayer(prob, parameters=[Lp, pp, Gp, hp, Ap, bp], variables=[x])

    def solve(Q, p, G, h, A, b):
        L = torch.linalg.cholesky(Q).transpose(-1, -2)     # Q = L'L
        same_cores = {"n_jobs_forward": jobs}
        if any(t.requires_grad for t in (p, G, h, A, b)):  # (a solve-only call takes no more)
            same_cores["n_jobs_backward"] = jobs
        (out,) = layer(L, p, G, h, A, b, solver_args=same_cores)
        return out
    return lambda data, backward: _run_torch(solve, data, backward)


def timed(methods, data, backward, repeats, device):
    """Median wall clock (ms) of each method, the methods alternating round by
    round (after one warm-up call each) so that load drift hits them alike."""
    ts = {name: [] for name in methods}
    for fn in methods.values():
        fn(data, backward)                              # warm-up
    for _ in range(repeats):
        for name, fn in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(data, backward)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(v) for name, v in ts.items()}


def errors(fn, data, refs, k):
    x, grads = fn([t[:k] for t in data], True)
    x = x.detach().cpu().numpy()
    sol_err = grad_err = 0.0
    for i, (_, xr, gr) in enumerate(refs):
        sol_err = max(sol_err, np.abs(x[i] - xr).max() / max(1.0, np.abs(xr).max()))
        for name in NAMES_GRAD:
            g = grads[name][i].detach().cpu().numpy()
            grad_err = max(grad_err,
                           np.abs(g - gr[name]).max() / max(1.0, np.abs(gr[name]).max()))
    return sol_err, grad_err


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n in {10, 50}, batch in {1, 32}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--ref-items", type=int, default=4, help="items checked vs the reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)   # qpth / cvxpy chatter; status is checked

    ns = (10, 50) if args.quick else (10, 50, 100)
    batches = (1, 32) if args.quick else (1, 32, 128)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, devices "
          + ", ".join(map(str, devices)))
    if QPFunction is None:
        print(f"qpth: not installed, skipped ({QPTH_WHY})")
    if CvxpyLayer is None:
        print(f"cvxpylayers: not installed, skipped ({CVXPYLAYERS_WHY})")
    if clarabel is None:
        print(f"clarabel/scipy missing: accuracy columns skipped ({CLARABEL_WHY})")
    if not torch.cuda.is_available():
        print("CUDA: no GPU here, CPU figures only")

    rows = []   # (device, n, B, method, fwd, fb, sol_err, grad_err)
    for device in devices:
        for n in ns:
            methods = {"optlayer": optlayer_method()}
            if QPFunction is not None:
                methods["qpth"] = qpth_method()
            if CvxpyLayer is not None and device.type == "cpu":
                methods["cvxpylayers"] = cvxpylayers_method(n, torch.get_num_threads())
            refs = None
            for B in batches:
                data = make_batch(n, B, seed=1000 * n + B, device=device)
                if refs is None and clarabel is not None:
                    ref_cpu = make_batch(n, args.ref_items, 7 * n, torch.device("cpu"))
                    host = [t.numpy() for t in ref_cpu]
                    refs = [reference(*(t[i] for t in host)) for i in range(args.ref_items)]
                    ref_data = [t.to(device) for t in ref_cpu]
                slow = "cvxpylayers" in methods and n * B >= 50 * 32
                reps = 3 if slow else (5 if n * B >= 50 * 32 else 9)
                fwd = timed(methods, data, False, reps, device)
                fb = timed(methods, data, True, reps, device)
                for name, fn in methods.items():
                    se = ge = float("nan")
                    if refs is not None and B == batches[0]:
                        se, ge = errors(fn, ref_data, refs, args.ref_items)
                    rows.append((device.type, n, B, name, fwd[name], fb[name], se, ge))
                    print(f"  {device.type:4s} n={n:3d} B={B:3d} {name:12s} fwd {fwd[name]:9.1f} ms"
                          f"  fwd+bwd {fb[name]:9.1f} ms", flush=True)

    print("\nAccuracy against the tight reference (Clarabel 1e-12 + KKT derivative):")
    print(f"{'dev':4s} {'n':>4s} {'method':12s} {'sol err':>10s} {'grad err':>10s}")
    for dev, n, _b, name, _, _, se, ge in rows:
        if not np.isnan(se):
            print(f"{dev:4s} {n:4d} {name:12s} {se:10.1e} {ge:10.1e}")

    print("\nTimes (ms, median) and ratios optlayer / alternative (forward + backward):")
    print(f"{'dev':4s} {'n':>4s} {'B':>4s} {'optlayer':>10s} {'qpth':>10s} {'cvxpylayers':>12s}"
          f" {'/qpth':>7s} {'/cvxpyl':>8s}   (forward only: optlayer qpth cvxpylayers)")
    table = {(r[0], r[1], r[2], r[3]): r for r in rows}
    for dev in [d.type for d in devices]:
        for n in ns:
            for B in batches:
                o = table[(dev, n, B, "optlayer")]
                q = table.get((dev, n, B, "qpth"))
                c = table.get((dev, n, B, "cvxpylayers"))

                def fmt(r, i):
                    return f"{r[i]:10.1f}" if r else f"{'-':>10s}"
                rq = f"{o[5] / q[5]:7.3f}" if q else f"{'-':>7s}"
                rc = f"{o[5] / c[5]:8.3f}" if c else f"{'-':>8s}"
                print(f"{dev:4s} {n:4d} {B:4d} {o[5]:10.1f} {fmt(q, 5)} {fmt(c, 5):>12s}"
                      f" {rq} {rc}   ({o[4]:.1f} {q[4] if q else float('nan'):.1f}"
                      f" {c[4] if c else float('nan'):.1f})")

    print("\nBars (CPU, float64, forward + backward):")

    def bar(label, ok):
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")

    def ratio(n, B, other):
        o, r = table.get(("cpu", n, B, "optlayer")), table.get(("cpu", n, B, other))
        return None if (o is None or r is None) else o[5] / r[5]

    for n, B, other, limit in ((50, 128, "qpth", 1 / 3), (50, 128, "cvxpylayers", 1 / 20),
                               (10, 1, "cvxpylayers", 1 / 2)):
        r = ratio(n, B, other)
        label = f"n={n} B={B}: optlayer / {other} <= {limit:.3f}"
        if r is None:
            print(f"  SKIP  {label} (not measured)")
        else:
            bar(f"{label}: {r:.3f}", r <= limit)
    ours = [r for r in rows if r[3] == "optlayer" and r[0] == "cpu" and not np.isnan(r[6])]
    if ours:
        se = max(r[6] for r in ours)
        ge = max(r[7] for r in ours)
        bar(f"optlayer solution error <= 1e-8: {se:.1e}", se <= 1e-8)
        bar(f"optlayer gradient error <= 1e-7: {ge:.1e}", ge <= 1e-7)
    else:
        print("  SKIP  accuracy bars (no reference)")


if __name__ == "__main__":
    main()
