"""Shapes with symbolic dimensions.

A shape is a tuple of dimensions; a dimension is a Python ``int`` or a sympy
expression built from :func:`dim_symbol` symbols and integers only (source
text is never sympified). Symbolic dimensions stay symbolic until a problem is
bound with ``dims=``; arithmetic such as ``n + 1`` or ``2 * n`` is simplified
by sympy's canonical form. sympy is imported lazily, only when a symbolic
dimension is created, so ``import optlayer`` stays fast.

Shape rules compare dimensions with :func:`dim_equal`: two dimensions are
equal when their difference simplifies to zero. Dimensions that *might* be
equal for some binding (``n`` and ``m``) are not equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "Shape",
    "dim_symbol",
    "dim_add",
    "dim_sub",
    "dim_mul",
    "as_dim",
    "dim_equal",
    "shape_equal",
    "format_dim",
    "format_shape",
    "free_dims",
    "subs_dim",
    "subs_shape",
    "is_concrete",
]

Shape = tuple  # tuple[int | sympy.Expr, ...]


def _sympy():
    import sympy

    return sympy


def dim_symbol(name: str, *, span=None):
    """The sympy symbol of dimension ``name`` (a positive integer).

    Every symbol of the IR is made here so that two dims named alike compare
    equal (sympy symbols compare by name and assumptions).

    Raises:
        OptTypeError: ``name`` is not an identifier, or is a keyword, attribute,
            atom or set name of the language (with ``span``).
    """
    from optlayer.ir.nodes import check_name

    check_name(name, "dim", span)
    return _sympy().Symbol(name, integer=True, positive=True)


def _is_sym(d: Any) -> bool:
    return not isinstance(d, int) and hasattr(d, "free_symbols")


def as_dim(d: Any):
    """Normalise ``d`` (int, numpy int, sympy integer or expression) to a dimension.

    Raises:
        TypeError: if ``d`` is not an integer or a sympy expression. Strings
            are refused: dims are never parsed from text here.
    """
    if isinstance(d, bool):
        raise TypeError(f"a dimension must be an integer, got {d!r}")
    if isinstance(d, int):
        return d
    if hasattr(d, "__index__") and not _is_sym(d):
        return int(d.__index__())
    if _is_sym(d):
        if d.is_Integer:
            return int(d)
        return d
    raise TypeError(f"a dimension must be an integer or a dim symbol, got {d!r}")


def _simplify(e):
    e = _sympy().expand(e)
    return int(e) if e.is_Integer else e


def dim_add(a, b):
    """``a + b`` for dimensions (ints stay ints)."""
    a, b = as_dim(a), as_dim(b)
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return _simplify(a + b)


def dim_sub(a, b):
    """``a - b`` for dimensions (ints stay ints)."""
    a, b = as_dim(a), as_dim(b)
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return _simplify(a - b)


def dim_mul(a, b):
    """``a * b`` for dimensions (ints stay ints)."""
    a, b = as_dim(a), as_dim(b)
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return _simplify(a * b)


def dim_equal(a, b) -> bool:
    """True when the two dimensions are provably equal for every binding."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a == b:  # structural (sympy canonical form): the common case, no expand
        return True
    diff = _sympy().expand(a - b)
    return bool(diff == 0)


def shape_equal(a: Shape, b: Shape) -> bool:
    """True when the shapes have the same length and provably equal dims."""
    return len(a) == len(b) and all(dim_equal(x, y) for x, y in zip(a, b, strict=False))


def format_dim(d) -> str:
    """A dimension as ``.opt`` text (``n + 1``, ``2*n`` printed as ``2 * n``)."""
    if isinstance(d, int):
        return str(d)
    return _format_sym(d)


def _format_sym(e) -> str:
    sp = _sympy()
    if e.is_Integer:
        return str(int(e))
    if e.is_Symbol:
        return e.name
    if e.is_Add:
        terms = e.as_ordered_terms()  # sympy's printing order: n + 1, m * n + n
        out = _format_sym(terms[0])
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += " - " + _format_factor(-t)
            else:
                out += " + " + _format_factor(t)
        return out
    if e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:
            return "-" + _format_factor(rest)
        factors = [f for f in sp.Mul.make_args(rest)]
        parts = ([str(int(coeff))] if coeff != 1 else []) + [_format_factor(f) for f in factors]
        return " * ".join(parts)
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return " * ".join([_format_factor(e.base)] * int(e.exp))
    raise TypeError(f"cannot print dimension {e}")


def _format_factor(e) -> str:
    s = _format_sym(e)
    return f"({s})" if e.is_Add else s


def format_shape(shape: Shape) -> str:
    """``[n, n + 1]`` style, ``scalar`` for ``()``."""
    if len(shape) == 0:
        return "scalar"
    return "[" + ", ".join(format_dim(d) for d in shape) + "]"


def free_dims(shape: Shape) -> set[str]:
    """Names of the dim symbols a shape mentions."""
    out: set[str] = set()
    for d in shape:
        if _is_sym(d):
            out.update(s.name for s in d.free_symbols)
    return out


def subs_dim(d, values: Mapping[str, int]):
    """Substitute bound dim values into one dimension."""
    if isinstance(d, int):
        return d
    sp = _sympy()
    rep = {s: values[s.name] for s in d.free_symbols if s.name in values}
    return as_dim(sp.expand(d.xreplace({k: sp.Integer(v) for k, v in rep.items()})))


def subs_shape(shape: Shape, values: Mapping[str, int]) -> Shape:
    """Substitute bound dim values into a shape."""
    return tuple(subs_dim(d, values) for d in shape)


def is_concrete(shape: Shape) -> bool:
    """True when every dimension is an int."""
    return all(isinstance(d, int) for d in shape)
