"""Layers solve the same with their data from the coefficients (``compiler.coefficients``,
the default) as with the read-off at points (``defaults.READOFF_COEFFICIENTS = False``):
the convex path's quadratic objective, quadratic and cone rows and smooth-atom arguments,
the first-order methods' ``(Q, p)`` and the stationary Newton's objective model."""

from __future__ import annotations

import pytest

import optlayer as ol
from optlayer.layer import random_params

from .chunks import assert_same_with


@pytest.mark.parametrize("name", ["robust_ls", "sqrt_lasso", "risk_portfolio",
                                  "logsumexp_constrained", "group_lasso", "svm_dual",
                                  "huber_regression", "logistic_regression",
                                  "softmax_regression", "portfolio"])
def test_layers_solve_the_same_with_points(name, monkeypatch):
    path = f"examples/problems/{name}.opt"
    vals = random_params(ol.load(path).problem, batch=4, seed=8)
    assert_same_with(lambda: ol.load(path, tol=1e-12), vals, monkeypatch,
                     "READOFF_COEFFICIENTS", False)
