"""Simplex projection: optlayer.projections.simplex against a plain sort-based torch version.

The baseline is the textbook sort/cumsum algorithm written directly in torch
(differentiated by autograd through sort, cumsum and gather) — the practical
speed limit for an exact projection. Bar: optlayer within 1.5x of it, batch
128, n in {100, 1000, 10000}, forward and forward+backward, float32 and float64.

Run:  python examples/benchmarks/projections.py
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from optlayer.projections import simplex

BAR = 1.5


def sort_based(x: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - value
    ks = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    rho = (u - css / ks > 0).sum(-1, keepdim=True)
    tau = torch.gather(css, -1, rho - 1) / rho.to(x.dtype)
    return torch.relu(x - tau)


def timeit_pair(fa, fb, repeats: int) -> tuple[float, float]:
    """Median times of two functions, run alternately so that load drift hits both."""
    for _ in range(3):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def case(proj, x, backward: bool):
    if not backward:
        return lambda: proj(x)
    w = torch.randn_like(x)

    def run():
        xr = x.detach().requires_grad_(True)
        (proj(xr) * w).sum().backward()

    return run


def main() -> int:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    print(f"{'dtype':8} {'n':>6} {'mode':8} {'optlayer ms':>12} {'sort ms':>10} {'ratio':>7}  bar")
    ok = True
    for dtype in (torch.float64, torch.float32):
        for n in (100, 1000, 10000):
            x = torch.randn(128, n, dtype=dtype)
            torch.testing.assert_close(simplex(x), sort_based(x))
            repeats = 200 if n < 10000 else 40
            for mode in ("fwd", "fwd+bwd"):
                ours, base = timeit_pair(
                    case(simplex, x, mode != "fwd"), case(sort_based, x, mode != "fwd"), repeats
                )
                ratio = ours / base
                passed = ratio <= BAR
                ok &= passed
                print(f"{str(dtype)[6:]:8} {n:6d} {mode:8} {1e3 * ours:12.3f} {1e3 * base:10.3f} "
                      f"{ratio:7.2f}  {'PASS' if passed else 'FAIL'}")
    print("all within 1.5x:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
