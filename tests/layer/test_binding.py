"""OptLayer: parameter binding errors, status / on_failure, options, API entry points."""

from __future__ import annotations

import warnings

import pytest
import torch

import optlayer as ol
from optlayer.status import OptimizationWarning, Status

D = torch.float64
SRC = """dim n = 3
param y[n]
param lam nonneg
var x[n]
minimize sum_squares(x - y) + lam * norm1(x)
"""


@pytest.fixture(scope="module")
def layer():
    return ol.compile(SRC)


def _y(*shape):
    return torch.linspace(-1, 1, 3, dtype=D).expand(*shape, 3).clone()


BAD = [
    ("missing", {"y": _y()}, "lam", "missing value for parameter 'lam'", None),
    ("extra", {"y": _y(), "lam": torch.tensor(1.0, dtype=D), "lamb": torch.tensor(1.0, dtype=D)},
     "lamb", "unknown parameter 'lamb'", None),
    ("shape", {"y": torch.zeros(4, dtype=D), "lam": torch.tensor(1.0, dtype=D)}, "y", "y", None),
    ("dtype", {"y": torch.zeros(3, dtype=torch.int64), "lam": torch.tensor(1.0, dtype=D)}, "y",
     "y", None),
    ("mixed_dtype", {"y": _y().float(), "lam": torch.tensor(1.0, dtype=D)}, "lam", "dtype",
     None),
    ("nan", {"y": torch.tensor([[0.0, 1, 2], [0, float("nan"), 1]], dtype=D),
             "lam": torch.tensor(1.0, dtype=D)}, "y", "y", (1,)),
    ("inf", {"y": _y(), "lam": torch.tensor(float("inf"), dtype=D)}, "lam", "lam", None),
    ("negative_nonneg", {"y": _y(2), "lam": torch.tensor([0.5, -0.5], dtype=D)}, "lam", "lam",
     (1,)),
    ("two_batch_dims", {"y": _y(2, 2), "lam": torch.tensor(1.0, dtype=D)}, "y",
     "leading batch dims", None),
    ("batch_mismatch", {"y": _y(2), "lam": torch.ones(3, dtype=D)}, "lam",
     "do not broadcast", None),
]


