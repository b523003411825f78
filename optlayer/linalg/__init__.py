"""optlayer.linalg: batched, pytree-aware linear solvers sharing one protocol.

Every solver is called as ``solve(matvec, b, *, init=None, ridge=None, tol=None,
maxiter=None, on_failure="warn") -> x`` and returns ``x`` with
``matvec(x) + ridge * x == b``, so any of them plugs into
``optlayer.custom_root(..., solve=...)``. See docs/linalg.md.

Matrix-free (Krylov): :func:`solve_cg` (symmetric positive definite),
:func:`solve_gmres`, :func:`solve_bicgstab` (general), :func:`solve_normal_cg`
(CG on the normal equations). Dense (materialise the operator, factorise):
:func:`solve_lu`, :func:`solve_cholesky`, :func:`solve_lstsq`.
"""

from optlayer.linalg.dense import dense_operator, solve_cholesky, solve_lstsq, solve_lu
from optlayer.linalg.krylov import solve_bicgstab, solve_cg, solve_gmres, solve_normal_cg

__all__ = [
    "dense_operator",
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_lstsq",
    "solve_lu",
    "solve_normal_cg",
]
