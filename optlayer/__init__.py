"""optlayer: declared optimization problems as differentiable PyTorch layers.

The public names of DESIGN.md section 2 are re-exported here.
"""

from optlayer import conditions, linalg, projections, prox, solvers  # ol.solvers.LBFGS, ...

# The .opt language (optlayer.api -> optlayer.dsl, loaded on first call).
from optlayer.api import check, compile, load, parse
from optlayer.errors import (
    BindingError,
    NonConvexError,
    OptError,
    OptSyntaxError,
    OptTypeError,
    SolverError,
)
from optlayer.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp

# Python expression API (optlayer.ir): leaves, objective, constraints, and every
# atom and set of the registries (generated in optlayer.ir.functions).
from optlayer.ir import Constant, Parameter, Problem, Variable, let, maximize, member, minimize
from optlayer.ir.functions import (
    abs,
    ball1,
    ball2,
    ballinf,
    box,
    diag,
    dim,
    dot,
    entropy,
    exp,
    huber,
    kl_div,
    log,
    logistic,
    logsumexp,
    max,
    mean,
    min,
    neg,
    nonneg,
    norm1,
    norm2,
    norm_inf,
    pos,
    psd,
    quad_form,
    simplex,
    soc,
    softplus,
    sqrt,
    square,
    sum,
    sum_squares,
    trace,
)

# Layers (optlayer.layer registers Problem.layer's factory on import).
from optlayer.layer import OptLayer
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
    # implicit differentiation and catalogs
    "custom_fixed_point", "custom_root", "root_jvp", "root_vjp",
    "conditions", "linalg", "projections", "prox", "solvers",
    # .opt language
    "check", "compile", "load", "parse",
    "OptLayer",
    # Python expression API
    "Constant", "Parameter", "Problem", "Variable", "let", "maximize", "member", "minimize",
    "abs", "ball1", "ball2", "ballinf", "box", "diag", "dim", "dot", "entropy", "exp",
    "huber", "kl_div", "log", "logistic", "logsumexp", "max", "mean", "min", "neg",
    "nonneg", "norm1", "norm2", "norm_inf", "pos", "psd", "quad_form", "simplex", "soc",
    "softplus", "sqrt", "square", "sum", "sum_squares", "trace",
]