@pytest.mark.parametrize("values,param,match,index", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_binding_errors_name_the_parameter(layer, values, param, match, index):
    with pytest.raises(ol.BindingError, match=match) as info:
        layer(**values)
    assert info.value.parameter == param
    if index is not None:
        assert info.value.batch_index == index


PSD_SRC = """dim n = 2
param S[n, n] psd
param c[n] pos
var x[n]
minimize quad_form(x, S) + c @ x
"""
_S = torch.eye(2, dtype=D).expand(3, 2, 2).clone()
_C = torch.ones(3, 2, dtype=D)


def _with(t, idx, value):
    t = t.clone()
    t[idx] = value
    return t


PSD_BAD = [  # all checks of all parameters share one host sync; the first failure is raised
    ("nan_in_psd", {"S": _with(_S, (2, 0, 1), float("nan")), "c": _C}, "S", "non-finite",
     (2,)),
    ("not_symmetric", {"S": _with(_S, (1, 0, 1), 0.5), "c": _C}, "S", "symmetric", (1,)),
    ("indefinite", {"S": _with(_S, (0, 1, 1), -1.0), "c": _C}, "S", "negative eigenvalue",
     (0,)),
    ("second_param", {"S": _S, "c": _with(_C, (2, 1), 0.0)}, "c", "pos", (2,)),
    ("first_param_first", {"S": _with(_S, (1, 0, 0), float("inf")),
                           "c": _with(_C, (0, 0), -1.0)}, "S", "non-finite", (1,)),
]


@pytest.mark.parametrize("values,param,match,index", [b[1:] for b in PSD_BAD],
                         ids=[b[0] for b in PSD_BAD])
def test_value_checks_of_several_parameters(values, param, match, index):
    layer = ol.compile(PSD_SRC)
    with pytest.raises(ol.BindingError, match=match) as info:
        layer(**values)
    assert info.value.parameter == param and info.value.batch_index == index


def test_unbatched_params_broadcast_against_batched(layer):
    y = torch.tensor([[3.0, -0.2, 0.0], [-2.0, 0.5, 1.5]], dtype=D)
    x = layer(y=y, lam=torch.tensor(1.0, dtype=D))
    expected = torch.sign(y) * torch.clamp(y.abs() - 0.5, min=0)  # argmin |x-y|^2 + |x|_1
    torch.testing.assert_close(x, expected, atol=1e-9, rtol=0)
    assert layer.info.status.shape == (2,) and layer.info.status.dtype == torch.int8


def _hard_layer(on_failure):
    return ol.compile("dim n = 3\nparam A[n, n]\nparam b[n]\nvar x[n]\n"
                      "minimize sum_squares(A @ x - b)\nsubject to\n x >= 0\n x <= 0.4",
                      on_failure=on_failure, maxiter=2, method="proj_grad")


def _hard_params():
    A = torch.tensor([[1.0, 0.99, 0], [0.99, 1.0, 0.3], [0, 0.3, 0.01]], dtype=D)
    b = torch.stack([torch.tensor([1.0, 1.0, 1.0], dtype=D), torch.zeros(3, dtype=D)])
    return A, b


def test_on_failure_raise_names_status_and_index():
    A, b = _hard_params()
    with pytest.raises(ol.SolverError, match="MAX_ITER at batch index 0") as info:
        _hard_layer("raise")(A=A, b=b)
    assert info.value.indices == [0]


def test_on_failure_warn():
    A, b = _hard_params()
    with pytest.warns(OptimizationWarning, match="MAX_ITER"):
        _hard_layer("warn")(A=A, b=b)


def test_on_failure_mask_gives_nan_rows_and_zero_gradient():
    A, b = _hard_params()
    b = b.clone().requires_grad_(True)
    layer = _hard_layer("mask")
    x = layer(A=A, b=b)
    assert layer.info.status.tolist() == [int(Status.MAX_ITER), int(Status.OPTIMAL)]
    assert torch.isnan(x[0]).all() and torch.isfinite(x[1]).all()
    (g,) = torch.autograd.grad(x[1].sum(), b)
    assert torch.equal(g[0], torch.zeros(3, dtype=D))


def test_on_failure_ignore_returns_the_iterate_and_status():
    A, b = _hard_params()
    layer = _hard_layer("ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = layer(A=A, b=b)
    assert torch.isfinite(x).all()
    assert int(layer.info.status[0]) == int(Status.MAX_ITER)


def test_warm_start_reduces_iterations():
    layer = ol.compile("dim n = 4\nparam A[n, n]\nparam b[n]\nvar x[n]\n"
                       "minimize sum_squares(A @ x - b)\nsubject to\n x >= 0",
                       method="proj_grad")   # (kkt warm-starts on its active set: below)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=D) + 2 * torch.eye(4, dtype=D)
    b = torch.randn(4, generator=g, dtype=D)
    x = layer(A=A, b=b)
    cold = layer.info.iterations
    x2 = layer(A=A, b=b, warm_start=x)
    assert layer.info.iterations < cold
    torch.testing.assert_close(x2, x, atol=1e-8, rtol=0)


def test_a_kkt_layer_warm_starts_on_the_previous_active_set():
    # lad_regression (the QP path): the second call, on data moved a little, finishes
    # every item at the previous call's active set; the same solution and gradients as a
    # layer that starts cold
    from optlayer.layer import random_params

    warm = ol.load("examples/problems/lad_regression.opt", warm_start=True)
    cold = ol.load("examples/problems/lad_regression.opt")
    assert warm.method == "kkt"
    vals = random_params(warm.problem, batch=16, seed=0)
    warm(**vals)
    assert warm.info.iterations > 0
    g = torch.Generator().manual_seed(1)
    moved = {k: (v + 1e-4 * torch.randn(v.shape, generator=g, dtype=D)).requires_grad_(True)
             for k, v in vals.items()}
    outs = []
    for layer in (warm, cold):
        w = layer(**moved)
        (w * torch.tensor([1.0, -2.0, 0.5], dtype=D)).sum().backward()
        outs.append((w.detach(), [moved[k].grad.clone() for k in sorted(moved)]))
        for v in moved.values():
            v.grad = None
    assert warm.info.iterations == 0 and cold.info.iterations > 0
    assert (warm.info.status == int(Status.OPTIMAL)).all()
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-9)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_several_variables_return_a_namedtuple():
    layer = ol.load("examples/problems/group_lasso.opt")
    from optlayer.layer import random_params

    out = layer(**random_params(layer.problem))
    assert out._fields == ("a", "b")


def test_problem_layer_factory_and_python_api():
    x = ol.Variable(3, name="x")
    y = ol.Parameter(3, name="y")
    prob = ol.Problem(ol.minimize(ol.sum_squares(x - y)), [ol.sum(x) == 1, x >= 0])
    layer = prob.layer()
    assert isinstance(layer, ol.OptLayer) and layer.method == "projection"
    out = layer(y=torch.tensor([0.2, 0.4, -1.0], dtype=D))
    torch.testing.assert_close(out, torch.tensor([0.4, 0.6, 0.0], dtype=D), atol=1e-12, rtol=0)


def test_unknown_option_and_solver():
    with pytest.raises(ol.OptTypeError, match="unknown solver"):
        ol.compile(SRC, solver="ecos")
    with pytest.raises(ValueError, match="on_failure"):
        ol.compile(SRC, on_failure="explode")


def test_load_missing_file():
    with pytest.raises(ol.OptTypeError, match="cannot read"):
        ol.load("does/not/exist.opt")


def test_dims_rebuild_at_any_size():
    layer = ol.compile(SRC, dims={"n": 7})
    assert layer(y=torch.zeros(7, dtype=D), lam=torch.tensor(1.0, dtype=D)).shape == (7,)
