"""optlayer.solvers: JAXopt-style iterative solvers with implicit differentiation.

Each solver is a dataclass with ``init_state / update / run(init, *args) ->
OptStep(params, state)``; the state starts with ``iter_num, error, status``
(batch shaped); ``implicit_diff=True`` differentiates by ``custom_root`` on the
solver's ``optimality_fun``. See docs/solvers.md.
"""

from optlayer.solvers._base import IterativeSolver, OptStep
from optlayer.solvers.fixed_point import (
    AndersonAcceleration,
    AndersonState,
    FixedPointIteration,
    FixedPointState,
)
from optlayer.solvers.interior_point import ConvexInteriorPoint, InteriorPointState
from optlayer.solvers.mirror_descent import MirrorDescent, MirrorDescentState
from optlayer.solvers.newton import LBFGS, LBFGSState, Newton, NewtonState
from optlayer.solvers.proximal_gradient import (
    GradientDescent,
    ProjectedGradient,
    ProxGradState,
    ProximalGradient,
)
from optlayer.solvers.qp import InteriorPointQP, KKTSolution, QPSolution, QPState, solve_qp

__all__ = [
    "AndersonAcceleration",
    "AndersonState",
    "ConvexInteriorPoint",
    "FixedPointIteration",
    "FixedPointState",
    "GradientDescent",
    "InteriorPointState",
    "IterativeSolver",
    "LBFGS",
    "LBFGSState",
    "MirrorDescent",
    "MirrorDescentState",
    "Newton",
    "NewtonState",
    "OptStep",
    "ProjectedGradient",
    "ProxGradState",
    "ProximalGradient",
    "InteriorPointQP",
    "KKTSolution",
    "QPSolution",
    "QPState",
    "solve_qp",
]
