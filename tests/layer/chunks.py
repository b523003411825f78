"""Test helper: a layer's solutions and gradients are the same with its read-offs in
chunks of one point (``defaults.READOFF_MAX_ELEMENTS = 1``) as in one evaluation, or
with another setting of ``defaults`` as with the default."""

from __future__ import annotations

import torch

from optlayer import defaults


def _solution_and_gradients(layer, vals):
    ins = {k: v.clone().requires_grad_(True) for k, v in vals.items()}
    out = layer(**ins)
    assert bool((layer.info.status == 0).all())
    x = out if isinstance(out, torch.Tensor) else torch.cat([o.flatten(1) for o in out], 1)
    w = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    grads = torch.autograd.grad((w * x).sum(), list(ins.values()))
    return x.detach(), grads


def assert_same_in_chunks(make, vals, monkeypatch):
    """``make()`` builds the layer (each run builds its own: no cached read-off)."""
    assert_same_with(make, vals, monkeypatch, "READOFF_MAX_ELEMENTS", 1)  # a point a chunk


def assert_same_with(make, vals, monkeypatch, setting, value):
    """The same solutions and gradients with ``defaults.<setting> = value`` as before."""
    x0, g0 = _solution_and_gradients(make(), vals)
    monkeypatch.setattr(defaults, setting, value)
    x1, g1 = _solution_and_gradients(make(), vals)
    torch.testing.assert_close(x1, x0, rtol=0, atol=1e-10)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
