"""optlayer.solvers (see DESIGN.md section 4)."""

from optlayer.solvers.qp import InteriorPointQP, KKTSolution, QPSolution, QPState, solve_qp

__all__ = [
    "InteriorPointQP",
    "KKTSolution",
    "QPSolution",
    "QPState",
    "solve_qp",
]
