"""optlayer.implicit: implicit differentiation of roots and fixed points.

``custom_root(F)`` / ``custom_fixed_point(T)`` decorate a solver so that its
output is differentiated by the implicit function theorem applied to the
optimality map F (or ``T(x) - x``); ``root_vjp`` / ``root_jvp`` are the
underlying products. See docs/implicit.md.
"""

from optlayer.implicit._function import default_solve, solve_point
from optlayer.implicit.root import custom_fixed_point, custom_root, root_jvp, root_vjp

__all__ = ["custom_fixed_point", "custom_root", "default_solve", "root_jvp", "root_vjp",
           "solve_point"]
