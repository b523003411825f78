"""Small pytree helpers: nested tuples, lists, dicts and namedtuples of tensors.

A *pytree* here is a tensor, or a tuple / list / dict / namedtuple whose
entries are pytrees; anything else (floats, ints, ``None``, callables, strings)
is a *leaf* too, carried along unchanged. The helpers are deliberately small:
:func:`flatten` and :func:`unflatten` split a tree into its leaves and a
:class:`TreeDef` that rebuilds it, :func:`tree_map` maps a function over
matching leaves, and the vector-space helpers (:func:`tree_add`,
:func:`tree_sub`, :func:`tree_scale`, :func:`tree_vdot`, :func:`tree_zeros_like`)
treat a tree of tensors as one vector.

Dict keys are visited in sorted order (when sortable) so two dicts with the
same keys always flatten the same way, whatever their insertion order.

Example:
    >>> import torch
    >>> from optlayer import tree
    >>> leaves, td = tree.flatten({"b": torch.ones(2), "a": (1.0, torch.zeros(1))})
    >>> [type(x).__name__ for x in leaves]
    ['float', 'Tensor', 'Tensor']
    >>> tree.unflatten(td, leaves)["a"][0]
    1.0
    >>> float(tree.tree_vdot((torch.ones(2), torch.ones(3)), (torch.ones(2), 2 * torch.ones(3))))
    8.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "TreeDef",
    "flatten",
    "unflatten",
    "leaves",
    "tree_map",
    "tree_ordinary",
    "tree_add",
    "tree_sub",
    "tree_scale",
    "tree_vdot",
    "tree_zeros_like",
    "tree_size",
    "is_namedtuple",
]

# Node kinds of a TreeDef.
_LEAF, _TUPLE, _LIST, _DICT, _NAMEDTUPLE = "leaf", "tuple", "list", "dict", "namedtuple"


@dataclass(frozen=True)
class TreeDef:
    """The structure of a pytree without its leaves.

    Attributes:
        kind: ``"leaf"``, ``"tuple"``, ``"list"``, ``"dict"`` or ``"namedtuple"``.
        children: the child structures (empty for a leaf).
        meta: the dict keys (in flattening order) or the namedtuple class.
        num_leaves: how many leaves :func:`unflatten` expects.
    """

    kind: str
    children: tuple[TreeDef, ...] = ()
    meta: Any = None
    num_leaves: int = 1

    def __repr__(self) -> str:
        if self.kind == _LEAF:
            return "*"
        inner = ", ".join(map(repr, self.children))
        if self.kind == _TUPLE:
            return f"({inner}{',' if len(self.children) == 1 else ''})"
        if self.kind == _LIST:
            return f"[{inner}]"
        if self.kind == _DICT:
            pairs = zip(self.meta, self.children, strict=True)
            return "{" + ", ".join(f"{k!r}: {c!r}" for k, c in pairs) + "}"
        return f"{self.meta.__name__}({inner})"


_LEAF_DEF = TreeDef(_LEAF)


def is_namedtuple(obj: Any) -> bool:
    """True for instances of ``collections.namedtuple`` / ``typing.NamedTuple`` classes."""
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _dict_keys(d: dict) -> list:
    keys = list(d.keys())
    try:
        return sorted(keys)
    except TypeError:  # unsortable mixed keys: keep insertion order
        return keys


def flatten(tree: Any) -> tuple[list, TreeDef]:
    """Split ``tree`` into its leaves (depth first) and its structure.

    Args:
        tree: a tensor, a leaf of any other type, or a (nested) tuple / list /
            dict / namedtuple of those.

    Returns:
        ``(leaves, treedef)`` with ``unflatten(treedef, leaves)`` equal to ``tree``.
    """
    out: list = []
    td = _flatten_into(tree, out)
    return out, td


def _flatten_into(tree: Any, out: list) -> TreeDef:
    if is_namedtuple(tree):
        kids = tuple(_flatten_into(c, out) for c in tree)
        return TreeDef(_NAMEDTUPLE, kids, type(tree), sum(k.num_leaves for k in kids))
    if isinstance(tree, (tuple, list)):
        kids = tuple(_flatten_into(c, out) for c in tree)
        kind = _TUPLE if isinstance(tree, tuple) else _LIST
        return TreeDef(kind, kids, None, sum(k.num_leaves for k in kids))
    if isinstance(tree, dict):
        keys = _dict_keys(tree)
        kids = tuple(_flatten_into(tree[k], out) for k in keys)
        return TreeDef(_DICT, kids, tuple(keys), sum(k.num_leaves for k in kids))
    out.append(tree)
    return _LEAF_DEF


def unflatten(treedef: TreeDef, leaves: list | tuple) -> Any:
    """Rebuild a pytree of structure ``treedef`` from ``leaves``.

    Raises:
        ValueError: if the number of leaves does not match ``treedef.num_leaves``.
    """
    leaves = list(leaves)
    if len(leaves) != treedef.num_leaves:
        raise ValueError(
            f"unflatten: the structure {treedef!r} has {treedef.num_leaves} leaves, "
            f"got {len(leaves)}"
        )
    it = iter(leaves)
    return _build(treedef, it)


def _build(td: TreeDef, it) -> Any:
    if td.kind == _LEAF:
        return next(it)
    kids = [_build(c, it) for c in td.children]
    if td.kind == _TUPLE:
        return tuple(kids)
    if td.kind == _LIST:
        return kids
    if td.kind == _DICT:
        return dict(zip(td.meta, kids, strict=True))
    return td.meta(*kids)


def leaves(tree: Any) -> list:
    """The leaves of ``tree`` (depth first), without the structure."""
    return flatten(tree)[0]


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise: ``fn(leaf, *matching_leaves_of_rest)``.

    Raises:
        ValueError: if a tree in ``rest`` does not have the structure of ``tree``.
    """
    lv, td = flatten(tree)
    others = []
    for r in rest:
        rl, rtd = flatten(r)
        if rtd != td:
            raise ValueError(f"tree_map: structures differ: {td!r} vs {rtd!r}")
        others.append(rl)
    return unflatten(td, [fn(*xs) for xs in zip(lv, *others, strict=True)])


