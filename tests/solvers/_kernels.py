"""The two interior point kernels of ``solve_qp``, as an autouse fixture.

A test module that imports :func:`kernel` runs each of its tests twice: on the
full Newton system with LU (small batches of small problems) and on the
reduced system with Cholesky (the others).
"""

from __future__ import annotations

import pytest

from optlayer import defaults


@pytest.fixture(params=["dense", "reduced"], autouse=True)
def kernel(request, monkeypatch):
    dense = request.param == "dense"
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_SIZE", 10**9 if dense else 0)
    monkeypatch.setattr(defaults, "IPM_DENSE_MAX_WORK", float("inf") if dense else 0.0)
    return request.param
