"""optlayer.solvers.qp, reduced (Cholesky) kernel only: its dynamic regularization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlayer import defaults
from optlayer.solvers import _qp_ipm
from optlayer.solvers.qp import solve_qp

from .test_qp import _cvxpy, _random_qp, _t

pytest.importorskip("cvxpy")


def test_a_failed_factorization_retries_with_more_regularization(monkeypatch):
    # the reduced kernel's Cholesky reports a failure for item 0 in its second loop
    # iteration: the item must take no step, retry with a boosted diagonal and still
    # end OPTIMAL at the reference solution
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_SIZE", 0)

    calls, boosts = [], []
    real, real_factor = torch.linalg.cholesky_ex, _qp_ipm.factor

    def flaky(H, *a, **k):
        L, info = real(H, *a, **k)
        if H.shape[-1] == 6:                   # the (n x n) reduced operator
            calls.append(1)
            if len(calls) == 3:                # the second loop iteration
                info = info.clone()
                info[0] = 1
        return L, info

    def spy(d, W, boost=None):
        if boost is not None:
            boosts.append(boost[0].item())
        return real_factor(d, W, boost)

    monkeypatch.setattr(_qp_ipm.torch.linalg, "cholesky_ex", flaky)
    monkeypatch.setattr(_qp_ipm, "factor", spy)
    insts = [_random_qp(60 + i, 6, 8, 2) for i in range(3)]
    stacked = [_t(np.stack([inst[k] for inst in insts])) for k in range(6)]
    sol = solve_qp(*stacked, on_failure="raise")
    assert max(boosts) == defaults.IPM_REG_BOOST        # item 0 retried once, boosted
    for i, inst in enumerate(insts):
        _, x_ref, _ = _cvxpy(*inst)
        np.testing.assert_allclose(sol.x[i].numpy(), x_ref, atol=1e-8)
