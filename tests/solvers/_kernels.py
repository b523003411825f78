"""The QP kernels of ``solve_qp``, as an autouse fixture.

A test module that imports :func:`kernel` runs each of its tests four times:
on the interior point loop over the full Newton system with its direction by
LU (``full-lu``) or by the reduced system's Cholesky factorization
(``full-cholesky``), on the reduced kernel (``reduced``), and on the dual
active-set method (``active-set``, with ``full-lu`` for the items it leaves).
"""

from __future__ import annotations

import pytest

from optlayer import defaults

#: kernel -> (IPM_DENSE_MAX_SIZE, IPM_DENSE_MAX_WORK, IPM_LU_MAX_WORK,
#: ACTIVE_SET_MAX_ROWS, ACTIVE_SET_MAX_WORK) forcing it
FORCE = {
    "full-lu": (10**9, float("inf"), float("inf"), -1, 0.0),
    "full-cholesky": (10**9, float("inf"), 0.0, -1, 0.0),
    "reduced": (0, 0.0, 0.0, -1, 0.0),
    "active-set": (10**9, float("inf"), float("inf"), 10**9, float("inf")),
}


def force(monkeypatch, name: str) -> str:
    """Make ``solve_qp`` run the kernel ``name`` for the rest of the test."""
    size, work, lu, rows, active_work = FORCE[name]
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_SIZE", size)
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_WORK", work)
    monkeypatch.setattr(defaults, "IPM_LU_MAX_WORK", lu)
    monkeypatch.setattr(defaults, "ACTIVE_SET_MAX_ROWS", rows)
    monkeypatch.setattr(defaults, "ACTIVE_SET_MAX_WORK", active_work)
    return name


@pytest.fixture(params=list(FORCE), autouse=True)
def kernel(request, monkeypatch):
    return force(monkeypatch, request.param)
