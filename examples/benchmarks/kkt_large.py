"""A large kkt layer: time and peak memory (run: python examples/benchmarks/kkt_large.py
[m d batch]; default 1000 100 2).

lad_regression (examples/problems) at ``m`` rows and ``d`` unknowns (``N = m + d``
after the epigraph rewrite), random data, forward and backward of ``sum(w)``, four
calls in one process: prints each call's times and the process's peak resident memory
so far. The QP data read-off evaluates the problem at ``N + 1`` points; past
``defaults.READOFF_MAX_ELEMENTS`` parameter elements in their copies it runs in
checkpointed chunks (docs/layer.md).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's optlayer, not another installed copy

import optlayer as ol  # noqa: E402
from optlayer.layer import random_params  # noqa: E402


def main(m=1000, d=100, batch=2, calls=4):
    layer = ol.load(ROOT / "examples" / "problems" / "lad_regression.opt",
                    dims={"m": m, "d": d})
    print(f"lad_regression m={m} d={d} batch={batch}")
    for call in range(calls):
        vals = random_params(layer.problem, batch=batch, seed=call)
        ins = {k: v.clone().requires_grad_(True) for k, v in vals.items()}
        t0 = time.perf_counter()
        out = layer(**ins)
        t1 = time.perf_counter()
        out.sum().backward()
        t2 = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB (Linux)
        ok = int((layer.info.status == 0).sum())
        print(f"   call {call}: forward {t1 - t0:6.2f} s  backward {t2 - t1:6.2f} s  "
              f"peak {peak:5.2f} GB  optimal {ok}/{batch}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
