"""The three interior point kernels of ``solve_qp``, as an autouse fixture.

A test module that imports :func:`kernel` runs each of its tests three times:
on the loop over the full Newton system with its direction by LU
(``full-lu``) or by the reduced system's Cholesky factorization
(``full-cholesky``), and on the reduced kernel (``reduced``).
"""

from __future__ import annotations

import pytest

from optlayer import defaults

#: kernel -> (IPM_DENSE_MAX_SIZE, IPM_DENSE_MAX_WORK, IPM_LU_MAX_WORK) forcing it
FORCE = {
    "full-lu": (10**9, float("inf"), float("inf")),
    "full-cholesky": (10**9, float("inf"), 0.0),
    "reduced": (0, 0.0, 0.0),
}


def force(monkeypatch, name: str) -> str:
    """Make ``solve_qp`` run the kernel ``name`` for the rest of the test."""
    size, work, lu = FORCE[name]
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_SIZE", size)
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_WORK", work)
    monkeypatch.setattr(defaults, "IPM_LU_MAX_WORK", lu)
    return name


@pytest.fixture(params=list(FORCE), autouse=True)
def kernel(request, monkeypatch):
    return force(monkeypatch, request.param)
