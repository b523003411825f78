"""A large kkt layer: time and peak memory.

Run: ``python examples/benchmarks/kkt_large.py [m d batch]`` (lad_regression; default
1000 100 2), or ``python examples/benchmarks/kkt_large.py PROBLEM name=size ... batch=B``
for any model of examples/problems, e.g. ``robust_ls n=200 m=300 k=20 batch=16`` (the
convex interior point path).

Random data that fits the declarations, forward and backward of ``sum(x)``, four calls in
one process: prints each call's times and the process's peak resident memory so far.
Both kkt paths take their data from the coefficients of the affine and quadratic
pieces (``compiler.coefficients``); pieces those do not cover are read off by evaluating
the problem at ``N + 1`` points (the convex path: one per row and unknown), and rows
without a closed-form model are evaluated on ``N + r`` points per iteration. Past
``defaults.READOFF_MAX_ELEMENTS`` parameter elements in their copies these run in chunks
(docs/layer.md).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's optlayer, not another installed copy

import optlayer as ol  # noqa: E402
from optlayer.layer import random_params  # noqa: E402


def main(problem="lad_regression", dims=None, batch=2, calls=4):
    dims = dims or {"m": 1000, "d": 100}
    layer = ol.load(ROOT / "examples" / "problems" / f"{problem}.opt", dims=dims)
    shown = " ".join(f"{k}={v}" for k, v in dims.items())
    print(f"{problem} {shown} batch={batch} (N = {layer.program.layout.size} unknowns)")
    for call in range(calls):
        vals = random_params(layer.problem, batch=batch, seed=call)
        ins = {k: v.clone().requires_grad_(True) for k, v in vals.items()}
        t0 = time.perf_counter()
        out = layer(**ins)
        t1 = time.perf_counter()
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        sum(o.sum() for o in outs).backward()
        t2 = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB (Linux)
        ok = int((layer.info.status == 0).sum())
        print(f"   call {call}: forward {t1 - t0:6.2f} s  backward {t2 - t1:6.2f} s  "
              f"peak {peak:5.2f} GB  optimal {ok}/{batch}")


def _args(argv):
    if argv and not argv[0].isdigit():   # PROBLEM name=size ... batch=B
        named = dict(a.split("=", 1) for a in argv[1:])
        batch = int(named.pop("batch", 2))
        return argv[0], {k: int(v) for k, v in named.items()}, batch
    m, d, batch = (int(a) for a in (argv + ["1000", "100", "2"][len(argv):])[:3])
    return "lad_regression", {"m": m, "d": d}, batch


if __name__ == "__main__":
    main(*_args(sys.argv[1:]))
