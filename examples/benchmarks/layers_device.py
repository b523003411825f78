"""Every shipped example on an accelerator: the same solution and gradients as on the CPU,
and forward+backward times (float64).

For each ``examples/problems/*.opt`` (default method): random parameters at batch ``B``
are solved on the CPU and on ``cuda`` (the layer follows its parameters' device); the
script prints the largest differences of the solutions and of the gradients of a random
linear loss, each item's status on the device, and the median wall-clock time of
forward+backward (synchronised) on each device at batch 32 and at a large batch.

    python examples/benchmarks/layers_device.py [NAME ...] [--big 4096]

Exits 1 when some example's device results differ from the CPU's by more than 1e-6
(relative to their size) or end with a status other than OPTIMAL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import optlayer as ol
from optlayer.layer import random_params

ROOT = Path(__file__).resolve().parents[2] / "examples" / "problems"


def _flat(out):
    parts = out if isinstance(out, tuple) else (out,)
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)


def _run(layer, vals, w, device):
    ins = {k: v.to(device).clone().requires_grad_(True) for k, v in vals.items()}
    out = _flat(layer(**ins))
    (out * w.to(device)).sum().backward()
    return out.detach().cpu(), {k: v.grad.cpu() for k, v in ins.items()}, \
        layer.info.status.cpu()


def _time(layer, vals, device, rounds=15):
    ins0 = {k: v.to(device) for k, v in vals.items()}

    def once():
        ins = {k: v.clone().requires_grad_(True) for k, v in ins0.items()}
        _flat(layer(**ins)).sum().backward()

    once()
    ts = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        once()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--big", type=int, default=4096)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, float64")
    print(f"{'example':22s} {'method':15s} {'|dx|':>8s} {'|dgrad|':>8s} {'status':>7s}"
          f" {'cpu@32':>8s} {'gpu@32':>8s} {'cpu@big':>8s} {'gpu@big':>8s}  (ms)")
    bad = []
    paths = sorted(ROOT.glob("*.opt"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names]
    for path in paths:
        layer = ol.load(path, on_failure="ignore")
        vals = random_params(layer.problem, batch=32, seed=0)
        probe = _flat(layer(**vals))
        w = torch.randn(probe.shape, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
        out_cpu, g_cpu, st_cpu = _run(layer, vals, w, cpu)
        out_gpu, g_gpu, st_gpu = _run(layer, vals, w, cuda)
        dx = float((out_gpu - out_cpu).abs().max() / (1 + out_cpu.abs().max()))
        dg = max(float((g_gpu[k] - g_cpu[k]).abs().max() / (1 + g_cpu[k].abs().max()))
                 for k in g_cpu)
        ok_status = bool((st_gpu == 0).all())
        big = random_params(layer.problem, batch=args.big, seed=1)
        times = [_time(layer, vals, cpu), _time(layer, vals, cuda),
                 _time(layer, big, cpu, rounds=3), _time(layer, big, cuda)]
        flag = "" if dx <= 1e-6 and dg <= 1e-6 and ok_status else "  <- differs"
        if flag:
            bad.append(path.stem)
        print(f"{path.stem:22s} {layer.method:15s} {dx:8.1e} {dg:8.1e} "
              f"{int((st_gpu == 0).sum()):3d}/{st_gpu.numel():<3d}"
              + "".join(f" {t:8.2f}" for t in times) + flag)
    print(f"{len(paths) - len(bad)} of {len(paths)} examples agree with the CPU"
          + (f"; not: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
