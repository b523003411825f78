"""Default numerical settings, in one place.

Every solver and linear solver reads its default ``tol`` and ``maxiter`` from
here so that the catalog shares one vocabulary and one set of defaults.
"""

from __future__ import annotations

import torch

__all__ = ["tol", "eps", "MAXITER", "LINEAR_ITERS_PER_DIM", "GMRES_RESTART", "IMPLICIT_DENSE_MAX"]

_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}

#: Default iteration caps by solver family.
MAXITER = {
    "linear": 1000,          # Krylov linear solvers (capped at a multiple of n)
    "first_order": 5000,     # FISTA, projected gradient, mirror descent
    "quasi_newton": 500,     # L-BFGS, nonlinear CG
    "newton": 50,            # Newton, Gauss-Newton, Levenberg-Marquardt
    "interior_point": 50,    # QP / convex interior point
    "fixed_point": 1000,     # fixed point iteration, Anderson, Sinkhorn
}


def tol(dtype: torch.dtype) -> float:
    """Default convergence tolerance for ``dtype`` (float64: 1e-10, float32: 1e-5)."""
    try:
        return _TOL[dtype]
    except KeyError:
        raise TypeError(f"optlayer works with floating dtypes; got {dtype}") from None


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``."""
    return torch.finfo(dtype).eps


#: Linear solvers: default ``maxiter`` is ``min(MAXITER["linear"], LINEAR_ITERS_PER_DIM * n)``.
LINEAR_ITERS_PER_DIM = 10
#: Restart length of GMRES (Krylov vectors kept per cycle).
GMRES_RESTART = 30
#: custom_root's default backward solve is dense (materialise, LU) up to this
#: many unknowns, and matrix-free GMRES above it (see docs/implicit.md).
IMPLICIT_DENSE_MAX = 2000

# .opt language limits (optlayer.dsl): inputs beyond them end in an OptSyntaxError
# instead of a RecursionError or a long hang.
#: Longest accepted source text, in characters.
DSL_MAX_SOURCE_CHARS = 100_000
#: Deepest accepted expression nesting (operators, calls, brackets' contents).
DSL_MAX_DEPTH = 1000

# compiler / OptLayer (optlayer.compiler, optlayer.layer)
#: Unconstrained smooth problems with at most this many unknowns use Newton; larger ones FISTA.
NEWTON_MAX_SIZE = 200
