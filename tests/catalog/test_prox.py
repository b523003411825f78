"""Prox catalog: prox(x, hyper, scaling) = argmin_z 0.5 ||z - x||^2 + scaling * g(z)."""

import numpy as np
import pytest
import torch
from catalog_cases import PROXES, Entry
from hypothesis import given, settings
from hypothesis import strategies as st

from optlayer import projections, prox

IDS = [e.name for e in PROXES]


def inputs(entry: Entry, batch=(2,), dtype=torch.float64, seed=0):
    return entry.make(torch.Generator().manual_seed(seed), batch, dtype)


@pytest.mark.parametrize("entry", PROXES, ids=IDS)
def test_matches_reference(entry):
    args = inputs(entry)
    out = entry.fn(*args)
    for i in range(2):
        ref = entry.reference(*[a[i].numpy() for a in args])
        np.testing.assert_allclose(out[i].numpy(), ref, atol=entry.ref_tol, rtol=0)


@pytest.mark.parametrize("entry", PROXES, ids=IDS)
def test_gradcheck(entry):
    args = [a.clone() for a in inputs(entry, seed=1)]
    for i in entry.grad_args:
        args[i].requires_grad_(True)

    def f(*diff):
        full = list(args)
        for i, d in zip(entry.grad_args, diff, strict=True):
            full[i] = d
        return entry.fn(*full)

    assert torch.autograd.gradcheck(f, [args[i] for i in entry.grad_args])


@pytest.mark.parametrize("entry", PROXES, ids=IDS)
def test_batched_equals_unbatched_and_vmap(entry):
    args = inputs(entry, batch=(3,), seed=2)
    out = entry.fn(*args)
    mapped = torch.func.vmap(entry.fn)(*args)
    for i in range(3):
        one = entry.fn(*[a[i] for a in args])
        torch.testing.assert_close(out[i], one, atol=1e-14, rtol=0)
        torch.testing.assert_close(mapped[i], one, atol=1e-14, rtol=0)


@pytest.mark.parametrize("entry", PROXES, ids=IDS)
def test_float32(entry):
    args = inputs(entry, seed=3)
    out32 = entry.fn(*[a.float() for a in args])
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), entry.fn(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entry", [e for e in PROXES if e.g], ids=lambda e: e.name)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_optimality(entry, seed):
    """0 in z - x + scaling * dg(z): for convex g, z minimises the prox objective,
    so no perturbed point w does better (checked on random nearby points)."""
    args = inputs(entry, seed=seed)
    x, *hyper, scaling = args
    z = entry.fn(*args)

    def objective(w):
        return 0.5 * ((w - x) ** 2).sum(-1) + scaling * entry.g(w, *hyper)

    best = objective(z)
    assert torch.isfinite(best).all()
    gen = torch.Generator().manual_seed(seed)
    for radius in (1e-1, 1e-3):
        for _ in range(20):
            w = z + radius * torch.randn(z.shape, generator=gen, dtype=z.dtype)
            assert bool((objective(w) >= best - 1e-12).all())


@pytest.mark.parametrize("entry", [e for e in PROXES if e.conj_prox], ids=lambda e: e.name)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_moreau_identity(entry, seed):
    """x = prox_{s g}(x) + s * prox_{g*/s}(x / s)."""
    x, hyper, scaling = inputs(entry, seed=seed)
    s = scaling.unsqueeze(-1)
    z = entry.fn(x, hyper, scaling)
    dual = entry.conj_prox(x / s, 1 / scaling, hyper)
    torch.testing.assert_close(z + s * dual, x, atol=1e-12, rtol=0)


def test_finite_gradient_at_zero_group():
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    prox.group_lasso(x, 1.0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_from_projection_ignores_scaling():
    p = prox.from_projection(projections.l2_ball)
    x = torch.tensor([3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(p(x, 1.0, 7.0), torch.tensor([0.6, 0.8], dtype=torch.float64))
    torch.testing.assert_close(prox.from_projection(projections.nonneg)(-x), torch.zeros(2,
                               dtype=torch.float64))


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: prox.from_projection(3), TypeError),
        (lambda: prox.group_lasso(torch.ones(3), 1.0, groups=torch.tensor([0, 1])), ValueError),
    ],
    ids=["not-callable", "groups-shape"],
)
def test_bad_input(call, error):
    with pytest.raises(error):
        call()
