"""optlayer.ir: the typed IR, atom and set registries, shapes, DCP, graph analysis.

See docs/ir.md for the constructor API the parser and the Python API share.
"""

from optlayer.ir import functions
from optlayer.ir.atoms import ATOMS, OPERATORS, Atom, ShapeError, Slice, atom_names, get_atom
from optlayer.ir.build import (
    add,
    apply,
    as_expr,
    constraint,
    did_you_mean,
    div,
    index,
    let,
    make_set,
    matmul,
    maximize,
    member,
    minimize,
    mul,
    negate,
    power,
    sub,
    transpose,
)
from optlayer.ir.enums import Curvature, Domain, Mono, Sign
from optlayer.ir.equality import constraint_equal, equal, set_equal
from optlayer.ir.graph import (
    dependency_graph,
    let_uses,
    objective_terms,
    order_definitions,
    param_reach,
    prox_term,
    summary,
    variable_blocks,
)
from optlayer.ir.nodes import (
    ATTRIBUTES,
    Apply,
    Constant,
    Expr,
    Leaf,
    Let,
    Parameter,
    Variable,
    postorder,
)
from optlayer.ir.printer import constraint_text, expr_text, problem_text
from optlayer.ir.problem import Constraint, Membership, Objective, Problem
from optlayer.ir.sets import SETS, SetExpr, SetKind, get_set, set_names
from optlayer.ir.shapes import (
    dim_add,
    dim_equal,
    dim_mul,
    dim_sub,
    dim_symbol,
    format_shape,
    shape_equal,
)

__all__ = [
    "ATOMS", "ATTRIBUTES", "OPERATORS", "SETS",
    "Apply", "Atom", "Constant", "Constraint", "Curvature", "Domain", "Expr", "Leaf", "Let",
    "Membership", "Mono", "Objective", "Parameter", "Problem", "SetExpr", "SetKind",
    "ShapeError", "Sign", "Slice", "Variable",
    "add", "apply", "as_expr", "atom_names", "constraint", "constraint_equal",
    "did_you_mean", "dim_add", "dim_equal", "dim_mul", "dim_sub", "dim_symbol", "div",
    "equal", "expr_text", "format_shape", "functions", "get_atom", "get_set", "index", "let",
    "make_set", "matmul", "maximize", "member", "minimize", "mul", "negate", "postorder",
    "power", "problem_text", "constraint_text", "set_equal", "set_names", "shape_equal",
    "sub", "transpose",
    "dependency_graph", "let_uses", "objective_terms", "order_definitions", "param_reach",
    "prox_term", "summary", "variable_blocks",
]
