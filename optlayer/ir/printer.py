"""Print IR as ``.opt`` text that parses back to an equal IR.

Operators print with the precedence ladder of the language (lowest first):
``+ -`` < ``* / @`` < unary ``-`` < ``^`` < postfix ``'`` and ``[...]`` <
names, numbers, calls and parentheses. Operands are parenthesised whenever
the ladder would otherwise regroup them, and a little more (mixed ``*``/``@``
chains, the base of ``^``, a negative number anywhere but first) so the text
reads the same under any grammar with that ladder. Lets print by name.
Printing is iterative, so very deep expressions print without recursion.
"""

from __future__ import annotations

from optlayer.errors import OptTypeError
from optlayer.ir.atoms import Slice
from optlayer.ir.nodes import Apply, Constant, Expr, Leaf, Let, postorder
from optlayer.ir.shapes import format_dim, format_shape

__all__ = ["expr_text", "set_text", "constraint_text", "decl_text", "problem_text",
           "format_number"]

_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "matmul": 2, "negate": 3, "power": 4,
         "transpose": 5, "index": 5}
_PRIMARY = 6


def format_number(v) -> str:
    """A number as ``.opt`` text (ints stay ints; floats round-trip through ``repr``)."""
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if v.is_integer() and abs(v) < 1e16:
        return f"{int(v)}.0"
    return repr(v)


def _prec(node: Expr) -> int:
    if isinstance(node, Apply) and node.atom.is_operator:
        return _PREC[node.atom.name]
    if isinstance(node, Constant) and node.is_scalar_number and node.value < 0:
        return 3
    return _PRIMARY


def _wrap(text: str, cond: bool) -> str:
    return f"({text})" if cond else text


def expr_text(root: Expr, *, strict: bool = False, limit: int | None = None) -> str:
    """The ``.opt`` text of an expression (lets by name).

    Args:
        root: the expression.
        strict: raise for tensor constants, which have no ``.opt`` spelling
            (used by :func:`problem_text`); otherwise they print as ``<const[3]>``.
        limit: elide the middle of every subexpression's text longer than
            this many characters (for messages and ``repr``). A DAG that
            shares subexpressions without lets has text exponential in its
            size; with a limit the cost stays O(nodes * limit).

    Raises:
        OptTypeError: for tensor constants when ``strict``.
    """
    out: dict[int, str] = {}
    for node in postorder(root):
        if isinstance(node, Let) and node is not root:
            out[id(node)] = node.name
            continue
        text = _node_text(node, [out[id(a)] for a in node.args], strict)
        if limit is not None and len(text) > limit:
            half = max(1, (limit - 5) // 2)
            text = f"{text[:half]} ... {text[-half:]}"
        out[id(node)] = text
    return out[id(root)]


def _node_text(node: Expr, kids: list[str], strict: bool = True) -> str:
    if isinstance(node, Leaf):
        return node.name
    if isinstance(node, Let):
        return kids[0]
    if isinstance(node, Constant):
        if not node.is_scalar_number:
            if not strict:
                return f"<const{format_shape(node.shape)}>"
            raise OptTypeError(
                f"a tensor constant of shape {format_shape(node.shape)} has no .opt spelling",
                hint="make it a parameter (ol.Parameter) and pass its value when calling")
        return format_number(node.value)
    assert isinstance(node, Apply)
    name = node.atom.name
    if not node.atom.is_operator:
        return f"{name}({', '.join(kids)})"
    p = _PREC[name]
    args = node.args
    if name in ("add", "sub", "mul", "div", "matmul"):
        lp, rp = _prec(args[0]), _prec(args[1])
        left = _wrap(kids[0], lp < p or (p == 2 and lp == 2 and _opname(args[0]) != name)
                     or (p == 2 and lp == 3))
        right = _wrap(kids[1], rp <= p or (rp == 3 and p >= 1))
        return f"{left} {node.atom.symbol} {right}"
    if name == "negate":
        return "-" + _wrap(kids[0], _prec(args[0]) < 5)
    if name == "power":
        (e,) = node.static
        ex = format_number(e)
        return f"{_wrap(kids[0], _prec(args[0]) < 5)} ^ {_wrap(ex, e < 0)}"
    if name == "transpose":
        return _wrap(kids[0], _prec(args[0]) < 5) + "'"
    if name == "index":
        return _wrap(kids[0], _prec(args[0]) < 5) + "[" + ", ".join(
            _key_text(k) for k in node.static) + "]"
    raise AssertionError(name)  # pragma: no cover


def _opname(node: Expr) -> str | None:
    return node.atom.name if isinstance(node, Apply) else None


def _key_text(k) -> str:
    if isinstance(k, Slice):
        a = "" if k.start is None else format_dim(k.start)
        b = "" if k.stop is None else format_dim(k.stop)
        return f"{a}:{b}"
    return format_dim(k)


def set_text(s, *, strict: bool = False) -> str:
    """``simplex(1)``, ``box(lo, hi)``, ``nonneg``."""
    if not s.args:
        return s.kind.name
    return f"{s.kind.name}({', '.join(expr_text(a, strict=strict) for a in s.args)})"


def constraint_text(c, *, strict: bool = False) -> str:
    """One constraint line without its label."""
    from optlayer.ir.problem import Membership

    if isinstance(c, Membership):
        return f"{expr_text(c.expr, strict=strict)} in {set_text(c.set, strict=strict)}"
    return f"{expr_text(c.lhs, strict=strict)} {c.op} {expr_text(c.rhs, strict=strict)}"


def decl_text(leaf: Leaf, *, keyword: bool = True) -> str:
    """``param L[n, n] psd`` (or ``L[n, n] psd`` without the keyword)."""
    shape = "" if not leaf.shape else "[" + ", ".join(format_dim(d) for d in leaf.shape) + "]"
    attrs = "".join(" " + a for a in leaf.attrs)
    head = f"{leaf.kind} " if keyword else ""
    return f"{head}{leaf.name}{shape}{attrs}"


def problem_text(problem, *, strict: bool = True) -> str:
    """The whole problem as ``.opt`` text (declarations in the problem's order).

    With ``strict=False`` tensor constants print as ``<const[3]>`` instead of
    raising (for ``str(problem)``); such text does not parse.
    """
    lines = []
    for name, default in problem.dims.items():
        lines.append(f"dim {name}" if default is None else f"dim {name} = {default}")
    lines += [decl_text(p) for p in problem.params.values()]
    lines += [decl_text(v) for v in problem.vars.values()]
    lines += [f"let {lt.name} = {expr_text(lt.body, strict=strict)}"
              for lt in problem.lets.values()]
    obj = problem.objective
    lines.append(f"{obj.sense} {expr_text(obj.expr, strict=strict)}")
    if problem.constraints:
        lines.append("subject to")
        for c in problem.constraints:
            label = f"{c.label}: " if c.label else ""
            lines.append(f"    {label}{constraint_text(c, strict=strict)}")
    return "\n".join(lines) + "\n"
