"""solve_qp on objectives with large coefficients: the same solution, iterations and
status as the unscaled problem, multipliers and gradients scaled as the KKT conditions
say (``defaults.QP_SCALE_ABOVE``; the active-set point's refinement)."""

from __future__ import annotations

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.layer import random_params
from optlayer.solvers.qp import solve_qp
from optlayer.status import Status

F64 = torch.float64


def _qp(seed, B=5, n=6, m=4, me=1):
    """Strictly convex QPs with inequalities active at the solution and one equality."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    Q = M @ M.mT / n + 0.1 * torch.eye(n, dtype=F64)
    p = 3 * torch.randn(B, n, generator=g, dtype=F64)
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    h = 0.1 * torch.rand(B, m, generator=g, dtype=F64)
    A = torch.randn(B, me, n, generator=g, dtype=F64)
    b = torch.zeros(B, me, dtype=F64)
    return Q, p, G, h, A, b


@pytest.mark.parametrize("c", [1e2, 1e5, 1e9])
@pytest.mark.parametrize("batch", [5, 64])   # the active-set methods, the interior point
def test_a_scaled_objective_has_the_same_solution_and_scaled_multipliers(c, batch):
    """``x*(cQ, cp) = x*(Q, p)``, the multipliers times ``c``; the gradients of a loss of
    ``x`` in ``p`` divided by ``c``."""
    Q, p, G, h, A, b = _qp(0, B=batch)
    w = torch.randn(batch, Q.shape[1], generator=torch.Generator().manual_seed(1), dtype=F64)

    def solve(Q, p):
        pr = p.clone().requires_grad_()
        sol = solve_qp(Q, pr, G, h, A, b, on_failure="ignore")
        (grad,) = torch.autograd.grad((sol.x * w).sum(), pr)
        return sol, grad

    base, gbase = solve(Q, p)
    big, gbig = solve(c * Q, c * p)
    assert bool((base.status == Status.OPTIMAL).all()) and bool((big.status == 0).all())
    assert bool((base.ineq_dual > 1e-3).any())         # some rows active
    assert int(big.iter_num.max()) <= int(base.iter_num.max()) + 2
    torch.testing.assert_close(big.x, base.x, atol=1e-9, rtol=0)
    torch.testing.assert_close(big.ineq_dual, c * base.ineq_dual, atol=1e-8 * c, rtol=1e-8)
    torch.testing.assert_close(big.eq_dual, c * base.eq_dual, atol=1e-8 * c, rtol=1e-8)
    torch.testing.assert_close(gbig, gbase / c, atol=1e-8 / c, rtol=1e-7)


def test_scaling_every_item_leaves_the_solution_and_multipliers(monkeypatch):
    """With the threshold at 0 every item is solved scaled (here by its largest
    coefficient, between 1 and 10): the solution and multipliers are those of the data
    as given, to roundoff."""
    Q, p, G, h, A, b = _qp(2)
    sol = solve_qp(Q, p, G, h, A, b)
    monkeypatch.setattr(defaults, "QP_SCALE_ABOVE", 0.0)   # every item rescaled
    scaled = solve_qp(Q, p, G, h, A, b)
    torch.testing.assert_close(scaled.x, sol.x, atol=1e-10, rtol=0)
    torch.testing.assert_close(scaled.ineq_dual, sol.ineq_dual, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name,power", [
    ("nnls", {"A": 1, "t": 1}),                 # f times c^2
    ("portfolio", {"mu": 2, "F": 1}),           # f times c^2
    ("box_qp", {"P": 1, "q": 1}),               # not a scaling of f: status and iterations
])
@pytest.mark.parametrize("c", [10.0, 1e3, 1e6])
def test_kkt_layers_are_invariant_to_the_scale_of_the_objective(name, power, c):
    """Parameters scaled by ``c ** power`` multiply the objective by ``c^2``: the minimiser
    and the iteration count stay. Before the objective was scaled, portfolio at
    c = 1e6 (|Q| ~ 1e12) ended MAX_ITER on every item and nnls at c = 1e3 took 18
    iterations instead of 3."""
    layer = ol.load(f"examples/problems/{name}.opt", method="kkt")
    vals = random_params(layer.problem, batch=6, seed=1)
    base = layer(**vals)
    its = layer.info.iterations
    out = layer(**{k: v * c ** power.get(k, 0) for k, v in vals.items()})
    assert layer.info.status.tolist() == [0] * 6
    assert layer.info.iterations <= its + 3
    if name != "box_qp":
        torch.testing.assert_close(out, base, atol=1e-8, rtol=0)
