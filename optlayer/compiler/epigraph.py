"""Epigraph rewriting: a DCP problem with non-smooth atoms -> smooth rows for a KKT solver.

A convex atom ``phi`` that occurs in a convex position (every atom above it is
nondecreasing in it, the DCP composition rule) is replaced by an auxiliary
variable ``t`` together with rows that say ``phi(u) <= t``; a concave atom
(``min``) in a concave position by ``t`` with ``t <= psi(u)``. At the optimum
the rows are tight wherever it matters, so the rewritten problem has the same
optimal value and the same solution in the user's variables (the auxiliary
variables are internal). The piecewise-linear atoms give affine rows, so a
problem with a quadratic objective stays a QP/LP; ``norm2`` gives one
second-order-cone row (see :data:`EPIGRAPH` and :func:`soc_row`).

Everything the rewrite knows about an atom is one entry of :data:`EPIGRAPH`.
:func:`rewrite` turns a whole problem (objective terms, constraints, set
memberships, variable attributes, atom domains) into a :class:`Rewrite`:
smooth objective terms plus rows ``g <= 0`` / ``g == 0`` of :class:`Row`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from optlayer.errors import OptTypeError
from optlayer.ir import (
    Apply,
    Constant,
    Curvature,
    Let,
    Membership,
    Mono,
    Problem,
    Variable,
    apply,
    equal,
    expr_text,
    get_atom,
    index,
    minimize,
    negate,
    objective_terms,
    power,
    sub,
)

__all__ = ["EPIGRAPH", "SET_ROWS", "Row", "Rewrite", "Unsupported", "rewrite", "soc_row"]


class Unsupported(OptTypeError):
    """The problem has a part the KKT rewrite cannot express (e.g. a psd constraint
    next to other constraints: that needs a semidefinite solver)."""


class Row(NamedTuple):
    """One block of rows ``expr <= 0`` (inequality) or ``expr == 0`` (equality).

    Attributes:
        label: the user's constraint label (duals are reported under it), or None.
        expr: the residual expression (its entries are the rows).
        source: the user's constraint or membership, or None for epigraph rows.
        cone: True for a second-order-cone row (:func:`soc_row`).
        scale: for a cone row of a labelled constraint ``norm2(u) <= s``:
            ``(numerator, denominator or None)``; the multiplier of the user's
            constraint is this row's times ``numerator / denominator`` at the
            solution (:func:`soc_row`).
        phase_one: the row for phase I when ``expr`` is not defined everywhere.
        domain: True for a row ``-arg <= 0`` that an atom's domain implies (``log``,
            ``sqrt``, ``entropy``, ``x ^ 1.5``, ...; possibly also the user's): the
            interior point starts strictly inside these rows.
    """

    label: str | None
    expr: object
    source: object = None
    cone: bool = False
    scale: object = None
    phase_one: object = None
    domain: bool = False


class Epi(NamedTuple):
    """An :data:`EPIGRAPH` entry.

    Attributes:
        shape: ``node -> shape`` of the auxiliary variable ``t``.
        rows: ``(args, t) -> [g, ...]``: the rows ``g <= 0`` that say ``atom(args) <= t``
            (``>= t`` for a concave atom); a ``("soc", u, s)`` tuple is the cone
            ``norm2(u) <= s``.
        value: ``t -> expr`` that replaces the atom.
        doc: the rows in words.
        tight: ``args -> expr``: the smallest feasible ``t`` (largest for a concave
            atom) at given arguments; a strictly feasible start is this plus one
            (minus one).
    """

    shape: Callable
    rows: Callable
    value: Callable
    doc: str
    tight: Callable


def _same(node):
    return tuple(node.shape)


def _arg_shape(node):
    return tuple(node.args[0].shape)


def _scalar(node):
    return ()


def _ident(t):
    return t


def _sum(t):
    return apply("sum", [t]) if t.ndim else t


def _atom(name):
    return lambda a: apply(name, list(a))


def _max_rows(a, t):
    return [sub(u, t) for u in a]


def _min_rows(a, t):
    return [sub(t, u) for u in a]


#: atom -> its epigraph (convex atoms) or hypograph (concave atoms), the only table
#: of the rewrite. Rows are ``g <= 0``.
EPIGRAPH: dict[str, Epi] = {
    "abs": Epi(_same, lambda a, t: [sub(a[0], t), sub(negate(a[0]), t)], _ident,
               "abs(u) -> t with u <= t, -u <= t", _atom("abs")),
    "pos": Epi(_same, lambda a, t: [sub(a[0], t), negate(t)], _ident,
               "pos(u) -> t with u <= t, 0 <= t", _atom("pos")),
    "neg": Epi(_same, lambda a, t: [sub(negate(a[0]), t), negate(t)], _ident,
               "neg(u) -> t with -u <= t, 0 <= t", _atom("neg")),
    "norm1": Epi(_arg_shape, lambda a, t: [sub(a[0], t), sub(negate(a[0]), t)], _sum,
                 "norm1(u) -> sum(t) with u <= t, -u <= t", _atom("abs")),
    "norm_inf": Epi(_scalar, lambda a, t: [sub(a[0], t), sub(negate(a[0]), t)], _ident,
                    "norm_inf(u) -> t with u <= t, -u <= t (t scalar)", _atom("norm_inf")),
    "max": Epi(lambda n: () if len(n.args) == 1 else tuple(n.shape), _max_rows, _ident,
               "max(u) -> t with u <= t; max(a, b) -> t with a <= t, b <= t", _atom("max")),
    "min": Epi(lambda n: () if len(n.args) == 1 else tuple(n.shape), _min_rows, _ident,
               "min(u) -> t with t <= u; min(a, b) -> t with t <= a, t <= b", _atom("min")),
    "norm2": Epi(_scalar, lambda a, t: [("soc", a[0], t)], _ident,
                 "norm2(u) -> t with the cone norm2(u) <= t", _atom("norm2")),
}


def _first(x):
    return index(x, 0)


def _tail(x):
    return index(x, slice(1, None))


#: set -> its rows as constraints ``(op, lhs, rhs)`` on the member ``x`` (psd has none:
#: a psd constraint among others needs a semidefinite solver).
SET_ROWS: dict[str, Callable] = {
    "nonneg": lambda x, a: [(">=", x, Constant(0))],
    "box": lambda x, a: [(">=", x, a["lower"]), ("<=", x, a["upper"])],
    "simplex": lambda x, a: [(">=", x, Constant(0)), ("==", apply("sum", [x]), a["value"])],
    "ball1": lambda x, a: [("<=", apply("norm1", [x]), a["radius"])],
    "ball2": lambda x, a: [("<=", apply("norm2", [x]), a["radius"])],
    "ballinf": lambda x, a: [("<=", apply("norm_inf", [x]), a["radius"])],
    "soc": lambda x, a: [("<=", apply("norm2", [_tail(x)]), _first(x))],
}


def soc_row(u, s):
    """The cone ``norm2(u) <= s`` (``s`` affine) as one smooth convex row ``g <= 0``.

    * ``s`` variable-free and known nonnegative: ``g = sum_squares(u) - s^2``,
      convex and smooth everywhere;
    * otherwise: ``g = sum_squares(u) / s - s`` (quadratic over linear), convex
      and smooth where ``s > 0`` (a second row ``-s <= 0`` keeps the iterates
      there: on ``s < 0`` the first row alone admits points outside the cone).
      It is undefined at ``s = 0``, so phase I uses
      ``norm2(u) - s`` (same strictly feasible set, defined everywhere).
      Neither ``norm2(u) - s`` for the main iterations (its Hessian blows up
      near the axis ``u = 0``, where iterates started at ``u = 0`` stay) nor
      ``sum_squares(u) - s^2`` (not a convex function of ``(u, s)``: phase I
      fails) works there.

    In both cases the multiplier of the user's ``norm2(u) - s <= 0`` is this
    row's times ``(norm2(u) + s) / d`` at the solution, ``d = 1`` for the
    first form and ``s`` for the second.

    Returns:
        ``(g, phase_one_g or None, (numerator, denominator or None))``.
    """
    norm = apply("norm2", [u])
    ss = apply("sum_squares", [u])
    if s.is_constant and s.sign.is_nonneg:
        return sub(ss, power(s, 2)), None, (norm + s, None)
    quad_over_lin = Apply(get_atom("div"), [ss, s])  # a variable divisor: built directly
    return sub(quad_over_lin, s), sub(norm, s), (norm + s, s)


def _polarity(m: Mono) -> int:
    return {Mono.INCREASING: 1, Mono.DECREASING: -1}.get(m, 0)


@dataclass
class Rewrite:
    """A problem rewritten for a KKT solver.

    Attributes:
        problem: the user's variables followed by the auxiliary ones (objective: the
            rewritten one; constraints live in ``ineq`` / ``eq``).
        smooth: ``(coeff, expr)`` objective terms to minimize, all smooth.
        ineq, eq: :class:`Row` blocks.
        aux: the auxiliary variables.
        notes: one line per rewritten atom (for ``explain()``).
        qp: True when the objective is quadratic and every row affine (a QP/LP).
        start: ``(aux variable, tight expr, +1 | -1)`` in creation order: evaluated one
            after the other, ``tight +- 1`` makes every epigraph row strictly feasible.
    """

    problem: Problem
    smooth: list
    ineq: list
    eq: list
    aux: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    qp: bool = False
    start: list = field(default_factory=list)


class _Rewriter:
    def __init__(self, taken) -> None:
        self.taken = set(taken)
        self.aux: list = []
        self.ineq: list = []
        self.notes: list = []
        self.start: list = []
        self.memo: dict = {}

    def _var(self, atom, shape):
        k = len(self.aux)
        name = f"{atom}_epi{k}"
        while name in self.taken:
            k += 1
            name = f"{atom}_epi{k}"
        self.taken.add(name)
        v = Variable(*shape, name=name)
        self.aux.append(v)
        return v

    def add_rows(self, gs, label=None, source=None):
        for g in gs:
            if isinstance(g, tuple):  # ("soc", u, s)
                e, e1, scale = soc_row(g[1], g[2])
                self.ineq.append(Row(label, e, source, True, scale if label else None, e1))
                if e1 is not None:  # s > 0: the quadratic-over-linear row's domain
                    self.ineq.append(Row(None, negate(g[2]), None))
            else:
                self.ineq.append(Row(label, g, source))

    def expr(self, e, pol: int):
        """``e`` with every non-smooth atom replaced (``pol``: +1 convex position,
        -1 concave position, 0 affine position)."""
        if e.smooth or e.is_constant:
            return e
        key = (id(e), pol)
        if key in self.memo:
            return self.memo[key][1]
        if isinstance(e, Let):
            out = self.expr(e.args[0], pol)
        elif isinstance(e, Apply):
            monos = e.atom.monotonicity(e.args, e.static)
            args = [self.expr(a, pol * _polarity(m)) for a, m in zip(e.args, monos[:len(e.args)],
                                                                      strict=True)]
            rule = None if e.atom.smooth else EPIGRAPH.get(e.atom.name)
            if rule is not None:
                want = -1 if e.atom.curvature_of(e.args, e.static) is Curvature.CONCAVE else 1
                if pol != want:
                    where = {1: "convex", -1: "concave", 0: "affine"}[pol]
                    raise Unsupported(f"{expr_text(e, limit=60)} occurs in a {where} position",
                                      span=e.span, hint="the problem is not DCP there")
                t = self._var(e.atom.name, rule.shape(e))
                self.start.append((t, rule.tight(args), want))
                self.add_rows(rule.rows(args, t))
                self.notes.append(f"{expr_text(e, limit=50)} -> {rule.value(t)}: {rule.doc}")
                out = rule.value(t)
            elif e.atom.smooth:
                out = e if all(a is b for a, b in zip(args, e.args, strict=True)) \
                    else Apply(e.atom, args, e.static, span=e.span)
            else:  # pragma: no cover - every non-smooth atom has an entry
                raise Unsupported(f"no epigraph for atom {e.atom.name}", span=e.span)
        else:  # pragma: no cover - leaves and constants are smooth
            out = e
        self.memo[key] = (e, out)  # keep e alive: its id must not be reused by a new node
        return out

    def constraint(self, c, eq: list) -> None:
        """Rows of one user constraint or membership."""
        if isinstance(c, Membership):
            kind = c.set.kind.name
            if kind not in SET_ROWS:
                raise Unsupported(f"set {kind} cannot be written as rows of a KKT solver "
                                  f"({c})", span=c.span,
                                  hint="a psd variable needs a projection method: keep it the "
                                       "only constraint on that variable")
            args = dict(zip(c.set.kind.params, c.set.args, strict=False))
            for op, lhs, rhs in SET_ROWS[kind](c.expr, args):
                self._cmp(op, lhs, rhs, c.label, c, eq)
            return
        self._cmp(c.op, c.lhs, c.rhs, c.label, c, eq)

    def _cmp(self, op, lhs, rhs, label, source, eq):
        if op == "==":
            eq.append(Row(label, self.expr(sub(lhs, rhs), 0), source))
            return
        if op == ">=":
            lhs, rhs = rhs, lhs
        if isinstance(lhs, Apply) and lhs.atom.name == "norm2" and not lhs.is_constant \
                and rhs.degree is not None and rhs.degree <= 1:
            # norm2(u) <= s with an affine s: one cone row, no auxiliary variable
            (m,) = lhs.atom.monotonicity(lhs.args, lhs.static)
            u = self.expr(lhs.args[0], _polarity(m))
            self.add_rows([("soc", u, rhs)], label, source)
            return
        self.ineq.append(Row(label, self.expr(sub(lhs, rhs), 1), source))


def rewrite(problem) -> Rewrite:
    r"""Rewrite a bound, DCP problem as smooth objective terms and rows.

    Args:
        problem: the user's :class:`~optlayer.ir.Problem` (concrete shapes).

    Returns:
        :class:`Rewrite`.

    Raises:
        Unsupported: a set without rows (``psd``) or an atom outside a DCP position.

    Example:
        >>> import optlayer as ol
        >>> prob = ol.check("param A[4, 2]\nparam b[4]\nvar x[2]\n"
        ...                 "minimize norm1(A @ x - b)\nsubject to\n  cap: max(x) <= 1", dims={})
        >>> rw = rewrite(prob)
        >>> [str(e) for _, e in rw.smooth], list(rw.problem.vars), rw.qp
        (['sum(norm1_epi0)'], ['x', 'norm1_epi0', 'max_epi1'], True)
        >>> for r in rw.ineq:
        ...     print(r.label, "|", r.expr)
        None | A @ x - b - norm1_epi0
        None | -(A @ x - b) - norm1_epi0
        None | x - max_epi1
        cap | max_epi1 - 1
    """
    rw = _Rewriter(list(problem.vars) + list(problem.params) + list(problem.lets))
    sense = 1 if problem.objective.sense == "minimize" else -1
    smooth = []
    for t in objective_terms(problem):
        coeff = t.coeff * sense
        smooth.append((coeff, rw.expr(t.expr, 1 if coeff > 0 else -1)))
    eq: list = []
    for c in list(problem.constraints) + list(problem.attribute_constraints()):
        rw.constraint(c, eq)
    for c in problem.domain_constraints():  # arg >= 0 of log, sqrt, entropy, ...
        g = rw.expr(sub(c.rhs, c.lhs), 1)
        same = next((i for i, r in enumerate(rw.ineq) if equal(g, r.expr)), None)
        if same is None:
            rw.ineq.append(Row(None, g, None, domain=True))
        else:
            rw.ineq[same] = rw.ineq[same]._replace(domain=True)
    qp = all(e.degree is not None for _, e in smooth) and all(
        r.expr.degree is not None and r.expr.degree <= 1 and not r.cone for r in rw.ineq + eq)
    objective = minimize(sum((c * e for c, e in smooth[1:]), smooth[0][1] * smooth[0][0])
                         if smooth else Constant(0))
    vars_ = list(problem.vars.values()) + rw.aux
    new = Problem(objective, [], vars=vars_, params=list(problem.params.values()),
                  dims=dict(problem.dims), check=False)
    return Rewrite(new, smooth, rw.ineq, eq, rw.aux, rw.notes, qp, rw.start)
