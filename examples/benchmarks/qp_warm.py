"""solve_qp from a warm start against a cold solve, after the data moved.

Run: ``OMP_NUM_THREADS=1 python examples/benchmarks/qp_warm.py [batch]`` (default 32).

The problem is the QP of the lad_regression example (least absolute deviations with a
small ridge term, ``d = 3`` coefficients and ``m = 10`` points: 13 unknowns with the
epigraph variables, 20 inequality rows), canonicalised from its ``.opt`` file on random
parameters. It is solved once; then the targets ``t`` move by Gaussian noise of each
scale and the moved problem is solved cold and from the first solution (``warm_start``),
forward only, alternating the two in one process. Printed: how many
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

import optlayer as ol  # noqa: E402
from optlayer.compiler import canonicalize_qp, expand_params  # noqa: E402
from optlayer.layer import random_params  # noqa: E402
from optlayer.solvers import solve_qp  # noqa: E402

D = torch.float64


def lad_qp(vals, layer):
    """``(Q, p, G, h)`` of the lad_regression layer's QP at the parameters ``vals``."""
    P, B, _ = expand_params(layer.problem, layer.problem.check_params(vals))
    Q, p, G, h, *_ = canonicalize_qp(layer.program, P, B, D, "cpu")
    return Q, p, G, h


def main(batch=32, rounds=30):
    layer = ol.load(ROOT / "examples" / "problems" / "lad_regression.opt")
    vals = random_params(layer.problem, batch=batch, seed=0)
    Q, p, G, h = lad_qp(vals, layer)
    first = solve_qp(Q, p, G, h, on_failure="raise")
    print(f"solve_qp, the lad_regression QP ({Q.shape[-1]} unknowns, {G.shape[-2]} rows), "
          f"batch {batch}, forward only; {torch.get_num_threads()} thread(s)")
    g = torch.Generator().manual_seed(1)
    for scale in (1e-3, 1e-2, 1e-1):
        moved = dict(vals, t=vals["t"] + scale * torch.randn(vals["t"].shape, generator=g,
                                                             dtype=D))
        Q2, p2, G2, h2 = lad_qp(moved, layer)
        runs = {"cold": lambda a=(Q2, p2, G2, h2): solve_qp(*a, on_failure="raise"),
                "warm": lambda a=(Q2, p2, G2, h2): solve_qp(*a, on_failure="raise",
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
