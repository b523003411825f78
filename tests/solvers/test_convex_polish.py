"""The convex interior point's polish: Newton's method on the KKT equations of the active
set once the errors are small (optlayer.solvers.interior_point). The same solutions as
without it, in fewer interior point iterations; a wrong first guess of the set corrected;
off above the size cap and where asked."""

from pathlib import Path

import pytest
import torch

import optlayer as ol
from optlayer import defaults
from optlayer.layer import random_params
from optlayer.solvers import ConvexInteriorPoint
from optlayer.solvers import interior_point as ip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "problems"


def _solve(name, seed=0, batch=32):
    # (kkt: sqrt_lasso's default is prox_grad, its norm2 term smooth where it is nonzero)
    layer = ol.load(EXAMPLES / f"{name}.opt", method="kkt")
    out = layer(**random_params(layer.problem, batch=batch, seed=seed))
    return out, layer.info


def _spy(monkeypatch):
    calls = []
    real = ip.ConvexInteriorPoint._polish

    def polish(self, v, sizes, obj, rows, params_eq, tol, items):
        out = real(self, v, sizes, obj, rows, params_eq, tol, items)
        calls.append((int(items.sum()), int(((out[1] <= tol) & items).sum())))
        return out

    monkeypatch.setattr(ip.ConvexInteriorPoint, "_polish", polish)
    return calls


# interior point iterations at the benchmark's data (batch 32, seed 0), with / without
# the polish: sqrt_lasso 5 / 13, logsumexp_constrained 6 / 10, risk_portfolio 7 / 17
@pytest.mark.parametrize("name,most,least", [("sqrt_lasso", 6, 12),
                                             ("logsumexp_constrained", 7, 10),
                                             ("risk_portfolio", 8, 15)])
def test_same_solution_in_fewer_iterations(monkeypatch, name, most, least):
    x, info = _solve(name)
    assert info.status.tolist() == [0] * 32
    assert info.iterations <= most
    assert float(info.residual.max()) <= defaults.tol(torch.float64)
    monkeypatch.setattr(defaults, "CONVEX_POLISH_BELOW", 0.0)
    x0, info0 = _solve(name)
    assert info0.status.tolist() == [0] * 32
    assert info0.iterations >= least
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-7)


def test_a_wrong_active_set_is_corrected(monkeypatch):
    # sqrt_lasso, seed 0: some items have a weight near 0 whose two l1 rows are both
    # nearly active at the first polish; their set is guessed wrong. The correction after
    # two Newton steps fixes it and the whole batch finishes in that polish; without it
    # those items fail the check and the interior point goes on
    calls = _spy(monkeypatch)
    _, info = _solve("sqrt_lasso")
    assert info.status.tolist() == [0] * 32
    assert calls == [(32, 32)]
    calls.clear()
    monkeypatch.setattr(defaults, "CONVEX_POLISH_SWITCH", defaults.CONVEX_POLISH_NEWTON + 1)
    _, info = _solve("sqrt_lasso")
    assert info.status.tolist() == [0] * 32
    assert calls[0][0] == 32 and calls[0][1] < 32 and len(calls) > 1


def test_off_above_the_size_cap_and_at_zero(monkeypatch):
    calls = _spy(monkeypatch)
    monkeypatch.setattr(defaults, "CONVEX_POLISH_MAX_SIZE", 14)   # sqrt_lasso: 7 + 8 rows
    _, info = _solve("sqrt_lasso")
    assert info.status.tolist() == [0] * 32 and not calls
    monkeypatch.setattr(defaults, "CONVEX_POLISH_MAX_SIZE", 15)
    _solve("sqrt_lasso")
    assert calls
    calls.clear()
    f = lambda x, c: 0.5 * ((x - c) ** 2).sum(-1)            # noqa: E731
    g = lambda x, _p=None: (x * x).sum(-1, keepdim=True) - 1  # noqa: E731
    c = torch.tensor([[2.0, 0.0], [0.3, 0.1]], dtype=torch.float64)
    out = ConvexInteriorPoint(f, g, polish_below=0.0, on_failure="raise").run(
        torch.zeros(2, 2, dtype=torch.float64), c, None, None)
    assert not calls
    x = ConvexInteriorPoint(f, g, on_failure="raise").run(
        torch.zeros(2, 2, dtype=torch.float64), c, None, None).params[0]
    assert calls
    # the projection onto the unit ball, and the inside point itself
    want = torch.tensor([[1.0, 0.0], [0.3, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.params[0], want, rtol=0, atol=1e-9)


def test_polished_multipliers_are_exact_on_the_set():
    # min |x - c|^2 / 2 s.t. |x|^2 <= 1 for |c| = 2: x = c / 2, multiplier (|c| - 1) / 2
    # from x - c + 2 lam x = 0; inside (second item) the multiplier is exactly 0
    f = lambda x, c: 0.5 * ((x - c) ** 2).sum(-1)            # noqa: E731
    g = lambda x, _p=None: (x * x).sum(-1, keepdim=True) - 1  # noqa: E731
    c = torch.tensor([[2.0, 0.0], [0.3, 0.1]], dtype=torch.float64)
    x, _, lam = ConvexInteriorPoint(f, g, tol=1e-12, on_failure="raise").run(
        torch.zeros(2, 2, dtype=torch.float64), c, None, None).params
    assert lam[1, 0] == 0.0
    torch.testing.assert_close(lam[0, 0], torch.tensor(0.5, dtype=torch.float64), rtol=0,
                               atol=1e-12)


def test_polish_below_must_be_a_nonnegative_number():
    with pytest.raises(ValueError, match="polish_below"):
        ConvexInteriorPoint(lambda x: x.sum(-1), polish_below=-1.0)
