"""optlayer.compiler: method selection, torch lowering and QP canonicalisation.

``compile_problem(problem, method=None)`` classifies a bound problem
(:func:`classify`, DESIGN.md section 5) and returns a :class:`Program` of
batched torch functions of ``(z, params)``; ``explain_plan`` gives the text
of ``OptLayer.explain()``.
"""

from optlayer.compiler.canon import canonicalize_qp
from optlayer.compiler.classify import METHODS, Plan, SetSpec, classify
from optlayer.compiler.explain import explain_plan
from optlayer.compiler.lower import Layout, expand_params
from optlayer.compiler.program import Program, SolveResult

__all__ = ["METHODS", "Layout", "Plan", "Program", "SetSpec", "SolveResult",
           "canonicalize_qp", "classify", "compile_problem", "expand_params", "explain_plan"]


def compile_problem(problem, method=None) -> Program:
    """Classify ``problem`` (bound, DCP-checked) and lower it to a :class:`Program`."""
    plan = classify(problem, method)
    return Program(plan.problem, plan)
