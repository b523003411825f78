"""The QP kernels of ``solve_qp``, as an autouse fixture.

A test module that imports :func:`kernel` runs each of its tests seven times:
on the unguarded loop that runs first on small problems without equality
constraints (``fast``, ``_qp_fast``; the items it leaves go to ``full-cholesky``),
on the interior point loop over the full Newton system with its direction by
LU (``full-lu``) or by the reduced system's Cholesky factorization
(``full-cholesky``), on the reduced kernel (``reduced``; ``reduced-schur``:
after the primal-dual active-set rule on the dual Schur complement,
``_qp_schur``), and on the active-set method (``active-set``: the
primal-dual rule, then Goldfarb and Idnani's dual method for the items it
leaves, then ``full-lu`` for theirs), also with the dual method alone
(``active-set-dual``).
"""

from __future__ import annotations

import pytest

from optlayer import defaults

#: kernel -> (IPM_DENSE_MAX_SIZE, IPM_DENSE_MAX_WORK, IPM_LU_MAX_WORK,
#: ACTIVE_SET_MAX_ROWS, ACTIVE_SET_MAX_WORK, ACTIVE_SET_PDAS_ITERS or None for its
#: default, IPM_FAST_LOOP) forcing it
FORCE = {
    "fast": (10**9, float("inf"), 0.0, -1, 0.0, None, True),
    "full-lu": (10**9, float("inf"), float("inf"), -1, 0.0, None, False),
    "full-cholesky": (10**9, float("inf"), 0.0, -1, 0.0, None, False),
    "reduced": (0, 0.0, 0.0, -1, 0.0, 0, False),
    "reduced-schur": (0, 0.0, 0.0, -1, 0.0, None, False),
    "active-set": (10**9, float("inf"), float("inf"), 10**9, float("inf"), None, False),
    "active-set-dual": (10**9, float("inf"), float("inf"), 10**9, float("inf"), 0, False),
}


def force(monkeypatch, name: str) -> str:
    """Make ``solve_qp`` run the kernel ``name`` for the rest of the test."""
    size, work, lu, rows, active_work, pdas, fast = FORCE[name]
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_SIZE", size)
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_WORK", work)
    monkeypatch.setattr(defaults, "IPM_LU_MAX_WORK", lu)
    monkeypatch.setattr(defaults, "ACTIVE_SET_MAX_ROWS", rows)
    monkeypatch.setattr(defaults, "ACTIVE_SET_MAX_WORK", active_work)
    monkeypatch.setattr(defaults, "IPM_FAST_LOOP", fast)
    if pdas is not None:
        monkeypatch.setattr(defaults, "ACTIVE_SET_PDAS_ITERS", pdas)
    return name


@pytest.fixture(params=list(FORCE), autouse=True)
def kernel(request, monkeypatch):
    return force(monkeypatch, request.param)
