"""optlayer.compiler: method selection, torch lowering and QP canonicalisation.

``compile_problem(problem, method=None)`` classifies a bound problem
(:func:`classify`, DESIGN.md section 5) and returns a :class:`Program` of
batched torch functions of ``(z, params)``; ``explain_plan`` gives the text
of ``OptLayer.explain()``. For method ``kkt`` the problem is first rewritten
(:func:`rewrite`: non-smooth atoms -> epigraph variables and rows, one
:data:`EPIGRAPH` table) and solved by ``solve_qp`` (:func:`canonicalize_qp`)
or the convex interior point (:func:`solve_convex`).
"""

from optlayer.compiler.canon import canonicalize_qp, solve_convex
from optlayer.compiler.classify import METHODS, Plan, SetSpec, classify
from optlayer.compiler.epigraph import EPIGRAPH, SET_ROWS, Rewrite, Row, rewrite
from optlayer.compiler.explain import explain_plan
from optlayer.compiler.lower import Layout, expand_params
from optlayer.compiler.program import Program, SolveResult

__all__ = ["EPIGRAPH", "METHODS", "SET_ROWS", "Layout", "Plan", "Program", "Rewrite", "Row",
           "SetSpec", "SolveResult", "canonicalize_qp", "classify", "compile_problem",
           "expand_params", "explain_plan", "rewrite", "solve_convex"]


def compile_problem(problem, method=None) -> Program:
    """Classify ``problem`` (bound, DCP-checked) and lower it to a :class:`Program`."""
    plan = classify(problem, method)
    return Program(plan.problem, plan)
