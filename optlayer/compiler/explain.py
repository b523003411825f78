"""``explain()`` text: the method-table row, why it applies, the optimality map, the solver."""

from __future__ import annotations

from optlayer import defaults

__all__ = ["explain_plan", "forward_solver", "ROWS"]

#: method -> (method-table row, optimality map, forward solver)
ROWS = {
    "projection": ("objective is ||x - y||^2 with x in a set of the catalog",
                   "x = proj_C(y) (closed form; differentiated through the projection)",
                   "the closed-form projection itself"),
    "stationary": ("smooth objective, no constraints",
                   "F(x) = grad f(x) = 0", "FISTA with backtracking and adaptive restart"),
    "proj_grad": ("smooth objective, each var in one simple set",
                  "x = proj_C(x - eta grad f(x))  (projected-gradient fixed point)",
                  "accelerated projected gradient (FISTA, backtracking, adaptive restart)"),
    "prox_grad": ("smooth + prox-able non-smooth terms, no other constraints",
                  "x = prox_{eta g}(x - eta grad f(x))  (proximal-gradient fixed point)",
                  "FISTA with backtracking and adaptive restart"),
    "mirror_descent": ("smooth objective on simplices (entropy terms)",
                       "x = normalize(x * exp(-eta grad f(x)))  (KL mirror-descent fixed point)",
                       "exponentiated gradient with backtracking"),
    "kkt": ("affine constraints / QP / LP",
            "KKT: Qx + p + G'z + A'y = 0, Ax = b, z * (Gx - h) = 0",
            "optlayer.solvers.solve_qp: active-set methods for small batches with a "
            "positive definite Q, else (and for the items they leave) a batched "
            "primal-dual interior point; backward reuses its KKT system"),
    "kkt_convex": ("general smooth convex constraints",
                   "KKT: grad f + dg' lam + A' nu = 0, Ax = b, lam * g(x) = 0 "
                   "(optlayer.conditions.kkt, custom_root)",
                   "primal-dual convex interior point with slack variables; derivatives "
                   "from data for affine, quadratic and cone rows and one smooth atom "
                   "(exp, log, logsumexp, ...) of an affine argument, from autograd for "
                   "the others (optlayer.solvers.ConvexInteriorPoint, phase I from z = 0)"),
}


#: the forward solver of a quadratic objective under one quadratic row (and nothing else)
ONE_ROW = ("Newton on the multiplier of the one quadratic row (the secular equation of "
           "trust-region methods, optlayer.solvers.secular)")

#: :meth:`Program.forward_solver` -> the solver in words (None: the method's ROWS entry)
SOLVERS = {
    "newton": "Newton with Armijo backtracking (one step when f is quadratic)",
    "fbn": "forward-backward Newton (semismooth Newton on the fixed-point residual, Armijo "
           "on the forward-backward envelope)",
    "normal_newton": "semismooth Newton on the normal map y - prox(y) + eta grad f(prox(y)) "
                     "(Armijo on its norm; FISTA with Newton steps finishes what it leaves), "
                     "f and its Hessian in closed form",
    "mirror": None,
    "first_order": None,
}


def forward_solver(plan, program) -> str:
    """The forward solver ``program`` runs (:meth:`Program.forward_solver`), in words: the
    first-order loops take Newton steps up to ``defaults.FP_NEWTON_MAX_SIZE`` unknowns."""
    kind = program.forward_solver()
    solver = SOLVERS[kind]
    if solver is not None:
        return solver
    solver = ROWS[plan.method][2]
    if plan.method != "stationary" and program.layout.size <= defaults.FP_NEWTON_MAX_SIZE:
        solver += ", with Newton steps on the fixed-point residual"
    return solver


def _derivatives(program) -> str:
    """Where the solvers of the smooth paths take ``grad f`` and its Hessian from."""
    from optlayer.compiler.quadratic import is_quadratic
    from optlayer.compiler.smooth import objective_terms

    if is_quadratic([e for _, e in program.plan.smooth]):
        return "(Q, p) of the quadratic f, read off once per call"
    if objective_terms(program) is not None:
        return ("closed form: quadratic terms as data, smooth atoms of affine arguments "
                "(optlayer.compiler.smooth.objective_model)")
    return "autograd on the lowered objective"


def explain_plan(plan, problem, program=None) -> str:
    """Readable explanation of a :class:`~optlayer.compiler.Plan`; with its
    :class:`~optlayer.compiler.Program`, the forward solver it runs."""
    key = "kkt_convex" if plan.method == "kkt" and plan.solver == "convex" else plan.method
    row, fmap, solver = ROWS[key]
    if program is not None and key in ("stationary", "proj_grad", "prox_grad",
                                       "mirror_descent"):
        solver = forward_solver(plan, program)
    if program is not None and key == "kkt_convex":
        from optlayer.compiler.canon import one_quadratic_row

        if one_quadratic_row(program):
            solver = (f"{ONE_ROW}; the items it cannot certify (an infeasible row, an "
                      f"objective that is not strictly convex) go to the {solver}")
    lines = [f"method: {plan.method}", f"  table row: {row}", "  why:"]
    lines += [f"    - {w}" for w in plan.why] or ["    - (forced)"]
    lines += [f"  optimality map: {fmap}", f"  solver: {solver}"]
    if program is not None and key in ("stationary", "proj_grad", "prox_grad", "kkt_convex"):
        lines.append(f"  derivatives of f: {_derivatives(program)}")
    lines += [f"  applicable methods: {', '.join(plan.applicable)} "
              f"(default {plan.applicable[0]})", f"  variables: {', '.join(problem.vars)}"]
    aux = [n for n in getattr(plan.problem, "vars", {}) if n not in problem.vars]
    if aux:
        lines.append(f"  epigraph variables (internal, not returned): {', '.join(aux)}")
    return "\n".join(lines)
