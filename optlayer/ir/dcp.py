"""Disciplined convex programming: the composition rule, written once.

For ``f(g1, ..., gk)`` with ``f`` convex (cvxpy's rule): the composition is
convex when every argument ``gi`` is affine, or convex with ``f``
nondecreasing in argument ``i``, or concave with ``f`` nonincreasing in
argument ``i``. Concave is the mirror image; affine is both. Constant
arguments (no variables; parameters are constants) satisfy every rule, and a
node with only constant arguments is constant.

:func:`compose` gives a node its curvature when it is built.
:func:`find_offender` walks down from an expression that fails a requirement
(convex for ``minimize``, ...) to the smallest subexpression that breaks the
rule, and :func:`explain` says why, with a hint where a rewrite is known.
"""

from __future__ import annotations

from optlayer.ir.enums import Curvature, Mono

__all__ = ["compose", "arg_requirement", "find_offender", "explain", "meets"]


def compose(atom, args, static) -> Curvature:
    """Curvature of ``atom(*args)`` by the DCP composition rule."""
    curvs = [a.curvature for a in args]
    if all(c.is_constant for c in curvs):
        return Curvature.CONSTANT
    f = atom.curvature_of(args, static)
    if f is Curvature.UNKNOWN:
        return Curvature.UNKNOWN
    monos = atom.monotonicity(args, static)
    convex = f.is_convex and all(_ok(m, c, True) for m, c in zip(monos, curvs, strict=False))
    concave = f.is_concave and all(_ok(m, c, False) for m, c in zip(monos, curvs, strict=False))
    return Curvature.from_flags(convex, concave)


def _ok(mono: Mono, c: Curvature, convex: bool) -> bool:
    if c.is_affine:
        return True
    if mono is Mono.INCREASING:
        return c.is_convex if convex else c.is_concave
    if mono is Mono.DECREASING:
        return c.is_concave if convex else c.is_convex
    return False


def meets(c: Curvature, want: Curvature) -> bool:
    """Does curvature ``c`` satisfy the requirement ``want`` (convex/concave/affine)?"""
    if want is Curvature.CONVEX:
        return c.is_convex
    if want is Curvature.CONCAVE:
        return c.is_concave
    if want in (Curvature.AFFINE, Curvature.CONSTANT):
        return c.is_affine if want is Curvature.AFFINE else c.is_constant
    return True


def arg_requirement(mono: Mono, want: Curvature) -> Curvature:
    """What argument curvature an atom of curvature ``want`` and monotonicity ``mono`` needs."""
    if want is Curvature.AFFINE or mono is Mono.NONMONOTONE:
        return Curvature.AFFINE
    if mono is Mono.INCREASING:
        return want
    return want.negate()


def find_offender(expr, want: Curvature):
    """The smallest subexpression of ``expr`` that makes it fail ``want``.

    Returns ``(node, requirement)`` where ``requirement`` is the curvature the
    node should have had in its position, or ``None`` if ``expr`` meets ``want``.
    """
    from optlayer.ir.nodes import Apply, Let

    if meets(expr.curvature, want):
        return None
    node = expr
    while True:
        if isinstance(node, Let):
            node = node.body
            continue
        if not isinstance(node, Apply):
            return node, want
        # a node of unknown curvature whose arguments are all DCP is the culprit
        if node.curvature is Curvature.UNKNOWN:
            inner = [a for a in node.args if a.curvature is Curvature.UNKNOWN]
            if inner:
                node = inner[0]
                continue
            f = node.atom.curvature_of(node.args, node.static)
            nxt = _failing_arg(node, want) if meets(f, want) else None
            if nxt is None:
                return node, want
            node, want = nxt
            continue
        f = node.atom.curvature_of(node.args, node.static)
        if not meets(f, want):
            return node, want
        monos = node.atom.monotonicity(node.args, node.static)
        nxt = None
        for a, m in zip(node.args, monos, strict=False):
            req = arg_requirement(m, want)
            if not meets(a.curvature, req):
                nxt = (a, req)
                break
        if nxt is None:
            return node, want
        node, want = nxt


