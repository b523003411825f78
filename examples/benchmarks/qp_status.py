"""Status honesty of solve_qp on random QPs and LPs, each kernel, against Clarabel.

Run:  python examples/benchmarks/qp_status.py [--trials 150] [--seed 0]

Draws random instances (PD QPs, LPs and rank-2 PSD QPs with a bounding box;
n in [2, 12), up to 14 inequalities and 3 equalities; about 15% made
infeasible by negative slacks), solves each with cvxpy/Clarabel and with
solve_qp on each of its three kernels (the loop on the full Newton system
with its direction by LU or by the reduced system's Cholesky factorization,
and the reduced kernel), and prints how the statuses line up. The line that
must read 0: items returned OPTIMAL whose solution differs from Clarabel's
by more than 1e-5 (relative), or OPTIMAL on an instance Clarabel proves
infeasible.
"""

from __future__ import annotations

import argparse
import collections
import warnings

import numpy as np
import torch

from optlayer import defaults
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

try:
    import cvxpy as cp
except ImportError:  # pragma: no cover - the bench extra
    cp = None

#: kernel -> (IPM_DENSE_MAX_SIZE, IPM_DENSE_MAX_WORK, IPM_LU_MAX_WORK) forcing it
KERNELS = {"full-lu": (10**9, float("inf"), float("inf")),
           "full-cholesky": (10**9, float("inf"), 0.0),
           "reduced": (0, 0.0, 0.0)}


def instance(rng):
    n = int(rng.integers(2, 12))
    m = int(rng.integers(0, 15))
    me = int(rng.integers(0, min(n, 4)))
    kind = str(rng.choice(["qp", "lp", "psd"]))
    M = rng.standard_normal((n, n))
    if kind == "qp":
        Q = M @ M.T / n + 1e-2 * np.eye(n)
    elif kind == "lp":
        Q = np.zeros((n, n))
    else:
        R = rng.standard_normal((n, 2))
        Q = R @ R.T
    p = rng.standard_normal(n)
    x0 = rng.standard_normal(n)
    G = rng.standard_normal((m, n)) if m else None
    infeasible = rng.random() < 0.15
    h = G @ x0 + rng.uniform(-0.5 if infeasible else 0.05, 1.0, m) if m else None
    A = rng.standard_normal((me, n)) if me else None
    b = A @ x0 if me else None
    if kind != "qp":                      # a box keeps LPs and PSD QPs bounded
        Gb = np.vstack([np.eye(n), -np.eye(n)])
        hb = np.concatenate([x0 + 2, 2 - x0])
        G = Gb if G is None else np.vstack([G, Gb])
        h = hb if h is None else np.concatenate([h, hb])
    return Q, p, G, h, A, b


def reference(Q, p, G, h, A, b):
    x = cp.Variable(p.shape[0])
    cons = ([G @ x <= h] if G is not None else []) + ([A @ x == b] if A is not None else [])
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + p @ x), cons)
    prob.solve(solver=cp.CLARABEL)
    return prob.status, x.value


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if cp is None:
        print("cvxpy is not installed (pip install -e '.[bench]'): nothing to compare with")
        return
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(args.seed)
    table = collections.Counter()
    wrong = 0
    for _ in range(args.trials):
        data = instance(rng)
        try:
            ref_status, x_ref = reference(*data)
        except cp.SolverError:
            continue
        tensors = [None if a is None else torch.tensor(a, dtype=torch.float64) for a in data]
        for kernel, (size, work, lu) in KERNELS.items():
            defaults.IPM_DENSE_MAX_SIZE, defaults.IPM_DENSE_MAX_WORK = size, work
            defaults.IPM_LU_MAX_WORK = lu
            sol = solve_qp(*tensors, on_failure="ignore")
            status = Status(int(sol.status))
            table[(kernel, ref_status, status.name)] += 1
            if status == Status.OPTIMAL:
                if ref_status == "infeasible":
                    wrong += 1
                elif ref_status == "optimal":
                    err = np.abs(sol.x.numpy() - x_ref).max() / max(1.0, np.abs(x_ref).max())
                    wrong += err > 1e-5
    print(f"{'kernel':14s} {'Clarabel':12s} {'solve_qp':20s} count")
    for (kernel, ref, ours), k in sorted(table.items()):
        print(f"{kernel:14s} {ref:12s} {ours:20s} {k}")
    print(f"OPTIMAL but wrong (must be 0): {wrong}")


if __name__ == "__main__":
    main()
