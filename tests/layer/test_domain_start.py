"""Rows and objectives whose atoms have a restricted domain (``log``, ``sqrt``, ``x ^ 1.5``,
``entropy``) on the convex path, where the default start ``x = 0`` lies on the domain's
boundary (or outside it): the interior point starts strictly inside the domain rows
(``canon._inside_domains``), solves to cvxpy's solution with the gradients of finite
differences, and reports INFEASIBLE where no point of the domain meets the equalities.
(Before, every item of these problems ended NUMERICAL_ERROR.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optlayer as ol
from optlayer import Status

from .reference import solve_reference_duals

D = torch.float64
HEAD = "dim n = 3\nparam c[n]\nvar x[n]\n"

# the solution inside the domain, the atom's row active at the test data
CASES = {
    "log": "minimize sum_squares(x - c)\nsubject to\n    lab: sum(log(x)) >= -1",
    "log_shifted_out": "minimize sum_squares(x - c - 2)\nsubject to\n"
                       "    lab: sum(log(x - 2)) >= -1",
    "sqrt": "minimize sum_squares(x - c)\nsubject to\n    lab: sum(sqrt(x)) >= 2.5",
    "power": "minimize sum_squares(x - 2 * c)\nsubject to\n    x >= 0\n"
             "    lab: sum(x ^ 1.5) <= 1",
    "entropy_on_sum": "minimize sum_squares(x - c)\nsubject to\n    sum(x) == 1\n"
                      "    lab: sum(entropy(x)) >= 1.09",
    "log_objective": "minimize sum_squares(x - c) - 0.1 * sum(log(x))\nsubject to\n"
                     "    lab: sum(x) <= 0.8",
}
C = torch.tensor([[0.2, 0.5, 0.3], [0.4, 0.1, 0.3], [0.25, 0.25, 0.6]], dtype=D)


def _layer(body, **kw):
    return ol.compile(HEAD + body, **kw)


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_solution_and_multiplier_match_cvxpy(name):
    layer = _layer(CASES[name])
    assert layer.plan.solver == "convex"
    x = layer(c=C)
    assert layer.info.status.tolist() == [0] * 3
    duals = layer.duals("lab")
    assert (duals.reshape(3, -1) > 1e-3).all()   # the domain atom's row binds
    for i in range(3):
        ref, _obj, rd = solve_reference_duals(layer.problem, {"c": C[i].numpy()})
        # Clarabel stops near 1e-7 on exponential and power cones
        np.testing.assert_allclose(x[i].numpy(), ref["x"], atol=5e-6, rtol=0)
        np.testing.assert_allclose(duals[i].reshape(-1).numpy(), rd["lab"], atol=2e-5,
                                   rtol=0)


@pytest.mark.parametrize("name", ["log", "power", "entropy_on_sum"])
def test_gradient_matches_finite_differences(name):
    layer = _layer(CASES[name], tol=1e-13, maxiter=500)
    c = C[:1].clone()
    gen = torch.Generator().manual_seed(5)
    wt = torch.randn(1, 3, generator=gen, dtype=D)
    v = torch.randn(1, 3, generator=gen, dtype=D)
    cc = c.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((layer(c=cc) * wt).sum(), cc)
    eps = 1e-5
    with torch.no_grad():
        numeric = float(((layer(c=c + eps * v) - layer(c=c - eps * v)) * wt).sum() / (2 * eps))
    assert abs(numeric) > 1e-3  # the solution moves with the data
    assert abs(float((g * v).sum()) - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_no_point_of_the_domain_on_the_equalities_is_infeasible():
    # log(x - 0.5) needs every x > 0.5, sum(x) == 1 allows none: INFEASIBLE, not a
    # numerical failure; an item of another layer that is feasible is still solved
    layer = _layer("minimize sum_squares(x - c)\nsubject to\n    sum(x) == 1\n"
                   "    sum(log(x - 0.5)) >= -30", on_failure="ignore")
    layer(c=C)
    assert layer.info.status.tolist() == [int(Status.INFEASIBLE)] * 3
    wide = _layer("minimize sum_squares(x - c)\nsubject to\n    sum(x) == 2\n"
                  "    sum(log(x - 0.5)) >= -6")
    x = wide(c=C)
    assert wide.info.status.tolist() == [0] * 3
    assert (x > 0.5).all()