def brief(node, limit: int = 80) -> str:
    """The ``.opt`` text of ``node`` for a message, elided in the middle past ``limit`` chars."""
    from optlayer.ir.printer import expr_text

    return expr_text(node, limit=limit)  # bounded per node: shared DAGs stay cheap


def _failing_arg(node, want: Curvature):
    """A monotone argument of ``node`` that fails its requirement (the composition is fine)."""
    monos = node.atom.monotonicity(node.args, node.static)
    for a, m in zip(node.args, monos, strict=True):
        req = arg_requirement(m, want)
        if m is not Mono.NONMONOTONE and not meets(a.curvature, req):
            return a, req
    return None


def explain(node, want: Curvature) -> tuple[str, str | None]:
    """(why, hint) for an offending node found by :func:`find_offender`."""
    from optlayer.ir.nodes import Apply

    text = brief(node)
    if not isinstance(node, Apply):
        return f"{text} is {node.curvature}, but {want} is needed here.", None
    atom = node.atom
    f = atom.curvature_of(node.args, node.static)
    if f is Curvature.UNKNOWN:
        why = atom.unknown_why(node.args, node.static) or (
            f"{atom.name} has unknown curvature for these arguments.")
        return why, _hint(node)
    if node.curvature is not Curvature.UNKNOWN:
        hint = _hint(node)
        if hint is None and want is Curvature.AFFINE:
            hint = ("== and set membership need affine expressions; a convex function "
                    "bounded above (f(x) <= c) is a convex constraint.")
        return f"{text} is {node.curvature}, but {want} is needed here.", hint
    monos = atom.monotonicity(node.args, node.static)
    for a, m in zip(node.args, monos, strict=True):
        if a.curvature.is_affine:
            continue
        if (f.is_convex and not _ok(m, a.curvature, True)) or (
                f.is_concave and not _ok(m, a.curvature, False)):
            where = " in this argument" if len(node.args) > 1 else ""
            why = (f"{atom.display} is {f} and {m}{where}; its argument {brief(a)} is "
                   f"{a.curvature}, so the composition has unknown curvature.")
            return why, _hint(node)
    return f"{text} has unknown curvature.", _hint(node)  # pragma: no cover


def _hint(node) -> str | None:
    """Known rewrites of non-DCP spellings."""
    from optlayer.ir.nodes import Apply

    name = node.atom.name
    a = node.args[0] if node.args else None
    inner = a.atom.name if isinstance(a, Apply) else None
    if name == "sqrt" and inner == "sum_squares":
        e = brief(a.args[0])
        return f"norm2({e}) is convex and equals sqrt(sum_squares({e}))."
    if name == "log" and inner == "sum" and isinstance(a.args[0], Apply) and \
            a.args[0].atom.name == "exp":
        e = brief(a.args[0].args[0])
        return f"logsumexp({e}) is convex and equals log(sum(exp({e})))."
    if name == "sqrt" and inner in ("square", "power"):
        return f"abs({brief(a.args[0])}) is convex and equals sqrt of its square."
    if name == "matmul" and isinstance(a, Apply) and a.atom.name == "matmul" and \
            isinstance(a.args[0], Apply) and a.args[0].atom.name == "transpose" and \
            a.args[1].is_constant and node.args[1] is a.args[0].args[0]:
        x, P = brief(node.args[1]), brief(a.args[1])
        return f"quad_form({x}, {P}) is convex for a psd {P} and equals {x}' @ {P} @ {x}."
    if name in ("mul", "matmul", "dot", "div") and all(not x.is_constant for x in node.args):
        return ("multiply a variable expression only by parameters or constants; "
                "write a product of variables with quad_form or sum_squares where possible.")
    if name in ("mul", "matmul", "dot", "div"):
        for x in node.args:
            if x.is_constant and x.sign.value == "unknown":
                return (f"the sign of {brief(x)} is unknown; give it a sign attribute "
                        "(param ... nonneg or nonpos) so the product's curvature is known.")
    if name == "power":
        return "use square(...) / sum_squares(...) for even powers, sqrt for p = 0.5."
    return node.atom.hint or None
