"""QP data affine in the parameters as one matrix product (``compiler.param_affine``):
which expressions are affine in their parameters, the same data and parameter gradients
as the general path (coefficients or read-off) for every shipped QP example it covers,
data that no parameter moves kept out of the graph, the size cap, and layers that solve
and differentiate the same either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.compiler import canonicalize_qp, expand_params
from optlayer.compiler.param_affine import param_degree
from optlayer.layer import random_params

D = torch.float64
EXAMPLES = sorted(p.stem for p in Path("examples/problems").glob("*.opt"))
AFFINE = ["lad_regression", "lp", "maximin", "minimax_fit", "quantile_regression"]


def _qp(name, **kw):
    return ol.load(f"examples/problems/{name}.opt", **kw)


def _affine(layer):
    canonicalize_qp(layer.program, *_params(layer, 1)[:2], D, "cpu")
    return layer.program.derived["param_affine"]


def _params(layer, batch, seed=0, grad=False):
    vals = random_params(layer.problem, batch=batch, seed=seed)
    return expand_params(layer.problem, {k: v.requires_grad_(grad) for k, v in vals.items()})


def test_degree_in_the_parameters():
    x = ol.Variable(3, name="x")
    A = ol.Parameter((4, 3), name="A")
    t = ol.Parameter(4, name="t")
    c = ol.Parameter(name="c", pos=True)
    assert param_degree(ol.sum_squares(x)) == 0
    assert param_degree(A @ x - t) == 1
    assert param_degree(0.2 * c - ol.sum(x)) == 1
    assert param_degree(c * (A @ x)) == 2          # bilinear in the parameters
    assert param_degree(ol.sum_squares(A @ x)) == 2
    assert param_degree(x / c) is None             # division by a parameter
    assert param_degree(ol.sqrt(c) * ol.sum(x)) is None


def test_which_examples_are_affine():
    found = []
    for name in EXAMPLES:
        layer = _qp(name)
        if layer.method == "kkt" and layer.plan.solver == "qp" and _affine(layer).affine:
            found.append(name)
    assert found == AFFINE
    assert not _affine(_qp("nnls")).affine         # Q = 2 A'A: quadratic in A


@pytest.mark.parametrize("name", AFFINE)
def test_same_data_and_parameter_gradients_as_the_general_path(name, monkeypatch):
    layer = _qp(name)
    P, B, _ = _params(layer, 3, seed=4, grad=True)
    ours = canonicalize_qp(layer.program, P, B, D, "cpu")
    assert layer.program.derived["param_affine"].ok
    monkeypatch.setattr(defaults, "PARAM_AFFINE_MAX_ENTRIES", 0)
    ref = canonicalize_qp(layer.program, P, B, D, "cpu")
    assert ours[6:] == ref[6:]
    pairs = [(u, v) for u, v in zip(ours[:6], ref[:6], strict=True) if v is not None]
    assert [u is None for u in ours[:6]] == [v is None for v in ref[:6]]
    for u, v in pairs:
        torch.testing.assert_close(u, v, rtol=0, atol=1e-14)
        assert v.requires_grad or not u.requires_grad   # (data no parameter moves: none)
    ws = [torch.linspace(-1, 1, v.numel(), dtype=D).reshape(v.shape) for _, v in pairs]
    gu = torch.autograd.grad(sum((w * u).sum() for w, (u, _) in zip(ws, pairs, strict=True)),
                             list(P.values()), allow_unused=True, materialize_grads=True)
    gv = torch.autograd.grad(sum((w * v).sum() for w, (_, v) in zip(ws, pairs, strict=True)),
                             list(P.values()), allow_unused=True, materialize_grads=True)
    for a, b in zip(gu, gv, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_only_the_moving_entries_are_computed():
    layer = _qp("lad_regression")        # G = [[X, -I], [-X, -I]], h = [t; -t]; Q, p fixed
    f = next(iter(_affine(layer)._maps.values()))
    assert isinstance(f.blocks[0], torch.Tensor) and isinstance(f.blocks[1], torch.Tensor)
    assert f.blocks[2] == (20, 13) and f.blocks[3] == (20,)
    assert f.cols.numel() == 2 * 30 + 20 and f.M.shape == (30 + 10, 80)


def test_the_size_cap(monkeypatch):
    layer = _qp("lp")
    affine = _affine(layer)
    monkeypatch.setattr(defaults, "PARAM_AFFINE_MAX_ENTRIES", affine.entries - 1)
    assert affine.affine and not affine.ok
    monkeypatch.setattr(defaults, "PARAM_AFFINE_MAX_ENTRIES", affine.entries)
    assert affine.ok


@pytest.mark.parametrize("name", AFFINE)
def test_layers_solve_and_differentiate_the_same(name, monkeypatch):
    vals = random_params(_qp(name).problem, batch=4, seed=5)

    def run():
        layer = _qp(name, tol=1e-12)
        ins = {k: v.clone().requires_grad_(True) for k, v in vals.items()}
        out = layer(**ins)
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        w = [torch.linspace(-1, 2, o.numel(), dtype=D).reshape(o.shape) for o in outs]
        grads = torch.autograd.grad(sum((a * o).sum() for a, o in zip(w, outs, strict=True)),
                                    list(ins.values()))
        return outs, grads

    ours = run()
    monkeypatch.setattr(defaults, "PARAM_AFFINE_MAX_ENTRIES", 0)
    ref = run()
    for a, b in zip([*ours[0], *ours[1]], [*ref[0], *ref[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_float32_reads_its_own_map():
    layer = _qp("lp")
    vals = random_params(layer.problem, batch=2, seed=6)
    out64 = layer(**vals)
    out32 = layer(**{k: v.float() for k, v in vals.items()})
    assert out32.dtype == torch.float32
    assert len(layer.program.derived["param_affine"]._maps) == 2
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-4)


def test_data_no_parameter_moves():
    # c appears nowhere: every datum is fixed, none in the graph, and the solve is the same
    layer = ol.compile("param c\nvar x[2]\nminimize sum_squares(x) + sum(x)\nsubject to\n"
                       "    x >= 0\n    x <= 1", method="kkt")
    c = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    P, B, _ = expand_params(layer.problem, {"c": c})
    data = canonicalize_qp(layer.program, P, B, D, "cpu")
    assert layer.program.derived["param_affine"].ok
    assert all(t is None or not t.requires_grad for t in data[:6])
    torch.testing.assert_close(layer(c=c.detach()), torch.zeros(2, 2, dtype=D),
                               rtol=0, atol=1e-12)
