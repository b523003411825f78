"""Newton on the normal map (``iterate.normal_newton_solve``): the forward of ``proj_grad`` /
``prox_grad`` for a strictly convex quadratic ``f`` with a curved set or prox, and for an
``f`` with a closed-form model. The same points as forward-backward Newton / FISTA, in
few iterations; where it does not apply at a call, those solvers run instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optlayer as ol
from optlayer.compiler import iterate
from optlayer.layer import random_params
from optlayer.status import Status

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "problems"
D = torch.float64


def _spy(monkeypatch, name) -> list:
    """A list that gets an entry at each call of ``iterate.<name>``."""
    calls, real = [], getattr(iterate, name)

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(iterate, name, spy)
    return calls


def _setup(layer, batch, seed):
    P = random_params(layer.problem, batch=batch, seed=seed)
    prog = layer.program
    z0 = prog.init(P, batch, D, torch.device("cpu"))
    return prog, P, z0, prog.quad(P)


@pytest.mark.parametrize("name,most", [("group_lasso", 10), ("psd_trace", 4)])
def test_a_curved_prox_with_a_quadratic_f(name, most):
    layer = ol.load(EXAMPLES / f"{name}.opt")
    prog = layer.program
    assert prog.quadratic and not prog.polyhedral
    assert prog.forward_solver() == "normal_newton"
    for seed in range(3):
        prog, P, z0, qp = _setup(layer, 32, seed)
        with torch.no_grad():
            got = iterate.normal_newton_solve(prog, P, z0, 1e-12, 500, None,
                                              prog.prox_jacobian_fn(P), qp)
            ref = iterate.fbn_solve(prog, P, z0, 1e-12, 500, qp)
        assert got.status.tolist() == [0] * 32 and got.exact
        # (forward-backward Newton: 6-10 on group_lasso, 3 on psd_trace)
        assert got.iterations <= most
        torch.testing.assert_close(got.z, ref.z, rtol=0, atol=1e-9)


def test_polyhedral_problems_keep_forward_backward_newton():
    for name in ("lasso", "elastic_net", "constrained_ls"):
        assert ol.load(EXAMPLES / f"{name}.opt").program.forward_solver() == "fbn"


def test_a_singular_q_goes_to_forward_backward_newton(monkeypatch):
    # f linear: no curvature to take a step from, and items without a minimiser
    layer = ol.compile("dim n = 4\nparam y[n]\nvar x[n]\nminimize norm2(x) - y @ x",
                       on_failure="ignore")
    assert layer.program.forward_solver() == "normal_newton"
    calls = _spy(monkeypatch, "fbn_solve")
    y = torch.tensor([[0.5, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], dtype=D)
    x = layer(y=y)
    assert calls and layer.info.status.tolist() == [0, int(Status.UNBOUNDED)]
    assert bool((x[0] == 0).all())


def test_a_start_where_f_has_no_curvature_goes_to_fista(monkeypatch):
    layer = ol.compile("dim n = 3\nparam c[n]\nvar x[n]\n"
                       "minimize sum(softplus(x - c))\nsubject to\n  x >= -1\n  x <= 1")
    assert layer.program.forward_solver() == "normal_newton"
    calls = _spy(monkeypatch, "prox_grad_solve")
    x0 = layer(c=torch.tensor([[0.1, 0.2, -0.3]], dtype=D))
    assert not calls and layer.info.status.tolist() == [0]
    # softplus far in its flat part at the start (c = 1e3): its curvature there is ~0
    x = layer(c=torch.tensor([[0.1, 0.2, -0.3], [1e3, 1e3, 1e3]], dtype=D))
    assert calls and layer.info.status.tolist() == [0, 0]
    torch.testing.assert_close(x[:1], x0, rtol=0, atol=1e-8)
