"""Structural equality of IR nodes and problems, ignoring source spans.

``==`` on expressions builds a constraint (as in cvxpy), so structural
equality is the function :func:`equal`. Two expressions are equal when they
have the same node classes, names, attributes, shapes (dims compared
symbolically), constant values, atoms and static arguments, and equal
children. The comparison is iterative and memoised on node-id pairs, so
shared subexpressions and deep trees cost no recursion.
"""

from __future__ import annotations

import torch

from optlayer.ir.nodes import Apply, Constant, Expr, Leaf, Let
from optlayer.ir.shapes import dim_equal, shape_equal

__all__ = ["equal", "set_equal", "constraint_equal"]


def _static_equal(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=False):
        if isinstance(x, tuple) != isinstance(y, tuple):
            return False
        if isinstance(x, tuple):  # Slice
            if not _static_equal(tuple(x), tuple(y)):
                return False
        elif (x is None) != (y is None):
            return False
        elif x is not None and not (
            float(x) == float(y) if isinstance(x, (int, float)) and isinstance(y, (int, float))
            else dim_equal(x, y)
        ):
            return False
    return True


def _local_equal(a: Expr, b: Expr) -> bool:
    if type(a) is not type(b) or len(a.args) != len(b.args):
        return False
    if not shape_equal(a.shape, b.shape):
        return False
    if isinstance(a, Leaf):
        return a.name == b.name and a.attrs == b.attrs
    if isinstance(a, Let):
        return a.name == b.name
    if isinstance(a, Constant):
        if a.is_scalar_number != b.is_scalar_number:
            return False
        if a.is_scalar_number:
            return float(a.value) == float(b.value)
        return bool(torch.equal(a.value.double(), b.value.double()))
    if isinstance(a, Apply):
        return a.atom is b.atom and _static_equal(a.static, b.static)
    return False


def equal(a, b) -> bool:
    """Structural equality of two expressions (spans ignored).

    Example:
        >>> import optlayer as ol
        >>> x = ol.Variable(3, name="x")
        >>> equal(ol.sum(x) + 1, ol.sum(ol.Variable(3, name="x")) + 1)
        True
    """
    if not isinstance(a, Expr) or not isinstance(b, Expr):
        return False
    done: set[tuple[int, int]] = set()
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        key = (id(x), id(y))
        if key in done:
            continue
        if not _local_equal(x, y):
            return False
        done.add(key)
        stack.extend(zip(x.args, y.args, strict=False))
    return True


def set_equal(s, t) -> bool:
    """Equality of two set expressions (kind and filled-in arguments)."""
    return s.kind is t.kind and len(s.args) == len(t.args) and all(
        equal(x, y) for x, y in zip(s.args, t.args, strict=False))


def constraint_equal(c, d) -> bool:
    """Equality of two constraints, including labels (spans ignored)."""
    from optlayer.ir.problem import Membership

    if type(c) is not type(d) or c.label != d.label:
        return False
    if isinstance(c, Membership):
        return equal(c.expr, d.expr) and set_equal(c.set, d.set)
    return c.op == d.op and equal(c.lhs, d.lhs) and equal(c.rhs, d.rhs)
