"""solve_qp from a warm start against a cold solve, after the data moved.

Run: ``OMP_NUM_THREADS=1 python examples/benchmarks/qp_warm.py [batch]`` (default 32).

The problem is least absolute deviations with a small ridge term as a QP in ``(w, t)``
(``d = 3`` coefficients, ``m = 10`` points: 13 unknowns, 20 inequality rows), the QP of
the lad_regression example. It is solved once; then the targets move by Gaussian noise
of each scale and the moved problem is solved cold and from the first solution
(``warm_start``), forward only, alternating the two in one process. Printed: how many
items finish at the warm start (``iter_num`` 0), the median times and their ratio, and
the largest difference between the two solutions.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's optlayer, not another installed copy

from optlayer.solvers import solve_qp  # noqa: E402

D = torch.float64


def lad_qp(batch, d=3, m=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, m, d, generator=g, dtype=D)
    t = torch.randn(batch, m, generator=g, dtype=D)
    n = d + m
    Q = torch.zeros(batch, n, n, dtype=D)
    Q[:, :d, :d] = 0.2 * torch.eye(d, dtype=D)
    p = torch.cat([torch.zeros(batch, d, dtype=D), torch.ones(batch, m, dtype=D)], -1)
    eye = torch.eye(m, dtype=D).expand(batch, m, m)
    G = torch.cat([torch.cat([X, -eye], -1), torch.cat([-X, -eye], -1)], -2)
    return Q, p, G, t, g


def main(batch=32, rounds=30):
    Q, p, G, t, g = lad_qp(batch)
    first = solve_qp(Q, p, G, torch.cat([t, -t], -1), on_failure="raise")
    print(f"solve_qp, least absolute deviations QP (13 unknowns, 20 rows), batch {batch}, "
          f"forward only; {torch.get_num_threads()} thread(s)")
    for scale in (1e-3, 1e-2, 1e-1):
        t2 = t + scale * torch.randn(t.shape, generator=g, dtype=D)
        h2 = torch.cat([t2, -t2], -1)
        runs = {"cold": lambda h2=h2: solve_qp(Q, p, G, h2, on_failure="raise"),
                "warm": lambda h2=h2: solve_qp(Q, p, G, h2, on_failure="raise",
                                               warm_start=first)}
        times = {k: [] for k in runs}
        out = {k: f() for k, f in runs.items()}
        for _ in range(rounds):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        cold, warm = (1e3 * statistics.median(times[k]) for k in ("cold", "warm"))
        done = int((out["warm"].iter_num == 0).sum())
        diff = float((out["warm"].x - out["cold"].x).abs().max())
        print(f"  moved by {scale:g}: {done:2d} of {batch} at the warm start; "
              f"warm {warm:6.2f} ms, cold {cold:6.2f} ms: {warm / cold:.2f}x "
              f"(solutions differ by {diff:.1e})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