def tree_add(x: Any, y: Any) -> Any:
    """Leafwise ``x + y``."""
    return tree_map(lambda a, b: a + b, x, y)


def tree_sub(x: Any, y: Any) -> Any:
    """Leafwise ``x - y``."""
    return tree_map(lambda a, b: a - b, x, y)


def tree_scale(alpha: Any, x: Any) -> Any:
    """Leafwise ``alpha * x`` (``alpha`` a number or a broadcastable tensor)."""
    return tree_map(lambda a: alpha * a, x)


def tree_vdot(x: Any, y: Any) -> torch.Tensor:
    """Inner product of two trees of tensors: ``sum over leaves of sum(x * y)``.

    Complex leaves use the conjugate of ``x`` (as :func:`torch.vdot`).
    """
    lx, tdx = flatten(x)
    ly, tdy = flatten(y)
    if tdx != tdy:
        raise ValueError(f"tree_vdot: structures differ: {tdx!r} vs {tdy!r}")
    terms = [
        (a.conj() * b).sum() if a.is_complex() else (a * b).sum()
        for a, b in zip(lx, ly, strict=True)
    ]
    if not terms:
        return torch.zeros(())
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def tree_zeros_like(x: Any) -> Any:
    """A tree of zero tensors shaped like the tensor leaves of ``x``."""
    return tree_map(torch.zeros_like, x)


def tree_size(x: Any) -> int:
    """Total number of elements over the tensor leaves of ``x``."""
    return sum(t.numel() for t in leaves(x) if isinstance(t, torch.Tensor))


def tree_ordinary(x: Any) -> Any:
    """``x`` with each inference tensor (made under ``torch.inference_mode``) replaced
    by an ordinary copy: solvers that take autograd inside run on these."""
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and t.is_inference()
                    else t, x)
