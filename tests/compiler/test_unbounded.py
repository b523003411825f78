"""UNBOUNDED certificates of forward-backward Newton (``iterate._recedes``): the items with
no minimiser, as cvxpy judges them, end UNBOUNDED within a few checks instead of running
to ``maxiter``; bounded items are never called unbounded."""

from __future__ import annotations

import cvxpy as cp
import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.status import Status

D = torch.float64
HEAD = "dim n = 4\nparam y[n]\nvar x[n]\n"


def _cvxpy_unbounded(build, y):
    """cvxpy's verdict per item: True where the problem is unbounded below."""
    out = []
    for row in y.numpy():
        x = cp.Variable(row.shape[0])
        obj, cons = build(x, row)
        prob = cp.Problem(cp.Minimize(obj), cons)
        prob.solve(solver=cp.CLARABEL)
        assert prob.status in ("optimal", "unbounded"), prob.status
        out.append(prob.status == "unbounded")
    return out


def _solve(body, y, **kw):
    layer = ol.compile(HEAD + body, on_failure="ignore", **kw)
    x = layer(y=y)
    return layer, x


CASES = {
    # an LP in epigraph-free form: l1 term against a linear one
    "lasso": ("minimize 0.1 * norm1(x) - y @ x",
              lambda x, y: (0.1 * cp.norm1(x) - y @ x, []), "prox_grad"),
    # a group term: bounded iff |y|_2 <= 1
    "group": ("minimize norm2(x) - y @ x",
              lambda x, y: (cp.norm2(x) - y @ x, []), "prox_grad"),
    # a set with a recession cone
    "nonneg": ("minimize -(y @ x)\nsubject to\n    x >= 0",
               lambda x, y: (-(y @ x), [x >= 0]), "proj_grad"),
    # l1 on the nonneg orthant (nonneg_lasso)
    "nonneg lasso": ("minimize 0.5 * norm1(x) - y @ x\nsubject to\n    x >= 0",
                     lambda x, y: (0.5 * cp.norm1(x) - y @ x, [x >= 0]), "prox_grad"),
    # a quadratic with a null space: unbounded along it where y has a part there
    "null space": ("minimize sum_squares(x[0:2] - x[2:4]) - y @ x + 0.2 * norm1(x)",
                   lambda x, y: (cp.sum_squares(x[0:2] - x[2:4]) - y @ x
                                 + 0.2 * cp.norm1(x), []), "prox_grad"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unbounded_items_are_certified_and_bounded_ones_solved(name):
    body, build, method = CASES[name]
    g = torch.Generator().manual_seed(0)
    y = torch.randn(12, 4, generator=g, dtype=D) * torch.tensor(
        [0.02, 0.05, 0.2, 0.5, 1.0, 2.0] * 2, dtype=D)[:, None]
    if name == "null space":   # half the items with y in the row space: bounded
        y[::2, 2:] = -y[::2, :2]
    layer, x = _solve(body, y, method=method)   # (kkt is the default for "nonneg")
    assert layer.method == method \
        and layer.program.forward_solver() == ("normal_newton" if name == "group" else "fbn")
    want = _cvxpy_unbounded(build, y)
    assert 0 < sum(want) < len(want)          # both kinds occur
    status = layer.info.status.tolist()
    for b, unb in enumerate(want):
        assert status[b] == (int(Status.UNBOUNDED) if unb else 0), (b, status, want)
    # found at the checks, far before maxiter
    assert layer.info.iterations <= 4 * defaults.FBN_UNBOUNDED_CHECK


@pytest.mark.parametrize("body", [
    "minimize -(y @ x)\nsubject to\n    x in box(-1, 1)",          # a bounded set
    "minimize -(y @ x)\nsubject to\n    x in simplex",
    "minimize 0.1 * norm1(x) - y @ x + 1e-3 * sum_squares(x)",    # definite Q
    "minimize sum_squares(x[0:2] - x[2:4]) - y @ x\nsubject to\n    x in box(-1, 1)",
    "minimize sum_squares(x[0:2] - x[2:4]) - y @ x\nsubject to\n    x in simplex",
], ids=["box", "simplex", "ridge", "null space in a box", "null space in a simplex"])
def test_bounded_problems_are_not_called_unbounded(body, monkeypatch):
    # checks from the first iteration on, on data that pushes hard
    monkeypatch.setattr(defaults, "FBN_UNBOUNDED_CHECK", 1)
    y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=D) * 50
    # (a QP on sets defaults to kkt: the forward-backward Newton's certificate is tested)
    layer, _ = _solve(body, y, method="prox_grad" if "norm1" in body else "proj_grad")
    assert layer.program.forward_solver() == "fbn"
    assert bool((layer.info.status == 0).all()), layer.info.status


def test_unbounded_is_reported_by_on_failure():
    layer = ol.compile(HEAD + CASES["lasso"][0], on_failure="raise")
    y = torch.tensor([[0.05, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0]], dtype=D)
    with pytest.raises(ol.SolverError, match="unbounded"):
        layer(y=y)
    masked = ol.compile(HEAD + CASES["lasso"][0], on_failure="mask")
    x = masked(y=y)
    assert masked.info.status.tolist() == [0, int(Status.UNBOUNDED)]
    assert bool(torch.isnan(x[1]).all()) and bool((x[0] == 0).all())


def test_the_certificate_needs_a_flat_ray():
    """``_recedes`` itself: the same slope with a curved ``Q`` along the ray is no
    certificate, nor a ray that leaves the sets."""
    from optlayer.compiler.iterate import _recedes

    B, N = 2, 3
    x = torch.zeros(B, N, dtype=D)
    F = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=D)
    p = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=D)
    free = lambda z, step: z                    # noqa: E731
    nonneg = lambda z, step: z.clamp_min(0)     # noqa: E731
    none = lambda z: z.new_zeros(z.shape[0])    # noqa: E731
    zero, L0 = torch.zeros(B, N, N, dtype=D), torch.full((B,), 1e-16, dtype=D)
    assert _recedes(zero, p, x, F, L0, free, none).tolist() == [True, True]
    curved = torch.eye(N, dtype=D).expand(B, N, N)
    assert _recedes(curved, p, x, F, torch.ones(B, dtype=D), free, none).tolist() == \
        [False, False]
    assert _recedes(zero, p, x, F, L0, nonneg, none).tolist() == [True, False]
    # a norm term steeper than the slope: bounded along the ray
    steep = lambda z: 2.0 * z.abs().sum(-1)     # noqa: E731
    assert _recedes(zero, p, x, F, L0, free, steep).tolist() == [False, False]


