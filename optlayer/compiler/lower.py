"""Torch lowering: IR -> batched torch functions of (z, params).

All variables of a problem are packed into one flat vector ``z`` of shape
``(B, N)`` (``N`` = total number of entries, in declaration order); every
function here takes ``z`` and a dict of parameter tensors already expanded to
batch ``B``, and evaluates IR nodes with :meth:`optlayer.ir.Expr.evaluate`
(one cache per call, so a ``let`` used by several terms is computed once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from optlayer.errors import BindingError

__all__ = ["Layout", "Tape", "expand_params", "eval_scalar", "eval_like"]


class Layout:
    """Flat packing of a problem's variables.

    Args:
        variables: the problem's ``Variable`` nodes (concrete shapes).

    Example:
        >>> import optlayer.ir as ir
        >>> lay = Layout([ir.Variable(2, name="a"), ir.Variable(name="b")])
        >>> lay.size, lay.slices["b"]
        (3, slice(2, 3, None))
    """

    def __init__(self, variables) -> None:
        self.names = [v.name for v in variables]
        self.shapes = {}
        self.slices = {}
        start = 0
        for v in variables:
            shape = tuple(int(d) for d in v.shape)
            size = math.prod(shape)
            self.shapes[v.name] = shape
            self.slices[v.name] = slice(start, start + size)
            start += size
        self.size = start

    def unpack(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z (B, N)`` -> ``{name: (B, *shape)}``."""
        B = z.shape[0]
        return {n: z[:, self.slices[n]].reshape(B, *self.shapes[n]) for n in self.names}

    def pack(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (B, *shape)}`` -> ``z (B, N)``."""
        return torch.cat([parts[n].reshape(parts[n].shape[0], -1) for n in self.names], dim=-1)


def expand_params(problem, values: Mapping[str, torch.Tensor]) -> tuple[dict, int, bool]:
    """Broadcast checked parameter values to one leading batch dim.

    Args:
        problem: the bound IR problem.
        values: checked tensors (``Problem.check_params``), each of shape
            ``shape`` or ``(B, *shape)``.

    Returns:
        ``(expanded, B, batched)``: every value of shape ``(B, *shape)``;
        ``batched`` is False when no value had a batch dim (``B = 1``).

    Raises:
        BindingError: more than one batch dim, or batch sizes that differ.
    """
    B, who = None, None
    for name, t in values.items():
        nd = len(problem.params[name].shape)
        extra = t.dim() - nd
        if extra > 1:
            raise BindingError(
                f"parameter {name!r} has {extra} leading batch dims (shape {tuple(t.shape)})",
                parameter=name, hint="use one leading batch dim (reshape to (B, ...))")
        if extra == 1:
            if B is not None and t.shape[0] != B and t.shape[0] != 1 and B != 1:
                raise BindingError(
                    f"parameter {name!r} has batch size {t.shape[0]} but {who!r} has {B}",
                    parameter=name, hint="give every batched parameter the same batch size")
            if B is None or B == 1:
                B, who = t.shape[0], name
    batched = B is not None
    B = B or 1
    out = {}
    for name, t in values.items():
        shape = tuple(int(d) for d in problem.params[name].shape)
        if t.dim() == len(shape):
            t = t.unsqueeze(0)
        out[name] = t.expand(B, *shape)
    return out, B, batched


def eval_scalar(expr, env, cache, B: int) -> torch.Tensor:
    """Evaluate a scalar expression as a ``(B,)`` tensor (``cache``: ids -> values)."""
    r = cache[id(expr)] if id(expr) in cache else expr.evaluate(env, cache)
    return r.reshape(-1).expand(B) if r.numel() in (1, B) and r.dim() <= 1 else r.reshape(B)


def eval_like(expr, env, cache, B: int, shape: tuple) -> torch.Tensor:
    """Evaluate a variable-free expression broadcast to ``(B, *shape)``."""
    r = cache[id(expr)] if id(expr) in cache else expr.evaluate(env, cache)
    eshape = tuple(int(d) for d in expr.shape)
    if r.dim() == len(eshape):
        r = r.unsqueeze(0)
    r = r.reshape(r.shape[0], *eshape)
    r = r.reshape(r.shape[0], *([1] * (len(shape) - len(eshape))), *eshape)
    return r.expand(B, *shape)


class Tape:
    """Expressions lowered once to a flat evaluation order (the IR walk is done here,
    not per call); shared nodes and lets are computed once per :meth:`run`.

    Args:
        roots: the expressions to evaluate.

    Example:
        >>> import torch, optlayer.ir as ir
        >>> x = ir.Variable(2, name="x")
        >>> tape = Tape([ir.apply("sum_squares", [x])])
        >>> vals = tape.run({"x": torch.tensor([[3.0, 4.0]])})
        >>> vals[id(tape.roots[0])]
        tensor([25.])
    """

    def __init__(self, roots) -> None:
        from optlayer.ir import Apply, Constant, Leaf, Let, postorder

        self.roots = list(roots)
        order, seen = [], set()
        for r in self.roots:
            for node in postorder(r):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if isinstance(node, Leaf):
                    order.append((0, id(node), node.name, None))
                elif isinstance(node, Constant):
                    order.append((1, id(node), node, None))
                elif isinstance(node, Let):
                    order.append((2, id(node), id(node.args[0]), None))
                elif isinstance(node, Apply):
                    order.append((3, id(node), node.atom.impl,
                                  ([id(a) for a in node.args], [a.ndim for a in node.args],
                                   node.static)))
                else:  # pragma: no cover - the IR has no other node kinds
                    raise TypeError(f"cannot lower {type(node).__name__}")
        self.order = order
        self._consts: dict = {}

    def run(self, env: Mapping[str, torch.Tensor]) -> dict:
        """Evaluate every node; returns ``{id(node): tensor}``."""
        like = next(iter(env.values()))
        out: dict = {}
        for kind, key, a, b in self.order:
            if kind == 0:
                out[key] = env[a]
            elif kind == 3:
                ids, ndims, static = b
                out[key] = a([out[i] for i in ids], ndims, static)
            elif kind == 2:
                out[key] = out[a]
            else:
                ck = (key, like.dtype, like.device)
                c = self._consts.get(ck)
                if c is None:   # an ordinary tensor even when first made in inference mode
                    with torch.inference_mode(False):
                        c = self._consts[ck] = a._eval([], env, like)
                out[key] = c
        return out
