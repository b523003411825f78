"""Constructors of the IR, shared by the ``.opt`` lowering and the Python API.

Every function takes ``span=`` (an :class:`optlayer.errors.Span` or ``None``)
and raises :class:`optlayer.errors.OptTypeError` with that span for unknown
names, wrong arities and shape mismatches. Numbers are wrapped as
:class:`Constant`. DCP is not enforced here (an expression may have unknown
curvature); :class:`optlayer.ir.problem.Problem` enforces it.
"""

from __future__ import annotations

import difflib
import numbers

from optlayer.errors import OptTypeError, Span
from optlayer.ir.atoms import ATOMS, Slice, get_atom
from optlayer.ir.nodes import Apply, Constant, Expr, Let
from optlayer.ir.shapes import as_dim

__all__ = [
    "as_expr",
    "apply",
    "add",
    "sub",
    "mul",
    "div",
    "matmul",
    "negate",
    "power",
    "transpose",
    "index",
    "let",
    "constraint",
    "member",
    "make_set",
    "minimize",
    "maximize",
    "did_you_mean",
]


def did_you_mean(name: str, candidates) -> str | None:
    """``did you mean 'norm2'?`` for the closest candidate, or ``None``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def as_expr(value, *, span: Span | None = None) -> Expr:
    """``value`` if it is a node, else a :class:`Constant` (numbers, arrays, tensors)."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return Constant(float(value), span=span)
    if isinstance(value, numbers.Integral):
        return Constant(int(value), span=span)
    if hasattr(value, "shape") or isinstance(value, (list, tuple)):
        return Constant(value, span=span)
    raise OptTypeError(f"cannot use a {type(value).__name__} in an optlayer expression",
                       span=span, hint="use numbers, tensors, Variables and Parameters")


def apply(name: str, args, *, span: Span | None = None, **static) -> Apply:
    """Apply the atom or operator ``name`` of the registry to ``args``.

    Args:
        name: registry name (``"norm2"``, ``"add"``, ...).
        args: argument nodes or numbers.
        span: source location of the whole call.
        **static: static arguments: ``p=`` for ``power``, ``key=`` for ``index``.

    Raises:
        OptTypeError: unknown atom (with a did-you-mean), wrong arity, shape
            mismatch, or a variable where a constant argument is required.
    """
    atom = get_atom(name)
    if atom is None:
        raise OptTypeError(f"unknown function {name!r}", span=span,
                           hint=did_you_mean(name, ATOMS) or
                           "functions are: " + ", ".join(sorted(ATOMS)))
    exprs = [as_expr(a, span=span) for a in args]
    for i in atom.const_args:
        if i < len(exprs) and not exprs[i].is_constant:
            from optlayer.ir.dcp import brief as expr_text

            what = "the divisor" if atom.name == "div" else f"argument {i + 1} of {atom.display}"
            raise OptTypeError(
                f"{what} must not depend on variables: {expr_text(exprs[i])}",
                span=exprs[i].span or span,
                hint="use a number or a parameter here")
    if atom.name == "div":
        _check_divisor(exprs[1], span)
    need = {"power": "p", "index": "key"}.get(atom.name)
    if need and need not in static:
        raise OptTypeError(f"{atom.display} needs its static argument {need}=", span=span)
    if atom.name == "power":
        st = (_number(static.pop("p"), span),)
    elif atom.name == "index":
        st = tuple(static.pop("key"))
    else:
        st = ()
    if static:
        raise OptTypeError(f"{atom.display} got unexpected argument(s) {sorted(static)}",
                           span=span)
    return Apply(atom, exprs, st, span=span)


def _check_divisor(d: Expr, span) -> None:
    """``/`` divides by a nonzero constant or a positive parameter expression (DESIGN.md §3)."""
    from optlayer.ir.dcp import brief as expr_text

    if isinstance(d, Constant):
        zero = d.value == 0 if d.is_scalar_number else bool((d.value == 0).any())
        if zero:
            raise OptTypeError("division by zero", span=d.span or span)
        return
    if not d.sign.is_positive:
        raise OptTypeError(
            f"the divisor {expr_text(d)} is not known to be positive (its sign is {d.sign})",
            span=d.span or span,
            hint="declare the parameter pos (param c pos), or divide by a number")


def _number(p, span):
    if isinstance(p, Constant) and p.is_scalar_number:
        p = p.value
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise OptTypeError("the exponent of ^ must be a number", span=span,
                           hint="write x ^ 2, or use square/sqrt/exp")
    p = float(p)
    if p != p or p in (float("inf"), float("-inf")):
        raise OptTypeError(f"the exponent of ^ must be finite, got {p}", span=span)
    return int(p) if p.is_integer() else p