@pytest.mark.parametrize("body,criterion", [
    ("minimize 0.1 * norm1(x) - y @ x", lambda y: y.abs().amax(-1) > 0.1),
    ("minimize norm2(x) - y @ x", lambda y: y.norm(dim=-1) > 1),
    # unbounded along d = (u, u) iff some |y_i + y_(i+150)| > 0.4
    ("minimize sum_squares(x[0:150] - x[150:300]) - y @ x + 0.2 * norm1(x)",
     lambda y: (y[:, :150] + y[:, 150:]).abs().amax(-1) > 0.4),
], ids=["l1", "l2", "null space"])
def test_fista_certifies_unboundedness_too(body, criterion):
    """Above FP_NEWTON_MAX_SIZE unknowns a quadratic f runs FISTA, with the same test."""
    layer = ol.compile("dim n = 300\nparam y[n]\nvar x[n]\n" + body, on_failure="ignore")
    assert layer.program.forward_solver() == "first_order"
    y = torch.randn(6, 300, generator=torch.Generator().manual_seed(0), dtype=D) * \
        torch.tensor([0.001, 0.003, 0.05, 0.1, 1.0, 2.0], dtype=D)[:, None]
    layer(y=y)
    want = criterion(y)
    assert 0 < int(want.sum()) < 6
    expect = torch.where(want, int(Status.UNBOUNDED), 0).to(torch.int8)
    assert layer.info.status.tolist() == expect.tolist()
    assert layer.info.iterations <= 4 * defaults.FBN_UNBOUNDED_CHECK


def test_the_qp_path_certifies_a_ray_its_iterates_ran_off_along():
    """``solve_qp`` (method kkt): items that stop without converging also try the ray
    along the iterate itself; this LP's epigraph form was MAX_ITER on every item."""
    layer = ol.compile("dim n = 3\nparam y[n]\nvar x[n]\nminimize 0.1 * norm1(x) - y @ x",
                       method="kkt", on_failure="ignore")
    y = torch.tensor([[1.0, 2.0, 0.5], [0.05, -0.02, 0.0], [0.5, -2.0, 1.0]], dtype=D)
    layer(y=y)
    assert layer.info.status.tolist() == [int(Status.UNBOUNDED), 0, int(Status.UNBOUNDED)]
