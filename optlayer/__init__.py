"""optlayer: declared optimization problems as differentiable PyTorch layers.

The public names of DESIGN.md section 2 are re-exported here.
"""

from optlayer import linalg, projections, prox  # subpackages: ol.linalg.solve_cg, ...
from optlayer.errors import (
    BindingError,
    NonConvexError,
    OptError,
    OptSyntaxError,
    OptTypeError,
    SolverError,
)
from optlayer.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp
from optlayer.status import OptimizationWarning, Status

__version__ = "0.1.0.dev0"

__all__ = [
    "OptError",
    "OptSyntaxError",
    "OptTypeError",
    "NonConvexError",
    "BindingError",
    "SolverError",
    "OptimizationWarning",
    "Status",
    "custom_fixed_point",
    "custom_root",
    "linalg",
    "projections",
    "prox",
    "root_jvp",
    "root_vjp",
]
