"""Dependency analysis of a problem with networkx.

* :func:`order_definitions` — order ``let`` definitions so each comes after
  the names it uses; report undefined names (with a did-you-mean) and cycles
  as :class:`optlayer.errors.OptTypeError` with the span of the reference.
* :func:`objective_terms` — the objective split at its top-level ``+``/``-``.
* :func:`dependency_graph` — a DiGraph from parameters, variables and lets to
  the lets, objective terms and constraints that use them.
* :func:`param_reach`, :func:`variable_blocks`, :func:`let_uses` — which
  parameters reach which terms, which variables are coupled (separable
  blocks), and how often each let is used (each is computed once).
* :func:`summary` — the readable report behind ``Problem.summary()`` and
  ``ol.check``.

networkx is imported inside the functions: ``import optlayer`` stays fast.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from optlayer.errors import OptTypeError, Span
from optlayer.ir.nodes import Apply, Expr, Let, Parameter, Variable, postorder

__all__ = [
    "Term",
    "ProxTerm",
    "prox_term",
    "order_definitions",
    "objective_terms",
    "dependency_graph",
    "param_reach",
    "variable_blocks",
    "let_uses",
    "summary",
]


class Term(NamedTuple):
    """One additive term of the objective: ``coeff * expr`` with ``coeff`` = +1 or -1."""

    coeff: int
    expr: Expr


def order_definitions(
    defs: Sequence[tuple[str, Iterable[tuple[str, Span | None]], Span | None]],
    known: Iterable[str],
) -> list[str]:
    """Order named definitions so each comes after the definitions it uses.

    Args:
        defs: ``(name, references, span)`` per ``let``; ``references`` are the
            ``(name, span)`` of every name its expression uses.
        known: names defined otherwise (dims, params, vars, atoms).

    Returns:
        The definition names in a valid evaluation order (stable: source
        order where the dependencies allow).

    Raises:
        OptTypeError: a reference to an undefined name (at the reference,
            with a did-you-mean), a name defined twice, or a cycle (at the
            first definition of the cycle, naming the whole loop).

    Example:
        >>> order_definitions([("a", [("b", None)], None), ("b", [("x", None)], None)], {"x"})
        ['b', 'a']
    """
    import networkx as nx

    from optlayer.ir.build import did_you_mean

    known = set(known)
    spans = {}
    g = nx.DiGraph()
    for i, (name, _refs, span) in enumerate(defs):
        if name in spans or name in known:
            raise OptTypeError(f"name {name!r} is defined more than once", span=span)
        spans[name] = span
        g.add_node(name, order=i)
    for name, refs, _span in defs:
        for ref, rspan in refs:
            if ref in spans:
                g.add_edge(ref, name, span=rspan)
            elif ref not in known:
                raise OptTypeError(f"undefined name {ref!r}", span=rspan,
                                   hint=did_you_mean(ref, list(known) + list(spans)))
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, _v in cycle]
        first = min(names, key=lambda n: g.nodes[n]["order"])
        k = names.index(first)
        loop = names[k:] + names[:k] + [first]
        raise OptTypeError(
            f"let {first!r} depends on itself: {' -> '.join(reversed(loop))}",
            span=spans[first], hint="a let may use only names defined without it")
    return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"]))


def objective_terms(problem) -> list[Term]:
    """The objective split at top-level ``+``, ``-`` and unary ``-`` (not through lets)."""
    out: list[Term] = []
    stack = [(1, problem.objective.expr)]
    while stack:
        c, e = stack.pop()
        name = e.atom.name if isinstance(e, Apply) else None
        if name == "add":
            stack += [(c, e.args[1]), (c, e.args[0])]
        elif name == "sub":
            stack += [(-c, e.args[1]), (c, e.args[0])]
        elif name == "negate":
            stack.append((-c, e.args[0]))
        else:
            out.append(Term(c, e))
    return out


class ProxTerm(NamedTuple):
    """``weight * atom(variable)`` where the atom has a closed-form prox."""

    weight: Expr | None  # a variable-free scalar factor, or None for weight 1
    atom: object  # the Atom record (its .prox names the function in optlayer.prox)
    variable: Variable


def prox_term(expr: Expr) -> ProxTerm | None:
    """Recognise ``atom(x)``, ``c * atom(x)`` or ``atom(x) * c`` with a prox-able atom.

    ``x`` must be a variable itself and ``c`` a variable-free scalar (a
    number or parameter expression); the term's prox is then
    ``prox(x, c * atom.prox_hyper, scaling)`` (for ``c >= 0``).

    Example:
        >>> import optlayer as ol
        >>> x = ol.Variable(3, name="x"); lam = ol.Parameter(name="lam", nonneg=True)
        >>> prox_term(lam * ol.norm1(x)).atom.prox
        'lasso'
    """
    weight = None
    if isinstance(expr, Apply) and expr.atom.name == "mul":
        a, b = expr.args
        if a.is_constant and a.ndim == 0:
            weight, expr = a, b
        elif b.is_constant and b.ndim == 0:
            weight, expr = b, a
        else:
            return None
    if isinstance(expr, Apply) and expr.atom.prox and isinstance(expr.args[0], Variable) \
            and len(expr.args) == 1:
        return ProxTerm(weight, expr.atom, expr.args[0])
    return None


def _labels(problem) -> list[tuple[str, Expr | tuple]]:
    items: list[tuple[str, object]] = []
    for i, t in enumerate(objective_terms(problem)):
        items.append((f"term {i + 1}", t.expr))
    for i, c in enumerate(problem.constraints):
        items.append((c.label or f"constraint {i + 1}", c))
    return items


def _roots_of(item) -> tuple[Expr, ...]:
    return (item,) if isinstance(item, Expr) else tuple(item.args)


def _direct_uses(roots) -> set[tuple[str, str]]:
    """(kind, name) of leaves and lets used by ``roots``, not looking inside lets."""
    out = set()
    stack = list(roots)
    seen = set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (Parameter, Variable, Let)):
            out.add((e.kind, e.name))
            if isinstance(e, Let):
                continue
        stack.extend(e.args)
    return out


def dependency_graph(problem):
    """networkx DiGraph: ``(kind, name)`` nodes, edges from each name to its users.

    Kinds are ``param``, ``var``, ``let``, ``term`` (objective terms, named
    ``term 1``, ...) and ``constraint`` (by label, else ``constraint 1``, ...).
    Edges go from what is used to the user, so descendants of a parameter
    are everything it reaches.
    """
    import networkx as nx

    g = nx.DiGraph()
    for p in problem.params:
        g.add_node(("param", p))
    for v in problem.vars:
        g.add_node(("var", v))
    for name, lt in problem.lets.items():
        g.add_node(("let", name))
        for use in _direct_uses(lt.args):
            g.add_edge(use, ("let", name))
    for label, item in _labels(problem):
        node = ("term" if isinstance(item, Expr) else "constraint", label)
        g.add_node(node)
        for use in _direct_uses(_roots_of(item)):
            g.add_edge(use, node)
    return g


def param_reach(problem) -> dict[str, list[str]]:
    """For each objective term and constraint label, the parameters it depends on."""
    import networkx as nx

    g = dependency_graph(problem)
    out = {}
    for label, item in _labels(problem):
        node = ("term" if isinstance(item, Expr) else "constraint", label)
        out[label] = [p for p in problem.params if node in nx.descendants(g, ("param", p))]
    return out


def variable_blocks(problem) -> list[list[str]]:
    """Groups of variables coupled by an objective term or a constraint.

    Variables in different blocks never share a term or constraint, so the
    problem separates into one independent problem per block. Blocks are
    listed in declaration order.
    """
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(problem.vars)
    for _label, item in _labels(problem):
        names = [n.name for r in _roots_of(item) for n in postorder(r)
                 if isinstance(n, Variable)]
        for a, b in itertools.pairwise(names):
            g.add_edge(a, b)
    order = {v: i for i, v in enumerate(problem.vars)}
    blocks = [sorted(c, key=order.get) for c in nx.connected_components(g)]
    return sorted(blocks, key=lambda b: order[b[0]])


def let_uses(problem) -> dict[str, int]:
    """How many distinct expressions use each let (a let is evaluated once however many)."""
    g = dependency_graph(problem)
    return {name: g.out_degree(("let", name)) for name in problem.lets}


def summary(problem) -> str:
    """The readable summary of ``Problem.summary()``: sizes, terms, constraints, blocks."""
    from optlayer.ir.printer import constraint_text, decl_text, expr_text
    from optlayer.ir.shapes import format_dim

    reach = param_reach(problem)
    obj = problem.objective
    lines = [f"{obj.sense} ({obj.expr.curvature}), {len(problem.vars)} variable(s), "
             f"{len(problem.params)} parameter(s), {len(problem.constraints)} constraint(s)"]
    if problem.dims:
        lines.append("dims: " + ", ".join(
            n if d is None else f"{n} = {format_dim(d)}" for n, d in problem.dims.items()))
    for kind, table in (("params", problem.params), ("vars", problem.vars)):
        if table:
            lines.append(f"{kind}: " + ", ".join(decl_text(x, keyword=False)
                                                 for x in table.values()))
    uses = let_uses(problem)
    for name, lt in problem.lets.items():
        lines.append(f"let {name} = {expr_text(lt.body)}  [{lt.curvature}, used "
                     f"{uses[name]}x, computed once]")
    lines.append("objective terms:")
    for i, t in enumerate(objective_terms(problem)):
        label = f"term {i + 1}"
        sign = "+" if t.coeff > 0 else "-"
        smooth = "smooth" if t.expr.smooth else "non-smooth"
        px = prox_term(t.expr)
        if px is not None and t.coeff > 0:
            smooth += f", prox {px.atom.prox}"
        lines.append(f"  {label}: {sign} {expr_text(t.expr)}  [{t.expr.curvature}, {smooth}; "
                     f"params: {', '.join(reach[label]) or '-'}]")
    if problem.constraints:
        lines.append("constraints:")
        for i, c in enumerate(problem.constraints):
            label = c.label or f"constraint {i + 1}"
            if isinstance(c, Expr) or not hasattr(c, "op"):
                curv = f"{c.expr.curvature} in {c.set.name}"
            else:
                curv = f"{c.lhs.curvature} {c.op} {c.rhs.curvature}"
            lines.append(f"  {label}: {constraint_text(c)}  [{curv}; params: "
                         f"{', '.join(reach[label]) or '-'}]")
    blocks = variable_blocks(problem)
    lines.append("variable blocks: " + " | ".join("{" + ", ".join(b) + "}" for b in blocks))
    return "\n".join(lines)
