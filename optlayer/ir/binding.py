"""Binding data to a model: parameter values checked against their declarations.

:meth:`optlayer.ir.nodes.Leaf.check_value` and
:meth:`optlayer.ir.problem.Problem.check_params` delegate here. Checks run
once per call, outside any solver loop. ``check_params`` fuses the value checks
of all parameters into one flag (one host synchronisation); only when it fails
do the detailed checks run, in declaration order, to name the parameter, the
batch index and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optlayer.errors import BindingError
from optlayer.ir.shapes import format_shape

__all__ = ["check_value", "check_params"]


def check_value(leaf, value, *, tol: float | None = None) -> torch.Tensor:
    """Check ``value`` for ``leaf``; see :meth:`~optlayer.ir.nodes.Leaf.check_value`."""
    _check_values(leaf, _checked_tensor(leaf, value), tol)
    return value


def _checked_tensor(leaf, value) -> torch.Tensor:
    """The value as a floating tensor of the leaf's shape (structure errors raise)."""
    if not isinstance(value, torch.Tensor):
        raise BindingError(f"{leaf.kind} {leaf.name} must be a torch.Tensor, got "
                           f"{type(value).__name__}", parameter=leaf.name)
    t = leaf._eval((), {leaf.name: value}, None)
    if not t.is_floating_point():
        raise BindingError(f"{leaf.kind} {leaf.name} must be a floating-point tensor, "
                           f"got {t.dtype}", parameter=leaf.name,
                           hint="convert it with .double() or .float()")
    return t


def _values_ok(leaf, t: torch.Tensor, tol) -> torch.Tensor:
    """One 0-dim bool: every value check of :func:`_check_values` passes (the fast path
    of :func:`check_params`: a few fused ops per parameter, no host sync)."""
    ok = torch.isfinite(t)
    if "pos" in leaf.attrs:
        ok = ok & (t > 0)
    if "nonneg" in leaf.attrs:
        ok = ok & (t >= 0)
    if "nonpos" in leaf.attrs:
        ok = ok & (t <= 0)
    ok = ok.all()
    if {"symmetric", "psd"} & set(leaf.attrs):
        from optlayer.defaults import tol as default_tol

        rtol = default_tol(t.dtype) ** 0.5 if tol is None else tol
        tf = torch.where(torch.isfinite(t), t, 0.0)  # no eigenvalues of a non-finite matrix
        scale = 1 + tf.abs().amax(dim=(-2, -1))
        ok = ok & ((tf - tf.transpose(-1, -2)).abs().amax(dim=(-2, -1)) <= rtol * scale).all()
        if "psd" in leaf.attrs:
            low = torch.linalg.eigvalsh(0.5 * (tf + tf.transpose(-1, -2)))[..., 0]
            ok = ok & (low >= -rtol * scale).all()
    return ok


def _check_values(leaf, t: torch.Tensor, tol) -> None:
    """The value checks (finite, signs, symmetric, psd), each raising a BindingError that
    names the parameter and the first failing batch index."""
    k = len(leaf.shape)

    def fail(bad: torch.Tensor, what: str, hint: str | None = None):
        flat = bad.reshape(-1) if bad.ndim else bad.reshape(1)
        if bool(flat.any()):
            idx = int(torch.nonzero(flat)[0])
            batch = t.shape[: t.ndim - k]
            at = None
            if len(batch):
                at = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), batch))
            where = f" at batch index {at}" if at is not None else ""
            raise BindingError(f"{leaf.kind} {leaf.name} {what}{where}",
                               parameter=leaf.name, batch_index=at, hint=hint)

    def per_item(mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(mask.shape[: mask.ndim - k] + (-1,)).any(-1) if k else mask

    fail(per_item(~torch.isfinite(t)), "has non-finite entries")
    if "pos" in leaf.attrs:
        fail(per_item(t <= 0), "is declared pos but has entries <= 0")
    if "nonneg" in leaf.attrs:
        fail(per_item(t < 0), "is declared nonneg but has negative entries")
    if "nonpos" in leaf.attrs:
        fail(per_item(t > 0), "is declared nonpos but has positive entries")
    if {"symmetric", "psd"} & set(leaf.attrs):
        from optlayer.defaults import tol as default_tol

        rtol = default_tol(t.dtype) ** 0.5 if tol is None else tol
        scale = 1 + t.abs().amax(dim=(-2, -1))
        asym = (t - t.transpose(-1, -2)).abs().amax(dim=(-2, -1))
        fail(asym > rtol * scale, "is declared symmetric but is not",
             hint="symmetrize it: 0.5 * (A + A.mT)")
        if "psd" in leaf.attrs:
            low = torch.linalg.eigvalsh(0.5 * (t + t.transpose(-1, -2)))[..., 0]
            fail(low < -rtol * scale, "is declared psd but has a negative eigenvalue",
                 hint="pass L @ L.mT, or declare the matrix without psd")


def check_params(problem, values: Mapping[str, object], *, tol: float | None = None) -> dict:
    """Check all parameter values of ``problem``; see
    :meth:`~optlayer.ir.problem.Problem.check_params`."""
    from optlayer.ir.build import did_you_mean

    for name in values:
        if name not in problem.params:
            raise BindingError(f"unknown parameter {name!r}", parameter=name,
                               hint=did_you_mean(name, problem.params) or
                               f"parameters are: {', '.join(problem.params) or 'none'}")
    out = {}
    first = None
    tensors, flags = [], []
    for name, leaf in problem.params.items():
        if name not in values:
            raise BindingError(f"missing value for parameter {name!r}", parameter=name,
                               hint=f"pass {name}=<a tensor of shape "
                                    f"{format_shape(leaf.shape)}>" if leaf.shape
                               else f"pass {name}=<a scalar tensor>")
        t = _checked_tensor(leaf, values[name])
        tensors.append((leaf, t))
        flags.append(_values_ok(leaf, t, tol))
        t = values[name]
        if first is None:
            first = (name, t)
        elif t.dtype != first[1].dtype or t.device != first[1].device:
            raise BindingError(
                f"parameter {name!r} is {t.dtype} on {t.device} but {first[0]!r} is "
                f"{first[1].dtype} on {first[1].device}", parameter=name,
                hint="give all parameters one dtype and device")
        out[name] = t
    # all value checks of all parameters: one host synchronisation; on a failure the
    # detailed checks run in declaration order and raise the first error
    if flags and not bool(torch.stack(flags).all()):
        for leaf, t in tensors:
            _check_values(leaf, t, tol)
    _check_batch_dims(problem, out)
    return out


def _check_batch_dims(problem, values: Mapping[str, torch.Tensor]) -> None:
    """Leading (batch) dims of all parameters must broadcast against each other."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    for name, t in values.items():
        k = len(problem.params[name].shape)
        batch = tuple(t.shape[: t.ndim - k])
        for other, ob in seen:
            if batch == ob or not batch or not ob:   # (broadcast_shapes: ~40 us of Python)
                continue
            try:
                torch.broadcast_shapes(batch, ob)
            except RuntimeError:
                raise BindingError(
                    f"parameter {name!r} has batch dims {list(batch)} but {other!r} has "
                    f"{list(ob)}; they do not broadcast", parameter=name,
                    hint="give every batched parameter the same leading dims (or none)",
                ) from None
        seen.append((name, batch))
