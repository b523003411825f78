"""The kkt paths' read-off of the QP data and affine rows in chunks
(``compiler.canon._ReadOff``): above ``defaults.READOFF_MAX_ELEMENTS`` parameter
elements in the copies, the ``N + 1`` points run in chunks (checkpointed where the
parameters need gradients), with the same data, solutions and gradients as one
evaluation."""

from __future__ import annotations

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.compiler import canonicalize_qp, expand_params
from optlayer.compiler.canon import _ReadOff
from optlayer.layer import random_params

from .chunks import assert_same_in_chunks

D = torch.float64


@pytest.fixture(autouse=True)
def _points(monkeypatch):
    """These tests are of the read-off at points: the examples' rows and objectives would
    otherwise take their coefficients from the IR (compiler.coefficients), and the data of
    those affine in the parameters one matrix product (compiler.param_affine)."""
    monkeypatch.setattr(defaults, "READOFF_COEFFICIENTS", False)
    monkeypatch.setattr(defaults, "PARAM_AFFINE_MAX_ENTRIES", 0)

# an LP with equalities and inequalities (quantile regression), a QP with absolute
# values rewritten to epigraph rows (lad regression with a ridge), a general QP
PROBLEMS = ["quantile_regression", "lad_regression", "general_qp"]


def _layer(name, **kw):
    return ol.load(f"examples/problems/{name}.opt", **kw)


def _data(layer, P, B):
    return canonicalize_qp(layer.program, P, B, D, "cpu")


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("budget", [1, 500])   # chunks of 1 point; of 4 to 8
def test_chunked_data_equal_one_evaluation(name, budget, monkeypatch):
    layer = _layer(name)
    P, B, _ = expand_params(layer.problem, random_params(layer.problem, batch=3, seed=1))
    whole = _data(layer, P, B)
    monkeypatch.setattr(defaults, "READOFF_MAX_ELEMENTS", budget)
    N = layer.program.layout.size
    sizes = _ReadOff(P, B, N, D, "cpu").chunk_sizes()
    assert len(sizes) > 1 and sum(sizes) == N + 1   # the points do run in chunks
    chunked = _data(layer, P, B)
    for a, b in zip(whole[:6], chunked[:6], strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=0, atol=1e-13)
    assert whole[6:] == chunked[6:]


@pytest.mark.parametrize("name", PROBLEMS)
def test_chunked_layer_same_solution_and_gradients(name, monkeypatch):
    vals = random_params(_layer(name).problem, batch=4, seed=2)
    assert_same_in_chunks(lambda: _layer(name, tol=1e-12), vals, monkeypatch)


def test_chunked_gradients_match_finite_differences(monkeypatch):
    monkeypatch.setattr(defaults, "READOFF_MAX_ELEMENTS", 50)
    layer = _layer("lad_regression", tol=1e-12)
    vals = random_params(layer.problem, batch=2, seed=3)
    X = vals["X"].clone().requires_grad_(True)
    w = torch.randn(2, layer.program.layout.shapes["w"][0], dtype=D,
                    generator=torch.Generator().manual_seed(0))
    (gX,) = torch.autograd.grad((w * layer(X=X, t=vals["t"])).sum(), X)
    eps = 1e-6
    for idx in [(0, 0, 0), (1, 3, 1), (0, 7, 2)]:
        Xp, Xm = vals["X"].clone(), vals["X"].clone()
        Xp[idx] += eps
        Xm[idx] -= eps
        fd = ((w * layer(X=Xp, t=vals["t"])).sum() - (w * layer(X=Xm, t=vals["t"])).sum()) \
            / (2 * eps)
        assert abs(float(fd) - float(gX[idx])) < 1e-6 * (1 + abs(float(fd)))