def add(a, b, *, span: Span | None = None) -> Apply:
    """``a + b`` (elementwise, scalars broadcast)."""
    return apply("add", [a, b], span=span)


def sub(a, b, *, span: Span | None = None) -> Apply:
    """``a - b``."""
    return apply("sub", [a, b], span=span)


def mul(a, b, *, span: Span | None = None) -> Apply:
    """``a * b`` elementwise; DCP needs one factor variable-free."""
    return apply("mul", [a, b], span=span)


def div(a, b, *, span: Span | None = None) -> Apply:
    """``a / b`` for a variable-free ``b``."""
    return apply("div", [a, b], span=span)


def matmul(a, b, *, span: Span | None = None) -> Apply:
    """``a @ b`` (matrix and vector products)."""
    return apply("matmul", [a, b], span=span)


def negate(a, *, span: Span | None = None) -> Expr:
    """Unary ``-a``; the negation of a number literal is folded into the constant."""
    if isinstance(a, Constant) and a.is_scalar_number:
        return Constant(-a.value, span=span)
    if not isinstance(a, Expr):
        return as_expr(-a, span=span)
    return apply("negate", [a], span=span)


def power(a, p, *, span: Span | None = None) -> Apply:
    """``a ^ p`` for a constant number ``p``."""
    return apply("power", [a], span=span, p=p)


def transpose(a, *, span: Span | None = None) -> Apply:
    """``a'``."""
    return apply("transpose", [a], span=span)


def index(a, key, *, span: Span | None = None) -> Apply:
    """``a[key]``: ``key`` is an int/dim, a :class:`Slice` or Python slice, or a tuple of them.

    Entries may be ints (negative counts from the end), dim expressions
    (``n - 1``) or slices ``start:stop`` (step 1 only).
    """
    if not isinstance(key, tuple) or isinstance(key, Slice):  # a Slice is a NamedTuple
        key = (key,)
    norm = []
    for k in key:
        if isinstance(k, slice):
            if k.step not in (None, 1):
                raise OptTypeError("slices with a step are not supported", span=span)
            k = Slice(k.start, k.stop)
        if isinstance(k, Slice):
            norm.append(Slice(*(None if v is None else _dim(v, span) for v in k)))
        else:
            norm.append(_dim(k, span))
    return apply("index", [a], span=span, key=tuple(norm))


def _dim(v, span):
    if isinstance(v, Constant) and v.is_scalar_number and float(v.value).is_integer():
        return int(v.value)
    try:
        return as_dim(v)
    except TypeError:
        raise OptTypeError(f"an index must be an integer or a dim expression, got {v!r}",
                           span=span) from None


def let(name: str, expr, *, span: Span | None = None) -> Let:
    """A named subexpression (``let NAME = expr``)."""
    return Let(name, as_expr(expr, span=span), span=span)


def constraint(op: str, lhs, rhs, *, label: str | None = None, span: Span | None = None):
    """``lhs op rhs`` for ``op`` in ``==``, ``<=``, ``>=`` (shapes checked now, DCP in Problem)."""
    from optlayer.ir.problem import Constraint

    return Constraint(op, as_expr(lhs, span=span), as_expr(rhs, span=span), label=label,
                      span=span)


def make_set(name: str, args=(), *, span: Span | None = None):
    """The set ``name(args...)`` of the set registry (``simplex``, ``box``, ...)."""
    from optlayer.ir.sets import SetExpr

    return SetExpr(name, args, span=span)


def member(expr, set_, *, label: str | None = None, span: Span | None = None):
    """The constraint ``expr in set_``; ``set_`` is a SetExpr, a set name or ``ol.simplex``."""
    from optlayer.ir.problem import Membership
    from optlayer.ir.sets import SetExpr, SetKind

    if isinstance(set_, str):
        set_ = SetExpr(set_, (), span=span)
    elif isinstance(set_, SetKind):
        set_ = SetExpr(set_, (), span=span)
    if not isinstance(set_, SetExpr):
        raise OptTypeError(f"{set_!r} is not a set", span=span,
                           hint="use a set such as ol.simplex(1) or ol.box(0, 1)")
    return Membership(as_expr(expr, span=span), set_, label=label, span=span)


def minimize(expr, *, span: Span | None = None):
    """The objective ``minimize expr``."""
    from optlayer.ir.problem import Objective

    return Objective("minimize", as_expr(expr, span=span), span=span)


def maximize(expr, *, span: Span | None = None):
    """The objective ``maximize expr``."""
    from optlayer.ir.problem import Objective

    return Objective("maximize", as_expr(expr, span=span), span=span)

