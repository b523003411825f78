"""IR speed: build + DCP-check a 22-line model, against cvxpy's build + is_dcp in the same run.

Run from the repository root: ``python tests/ir/bench_ir.py`` (not collected
by pytest). Prints medians of 30 runs after a warm-up; the machine is noisy,
so compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout's optlayer, not an installed one

t0 = time.perf_counter()
import torch  # noqa: E402

t1 = time.perf_counter()
import optlayer as ol  # noqa: E402

t2 = time.perf_counter()


def build_ol(n=10, m=5):
    A = ol.Parameter(m, n, name="A")
    b = ol.Parameter(m, name="b")
    lam = ol.Parameter(name="lam", nonneg=True)
    mu = ol.Parameter(n, name="mu")
    P = ol.Parameter(n, n, name="P", psd=True)
    x, y, t = ol.Variable(n, name="x"), ol.Variable(n, name="y"), ol.Variable(name="t")
    r = A @ x - b
    obj = ol.minimize(ol.sum_squares(r) + lam * ol.norm1(x) + ol.quad_form(y, P) - mu @ y
                      + ol.huber(t - 1) + ol.logsumexp(x) + ol.norm2(r) + ol.sum(ol.pos(x - y)))
    cons = [ol.sum(x) == 1, x >= 0, y <= 2, ol.norm2(y) <= t, x[0] >= 0.1,
            ol.norm2(A @ y) <= 3, y >= -1, y <= 1, ol.norm_inf(x - y) <= 1]
    return ol.Problem(obj, cons)


def build_cvxpy(n=10, m=5):
    import cvxpy as cp

    A, b = cp.Parameter((m, n)), cp.Parameter(m)
    lam, mu = cp.Parameter(nonneg=True), cp.Parameter(n)
    P = cp.Parameter((n, n), PSD=True)
    x, y, t = cp.Variable(n), cp.Variable(n), cp.Variable()
    r = A @ x - b
    obj = cp.Minimize(cp.sum_squares(r) + lam * cp.norm1(x) + cp.quad_form(y, P) - mu @ y
                      + cp.huber(t - 1) + cp.log_sum_exp(x) + cp.norm(r, 2)
                      + cp.sum(cp.pos(x - y)))
    cons = [cp.sum(x) == 1, x >= 0, y <= 2, cp.norm(y, 2) <= t, x[0] >= 0.1,
            cp.norm(A @ y, 2) <= 3, y >= -1, y <= 1, cp.norm_inf(x - y) <= 1]
    prob = cp.Problem(obj, cons)
    assert prob.is_dcp()
    return prob


def median_ms(fn, k=30):
    fn()
    times = []
    for _ in range(k):
        a = time.perf_counter()
        fn()
        times.append(time.perf_counter() - a)
    return 1e3 * statistics.median(times)


def main():
    print(f"import torch: {t1 - t0:.3f} s; import optlayer after torch: {t2 - t1:.3f} s")
    prob = build_ol()
    ours = median_ms(build_ol)
    print(f"optlayer build + DCP check ({len(prob.to_opt().splitlines())}-line model): "
          f"{ours:.2f} ms")
    text = prob.to_opt()
    print(f"optlayer print .opt: {median_ms(prob.to_opt):.2f} ms; summary(): "
          f"{median_ms(prob.summary):.2f} ms")
    if hasattr(ol, "parse"):
        print(f"ol.parse of the printed text (parse + lower + check): "
              f"{median_ms(lambda: ol.parse(text)):.2f} ms")
    env = {k: torch.randn(v.shape, dtype=torch.float64)
           for k, v in {**prob.params, **prob.vars}.items()}
    env["P"] = env["P"] @ env["P"].mT
    print(f"evaluate objective: {median_ms(lambda: prob.objective.expr.evaluate(env)):.3f} ms")
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        print("cvxpy not installed: no comparison")
        return
    theirs = median_ms(build_cvxpy)
    print(f"cvxpy build + is_dcp (same model): {theirs:.2f} ms; ratio cvxpy/optlayer = "
          f"{theirs / ours:.2f}")


if __name__ == "__main__":
    main()
