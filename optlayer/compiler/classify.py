"""Method selection (DESIGN.md section 5): read the IR, pick the optimality map.

:func:`classify` returns a :class:`Plan` describing the problem as the
solvers see it: smooth terms, one simple set per variable (recognised in any
spelling), prox-able terms, the pure projection pattern, and the methods that
apply, default first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from optlayer import defaults
from optlayer.compiler.epigraph import Unsupported, rewrite
from optlayer.errors import OptTypeError
from optlayer.ir import (
    Apply,
    Constant,
    Constraint,
    Membership,
    Variable,
    objective_terms,
    prox_term,
)

__all__ = ["METHODS", "SetSpec", "Plan", "classify"]

#: Every method name, in the order of the method table.
METHODS = ("projection", "stationary", "proj_grad", "prox_grad", "mirror_descent", "kkt")

_PROJECTABLE = {"nonneg", "box", "simplex", "ball1", "ball2", "ballinf", "psd", "soc"}
#: Simple sets whose rows are those of a QP as they stand (bounds, and one equality per
#: simplex): with a quadratic objective, ``kkt`` is the default (``_sets_as_qp``).
_QP_SETS = {"nonneg", "box", "simplex"}
_NORM_BALL = {"norm1": "ball1", "norm2": "ball2", "norm_inf": "ballinf"}


@dataclass
class SetSpec:
    """A simple set for one variable: ``kind`` with argument expressions (None: default)."""

    kind: str
    args: dict = field(default_factory=dict)  # name -> Expr or None
    spelling: str = ""

    def __str__(self) -> str:
        return self.spelling or self.kind


@dataclass
class Plan:
    """What the compiler knows about a problem after analysis.

    Attributes:
        method: the chosen method (one of :data:`METHODS`).
        applicable: every method that applies, the default first.
        smooth: ``(coeff, expr)`` smooth terms of the objective to minimize.
        prox: variable name -> ``(prox function name, weight Expr or None, hyper)``.
        sets: variable name -> :class:`SetSpec`.
        projection: ``(variable name, y Expr, scale)`` for the projection pattern.
        why: one line per reason, printed by ``explain()``.
        ineq, eq: :class:`~optlayer.compiler.epigraph.Row` blocks ``g <= 0`` / ``g == 0``
            (labels kept) for the KKT method, after the epigraph rewrite; empty when
            the rewrite does not apply.
        qp_shaped: the rewritten problem is a QP/LP (quadratic objective, affine rows).
        solver: for ``kkt``: ``"qp"`` (:func:`optlayer.solvers.solve_qp`) or ``"convex"``
            (:class:`optlayer.solvers.ConvexInteriorPoint`); None otherwise.
        problem: the problem the :class:`Program` lowers: the user's, or for ``kkt`` the
            rewritten one (user variables first, then the epigraph variables).
        user_vars: the user's variable names, in order (what the layer returns).
        notes: one line per atom the epigraph rewrite replaced.
        start: for ``kkt``: how to start the epigraph variables strictly feasible
            (:attr:`optlayer.compiler.epigraph.Rewrite.start`).
    """

    method: str
    applicable: list
    smooth: list
    prox: dict
    sets: dict
    projection: tuple | None
    why: list
    ineq: list
    eq: list
    qp_shaped: bool
    solver: str | None = None
    problem: object = None
    user_vars: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    start: list = field(default_factory=list)
    guards: list = field(default_factory=list)


def _free(e) -> bool:
    return not e.variables()


def _is_zero(e) -> bool:
    return isinstance(e, Constant) and not hasattr(e.value, "shape") and float(e.value) == 0.0


def _set_facts(problem):
    """Per-variable facts from attributes, memberships and constraints; leftovers."""
    facts = {n: {"lower": [], "upper": [], "sum": None, "member": [], "ball": []}
             for n in problem.vars}
    rest = []
    for v in problem.vars.values():
        if "nonneg" in v.attrs or "pos" in v.attrs:
            facts[v.name]["lower"].append((Constant(0), f"var {v.name} nonneg"))
        if "nonpos" in v.attrs:
            facts[v.name]["upper"].append((Constant(0), f"var {v.name} nonpos"))
        if "psd" in v.attrs:
            facts[v.name]["member"].append((SetSpec("psd", {}, f"var {v.name} psd"), None))
        if "symmetric" in v.attrs and "psd" not in v.attrs:
            rest.append(Constraint("==", v, _transpose(v)))
    for c in problem.constraints:
        if isinstance(c, Membership):
            if isinstance(c.expr, Variable) and c.set.kind.name in _PROJECTABLE:
                args = {p: a for p, a in zip(c.set.kind.params, c.set.args, strict=False)}
                facts[c.expr.name]["member"].append((SetSpec(c.set.kind.name, args, str(c)), c))
            else:
                rest.append(c)
            continue
        lhs, rhs, op = c.lhs, c.rhs, c.op
        if isinstance(rhs, Variable) and _free(lhs):
            lhs, rhs, op = rhs, lhs, {"<=": ">=", ">=": "<=", "==": "=="}[op]
        if isinstance(lhs, Variable) and _free(rhs) and op != "==":
            facts[lhs.name]["lower" if op == ">=" else "upper"].append((rhs, str(c)))
            continue
        if (isinstance(lhs, Apply) and _free(rhs) and len(lhs.args) == 1
                and isinstance(lhs.args[0], Variable) and not rhs.shape):
            v = lhs.args[0].name
            if lhs.atom.name == "sum" and op == "==":
                facts[v]["sum"] = (rhs, str(c))
                continue
            if lhs.atom.name in _NORM_BALL and op == "<=":
                facts[v]["ball"].append((SetSpec(_NORM_BALL[lhs.atom.name], {"radius": rhs},
                                                 str(c)), c))
                continue
        rest.append(c)
    return facts, rest


def _transpose(v):
    from optlayer.ir import transpose

    return transpose(v)


def _combine(name, f):
    """One SetSpec for a variable from its facts, or None (no set) / False (not simple)."""
    specs = [s for s, _ in f["member"]] + [s for s, _ in f["ball"]]
    lower, upper = f["lower"], f["upper"]
    if f["sum"] is not None:
        if specs or upper or len(lower) != 1 or not _is_zero(lower[0][0]):
            return False
        value, text = f["sum"]
        return SetSpec("simplex", {"value": value}, f"{lower[0][1]} and {text}")
    if specs:
        if lower or upper or len(specs) > 1:
            return False
        return specs[0]
    if len(lower) > 1 or len(upper) > 1:
        return False
    if not lower and not upper:
        return None
    text = " and ".join(t for _, t in lower + upper)
    if lower and not upper and _is_zero(lower[0][0]):
        return SetSpec("nonneg", {}, text)
    return SetSpec("box", {"lower": lower[0][0] if lower else None,
                           "upper": upper[0][0] if upper else None}, text)


def _projection_pattern(problem, terms, sets):
    """``c * sum_squares(x - y)`` (or ``norm2(x - y)^2``) with x in a catalog set."""
    if len(terms) != 1 or len(problem.vars) != 1 or terms[0].coeff != 1:
        return None
    e, scale = terms[0].expr, None
    if isinstance(e, Apply) and e.atom.name == "mul" and _free(e.args[0]):
        scale, e = e.args[0], e.args[1]
    if not isinstance(e, Apply):
        return None
    if e.atom.name == "power" and e.static[0] == 2 and isinstance(e.args[0], Apply) \
            and e.args[0].atom.name == "norm2":
        e = e.args[0]
    elif e.atom.name != "sum_squares":
        return None
    d = e.args[0]
    if not (isinstance(d, Apply) and d.atom.name == "sub"):
        return None
    a, b = d.args
    if isinstance(a, Variable) and _free(b):
        v, y = a, b
    elif isinstance(b, Variable) and _free(a):
        v, y = b, a
    else:
        return None
    spec = sets.get(v.name)
    if not spec or spec.kind not in _PROJECTABLE or tuple(y.shape) != tuple(v.shape):
        return None
    if scale is not None and not (isinstance(scale, Constant) and float(scale.value) > 0
                                  or scale.sign.name in ("POSITIVE",)):
        return None
    return (v.name, y, scale)


def classify(problem, method: str | None = None) -> Plan:
    """Classify a bound, DCP-checked problem.

    Args:
        problem: an :class:`optlayer.ir.Problem` with concrete shapes.
        method: force a method (must be applicable), or None for the default.

    Returns:
        :class:`Plan`.

    Raises:
        OptTypeError: ``method`` is unknown or does not apply to the problem
            (the message lists the methods that do).
    """
    if method is not None and method not in METHODS:
        raise OptTypeError(f"unknown method {method!r}",
                           hint="methods are: " + ", ".join(METHODS))
    sense = 1 if problem.objective.sense == "minimize" else -1
    terms = objective_terms(problem)
    terms = [type(t)(t.coeff * sense, t.expr) for t in terms]
    facts, rest = _set_facts(problem)
    sets, not_simple = {}, []
    for name, f in facts.items():
        s = _combine(name, f)
        if s is False:
            not_simple.append(name)
        elif s is not None:
            sets[name] = s
    smooth, prox, why = [], {}, []
    nonsmooth_left = []
    guards = []
    for t in terms:
        if t.expr.smooth:
            smooth.append((t.coeff, t.expr))
            continue
        arg = _smooth_norm(t)
        if arg is not None:
            smooth.append((t.coeff, t.expr))
            guards.append(arg)
            continue
        pt = prox_term(t.expr)
        if pt is not None and t.coeff == 1 and pt.atom.prox and pt.variable.name not in prox:
            prox[pt.variable.name] = (pt.atom.prox, pt.weight, pt.atom.prox_hyper)
        else:
            nonsmooth_left.append(t)
    all_smooth = not nonsmooth_left and not prox
    simple = not rest and not not_simple
    if guards:
        why.append("norm2 of an affine argument is smooth where the argument is not 0: "
                   + ", ".join(f"norm2({u})" for u in guards) + " counted in f; each call "
                   "checks per item that the argument cannot vanish (its least-squares "
                   "residual is above sqrt(eps) times its constant part), and solves a call "
                   "where some item fails by kkt")
    applicable = []
    projection = _projection_pattern(problem, terms, sets) if simple else None
    if projection is not None:
        applicable.append("projection")
        why.append(f"the objective is a squared distance to {projection[0]!r} and "
                   f"{projection[0]} is in {sets[projection[0]]}, a set with a closed-form "
                   "projection")
    if simple and all_smooth and not sets:
        applicable.append("stationary")
        why.append("the objective is smooth and there are no constraints")
    prox_ok = simple and not nonsmooth_left and all(
        v not in sets or (sets[v].kind == "nonneg" and prox[v][0] == "lasso") for v in prox)
    if simple and all_smooth and sets:
        applicable.append("proj_grad")
        why.append("the objective is smooth and each constrained variable lies in one simple "
                   "set: " + "; ".join(f"{v} in {s.kind} ({s})" for v, s in sets.items()))
    if prox_ok and (prox or sets):
        applicable.append("prox_grad")
        if prox:
            why.append("the non-smooth terms have closed-form proxes: " + ", ".join(
                f"{p[0]} on {v}" for v, p in prox.items()))
    has_entropy = any(_has_entropy(e) for _, e in smooth)
    if simple and all_smooth and has_entropy and all(s.kind == "simplex" for s in sets.values()) \
            and len(sets) == len(problem.vars):
        applicable.append("mirror_descent")
        if has_entropy:
            why.append("entropy terms over simplices: the KL (mirror descent) geometry fits")
    # KKT: every constraint becomes rows, non-smooth atoms become epigraph variables.
    rw, rw_error = _rewrite(problem)
    qp_shaped = rw is not None and rw.qp
    solver = None
    if qp_shaped and _have_qp():
        applicable.append("kkt")
        solver = "qp"
        why.append("the objective is quadratic/linear and the constraints are affine: a QP"
                   + (" (after the epigraph rewrite)" if rw.aux else ""))
    elif rw is not None and not qp_shaped and (guards or not applicable):
        applicable.append("kkt")
        solver = "convex"
        why.append("after the epigraph rewrite, kkt with the convex interior point also "
                   "applies: it solves the calls where that check fails" if applicable[:-1] else
                   "the constraints are general smooth convex functions (after the epigraph "
                   "rewrite): KKT with the convex interior point method")
    if solver is not None and rw.aux:
        why.append(f"non-smooth atoms became {len(rw.aux)} epigraph variable(s): "
                   + "; ".join(rw.notes))
    if not applicable:
        reasons = []
        if nonsmooth_left:
            reasons.append("non-smooth terms without a closed-form prox: " +
                           ", ".join(str(t.expr) for t in nonsmooth_left))
        if qp_shaped:
            reasons.append("it is a QP (method 'kkt') but optlayer.solvers.solve_qp is not "
                           "available in this build")
        elif rw_error is not None:
            reasons.append(f"the KKT rewrite does not apply: {rw_error}")
        hint = ("a psd variable can only be projected onto: keep `X in psd` its only "
                "constraint (with a smooth objective)" if rw_error and "psd" in rw_error
                else "write the problem in DCP form with convex constraints")
        raise OptTypeError("no method applies to this problem: " + "; ".join(reasons or ["?"]),
                           hint=hint)
    default = applicable[0]
    if "mirror_descent" in applicable and has_entropy and default != "projection":
        default = "mirror_descent"
    if default == "proj_grad" and solver == "qp" and _sets_as_qp(problem, sets):
        default = "kkt"
        why.append("a quadratic objective on polyhedral sets only (nonneg, box, simplex) is "
                   f"a QP; up to {defaults.SETS_AS_QP_MAX_SIZE} unknowns the QP interior "
                   "point is faster and surer than projected gradient (method='proj_grad' "
                   "still applies)")
    chosen = method or default
    if chosen not in applicable:
        hint = "applicable methods: " + ", ".join(applicable)
        if chosen == "kkt" and rw is not None:
            hint += ("; kkt with the convex interior point is offered only when no other "
                     "method applies (kkt with solve_qp whenever the problem is a QP/LP)")
        raise OptTypeError(f"method {chosen!r} does not apply to this problem", hint=hint)
    applicable = [default] + [m for m in applicable if m != default]
    ineq, eq = (rw.ineq, rw.eq) if rw is not None else ([], [])
    plan = Plan(chosen, applicable, smooth, prox, sets, projection, why, ineq, eq, qp_shaped,
                solver=solver if chosen == "kkt" else None, problem=problem,
                user_vars=list(problem.vars), notes=rw.notes if rw is not None else [],
                guards=guards if chosen != "kkt" else [])
    if chosen == "kkt":
        plan.smooth, plan.problem, plan.start = rw.smooth, rw.problem, rw.start
    return plan


def _sets_as_qp(problem, sets) -> bool:
    """True when the problem's sets are all QP rows as they stand (:data:`_QP_SETS`) and it
    has at most ``defaults.SETS_AS_QP_MAX_SIZE`` unknowns (a larger one keeps
    projected gradient: its projections cost O(n), the QP's dense rows O(n^2))."""
    size = sum(math.prod(v.shape) for v in problem.vars.values())
    return (size <= defaults.SETS_AS_QP_MAX_SIZE
            and all(s.kind in _QP_SETS for s in sets.values()))


def _rewrite(problem):
    """The epigraph rewrite of ``problem``, or ``(None, reason)``."""
    try:
        return rewrite(problem), None
    except Unsupported as e:
        return None, e.message


def _have_qp() -> bool:
    try:
        from optlayer.solvers import solve_qp  # noqa: F401
    except ImportError:
        return False
    return True


def _has_entropy(e) -> bool:
    from optlayer.ir import postorder

    return any(isinstance(n, Apply) and n.atom.name in ("entropy", "kl_div") for n in postorder(e))


def _smooth_norm(term):
    """The argument ``u`` of a term ``norm2(u)`` or ``c * norm2(u)`` (``c`` a variable-free
    scalar, ``u`` affine in the variables and not a variable itself), else None."""
    e = term.expr
    if isinstance(e, Apply) and e.atom.name == "mul":
        a, b = e.args
        e = b if _free(a) and a.ndim == 0 else a if _free(b) and b.ndim == 0 else None
    if not (isinstance(e, Apply) and e.atom.name == "norm2" and len(e.args) == 1):
        return None
    u = e.args[0]
    if isinstance(u, Variable) or not u.variables() or u.degree != 1:
        return None
    return u
