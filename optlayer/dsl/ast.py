"""The abstract syntax tree of a ``.opt`` program, every node with its source span.

The parser (:mod:`optlayer.dsl.syntax`) builds these nodes from lark's parse
tree; the lowering (:mod:`optlayer.dsl.lower`) turns them into the typed IR.
Nodes are plain frozen dataclasses: they hold text-level facts only (names,
literal values, operators, spans) and know nothing about shapes or curvature.

Spans are :class:`optlayer.errors.Span` (1-based line and column, end
exclusive), so any error about a node can draw a caret under its text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from optlayer.errors import Span

__all__ = [
    "Node",
    "Expr",
    "Number",
    "Name",
    "Call",
    "BinOp",
    "Neg",
    "Power",
    "Transpose",
    "Index",
    "SliceItem",
    "Stmt",
    "DimDecl",
    "LeafDecl",
    "Attribute",
    "LetDecl",
    "ObjectiveStmt",
    "SubjectTo",
    "ConstraintStmt",
    "MembershipStmt",
    "Program",
    "children",
    "postorder",
    "join",
]


def join(first: Span, last: Span) -> Span:
    """The span from the start of ``first`` to the end of ``last``."""
    return Span(first.line, first.column, last.end_line, last.end_column)


@dataclass(frozen=True, slots=True)
class Node:
    """Base of every AST node."""

    span: Span


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True, slots=True)
class Expr(Node):
    """Base of expression nodes."""


@dataclass(frozen=True, slots=True)
class Number(Expr):
    """A numeric literal; ``value`` is an ``int`` for digits-only text, else a ``float``."""

    value: int | float
    text: str


@dataclass(frozen=True, slots=True)
class Name(Expr):
    """A reference to a dim, parameter, variable or let."""

    name: str


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """``name(args...)``: an atom call (or, after ``in``, a set with arguments)."""

    name: str
    name_span: Span
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class BinOp(Expr):
    """``left op right`` for ``op`` in ``+ - * / @``."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Neg(Expr):
    """Unary ``-operand``."""

    operand: Expr


@dataclass(frozen=True, slots=True)
class Power(Expr):
    """``base ^ exponent`` (the exponent must turn out to be a number)."""

    base: Expr
    exponent: Expr


@dataclass(frozen=True, slots=True)
class Transpose(Expr):
    """``operand'``."""

    operand: Expr


@dataclass(frozen=True, slots=True)
class SliceItem(Node):
    """``start:stop`` inside brackets; either end may be ``None``."""

    start: Expr | None
    stop: Expr | None


@dataclass(frozen=True, slots=True)
class Index(Expr):
    """``base[item, ...]``; each item is an expression or a :class:`SliceItem`."""

    base: Expr
    items: tuple[Expr | SliceItem, ...]


# ----------------------------------------------------------------- statements
@dataclass(frozen=True, slots=True)
class Stmt(Node):
    """Base of statements."""


@dataclass(frozen=True, slots=True)
class DimDecl(Stmt):
    """``dim name [= default]`` (one per name of a ``dim a, b = 3`` line)."""

    name: str
    name_span: Span
    default: Number | None


@dataclass(frozen=True, slots=True)
class Attribute(Node):
    """One attribute word after a declaration (``nonneg``, ``psd``, ...)."""

    name: str


@dataclass(frozen=True, slots=True)
class LeafDecl(Stmt):
    """``param name[shape] attrs...`` or ``var name[shape] attrs...``."""

    kind: str  # "param" or "var"
    name: str
    name_span: Span
    shape: tuple[Expr, ...] | None
    attrs: tuple[Attribute, ...]


@dataclass(frozen=True, slots=True)
class LetDecl(Stmt):
    """``let name = expr``."""

    name: str
    name_span: Span
    expr: Expr


@dataclass(frozen=True, slots=True)
class ObjectiveStmt(Stmt):
    """``minimize expr`` or ``maximize expr``."""

    sense: str
    expr: Expr


@dataclass(frozen=True, slots=True)
class SubjectTo(Stmt):
    """The ``subject to`` line that opens the constraints."""


@dataclass(frozen=True, slots=True)
class ConstraintStmt(Stmt):
    """``[label:] lhs op rhs`` for ``op`` in ``== <= >=``; ``body_span`` excludes the label."""

    label: str | None
    label_span: Span | None
    op: str
    lhs: Expr
    rhs: Expr
    body_span: Span


@dataclass(frozen=True, slots=True)
class MembershipStmt(Stmt):
    """``[label:] expr in set`` or ``expr in set(args...)``."""

    label: str | None
    label_span: Span | None
    expr: Expr
    set_name: str
    set_name_span: Span
    set_args: tuple[Expr, ...]
    set_span: Span
    body_span: Span


@dataclass(frozen=True, slots=True)
class Program(Node):
    """A whole ``.opt`` file: its statements in source order."""

    statements: tuple[Stmt, ...]


# ------------------------------------------------------------------- walking
def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of an expression node (slices give their ends)."""
    if isinstance(node, BinOp):
        return (node.left, node.right)
    if isinstance(node, (Neg, Transpose)):
        return (node.operand,)
    if isinstance(node, Power):
        return (node.base, node.exponent)
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Index):
        return (node.base,) + node.items
    if isinstance(node, SliceItem):
        return tuple(e for e in (node.start, node.stop) if e is not None)
    return ()


def postorder(root: Node) -> Iterator[Node]:
    """Every node under ``root``, children before parents, without recursion."""
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        stack.append((node, True))
        for child in reversed(children(node)):
            stack.append((child, False))
