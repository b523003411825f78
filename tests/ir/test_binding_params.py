"""Problem.check_params: unknown, missing, mismatched and batched parameter values."""

from __future__ import annotations

import pytest
import torch

import optlayer as ol
from optlayer.errors import BindingError

F64 = torch.float64


def _problem():
    x = ol.Variable(3, name="x")
    y = ol.Parameter(3, name="y")
    lam = ol.Parameter(name="lam", nonneg=True)
    return ol.Problem(ol.minimize(ol.sum_squares(x - y) + lam * ol.norm1(x)))


@pytest.mark.parametrize(
    ("values", "words", "who"),
    [({"y": torch.zeros(3, dtype=F64)}, "missing value for parameter 'lam'", "lam"),
     ({"y": torch.zeros(3, dtype=F64), "lam": torch.tensor(1.0, dtype=F64),
       "lamb": torch.tensor(1.0, dtype=F64)}, "unknown parameter 'lamb'", "lamb"),
     ({"y": torch.zeros(3, dtype=F64), "lam": torch.tensor(-1.0, dtype=F64)},
      "declared nonneg", "lam"),
     ({"y": torch.zeros(3, dtype=F64), "lam": torch.tensor(1.0)}, "float32", "lam"),
     ({"y": torch.zeros(4, 3, dtype=F64), "lam": torch.ones(5, dtype=F64)},
      "batch dims [5] but 'y' has [4]", "lam")],
    ids=["missing", "unknown", "attribute", "dtype", "batch-clash"],
)
def test_check_params_errors_name_the_parameter(values, words, who):
    with pytest.raises(BindingError) as info:
        _problem().check_params(values)
    assert words in str(info.value) and info.value.parameter == who


def test_unknown_parameter_gets_did_you_mean():
    with pytest.raises(BindingError) as info:
        _problem().check_params({"lamb": torch.tensor(1.0, dtype=F64)})
    assert "did you mean 'lam'" in info.value.hint


def test_batched_and_unbatched_parameters_broadcast():
    out = _problem().check_params({"y": torch.zeros(4, 3, dtype=F64),
                                   "lam": torch.ones(4, dtype=F64)})
    assert set(out) == {"y", "lam"}
    out = _problem().check_params({"y": torch.zeros(4, 3, dtype=F64),
                                   "lam": torch.tensor(0.5, dtype=F64)})
    assert out["lam"].shape == ()
