"""Lowering: the AST of a ``.opt`` program -> the typed IR (:mod:`optlayer.ir`).

The semantic checks of the language run here, after parsing:

* statement order: one objective; ``subject to`` once, after the objective;
  constraints only after ``subject to``;
* names: every name declared once (dims, params, vars and lets share one
  namespace), no keyword, atom or set as a name, every reference declared
  (``unknown name 'x'`` with a did-you-mean), dims only in shapes and
  indices, lets without cycles (their order may be free);
* sizes: shapes and indices are built from dims and integers only;
* everything else (shapes of operators, atom arities, set arguments,
  attributes) is checked by the IR constructors, which get the span of the
  text they build.

Every walk over expressions is iterative, so nesting depth only costs memory.
Errors are :class:`~optlayer.errors.OptError` subclasses with a span; the
caller attaches the source text.
"""

from __future__ import annotations

from optlayer import ir
from optlayer.dsl import ast
from optlayer.dsl.syntax import KEYWORDS
from optlayer.errors import OptError, OptSyntaxError, OptTypeError, Span
from optlayer.ir.nodes import check_name

__all__ = ["lower_program"]


def _did_you_mean(name: str, candidates) -> str | None:
    return ir.did_you_mean(name, sorted(candidates))


class _Scope:
    """Names declared by the program and the IR node (or dim symbol) for each."""

    def __init__(self) -> None:
        self.dims: dict[str, object] = {}         # name -> sympy symbol
        self.dim_defaults: dict[str, int | None] = {}
        self.leaves: dict[str, ir.Expr] = {}     # params and vars
        self.lets: dict[str, ir.Expr] = {}       # lowered lets
        self.let_decls: dict[str, ast.LetDecl] = {}
        self.decl_span: dict[str, Span] = {}
        self.kind: dict[str, str] = {}

    def declare(self, name: str, kind: str, span: Span) -> None:
        if name in KEYWORDS:
            raise OptSyntaxError(f"{name!r} is a keyword and cannot name a {kind}", span=span,
                                 hint=f"rename it, e.g. {name}_")
        check_name(name, kind, span)
        prev = self.decl_span.get(name)
        if prev is not None:
            raise OptTypeError(
                f"{name!r} is already declared (as a {self.kind[name]} at line {prev.line})",
                span=span, hint="give each dim, param, var and let its own name")
        self.decl_span[name] = span
        self.kind[name] = kind

    def names(self) -> list[str]:
        return list(self.decl_span)


def _unknown_name(name: str, span: Span, scope: _Scope, want: str = "value") -> OptTypeError:
    if ir.get_atom(name) is not None and not ir.get_atom(name).is_operator:
        return OptTypeError(f"{name!r} is a function; call it", span=span,
                            hint=f"write {name}(...)")
    if ir.get_set(name) is not None:
        return OptTypeError(f"{name!r} is a set, not a {want}", span=span,
                            hint=f"sets appear in constraints: x in {name}")
    pool = scope.dims if want == "size" else [n for n in scope.names() if n not in scope.dims]
    hint = _did_you_mean(name, pool)
    if hint is None and want == "size":
        hint = f"declare it: dim {name}"
    elif hint is None:
        hint = f"declare it first: var {name} or param {name}"
    what = "dim" if want == "size" else "name"
    return OptTypeError(f"unknown {what} {name!r}", span=span, hint=hint)


# ------------------------------------------------------------ sizes (dims)
def _lower_size(root: ast.Expr, scope: _Scope, what: str):
    """A shape entry or an index: an integer or a dim expression (``n + 1``, ``2 * n``)."""
    vals: dict[int, object] = {}
    for node in ast.postorder(root):
        if isinstance(node, ast.Number):
            if not isinstance(node.value, int):
                raise OptTypeError(f"{what} must be an integer, got {node.text}", span=node.span)
            vals[id(node)] = node.value
        elif isinstance(node, ast.Name):
            sym = scope.dims.get(node.name)
            if sym is None:
                if node.name in scope.decl_span:
                    raise OptTypeError(
                        f"{what} must be built from dims and integers; {node.name!r} is a "
                        f"{scope.kind[node.name]}", span=node.span,
                        hint="sizes and indices are fixed when the problem is compiled")
                raise _unknown_name(node.name, node.span, scope, want="size")
            vals[id(node)] = sym
        elif isinstance(node, ast.BinOp) and node.op in "+-*":
            a, b = vals.pop(id(node.left)), vals.pop(id(node.right))
            fn = {"+": ir.dim_add, "-": ir.dim_sub, "*": ir.dim_mul}[node.op]
            vals[id(node)] = fn(a, b)
        elif isinstance(node, ast.Neg):
            vals[id(node)] = ir.dim_mul(-1, vals.pop(id(node.operand)))
        else:
            raise OptTypeError(f"{what} must be built from dims and integers with + - *",
                               span=node.span,
                               hint="write sizes such as n, n + 1 or 2 * n")
    return vals[id(root)]


# ------------------------------------------------------------- expressions
_BINOPS = {"+": ir.add, "-": ir.sub, "*": ir.mul, "/": ir.div, "@": ir.matmul}


def _value_children(node) -> tuple:
    """Sub-expressions lowered as values (index keys are sizes, lowered by their Index)."""
    if isinstance(node, ast.Index):
        return (node.base,)
    return ast.children(node)


def _lower_expr(root: ast.Expr, scope: _Scope, lower_let) -> ir.Expr:
    """Lower one expression bottom-up with an explicit stack."""
    vals: dict[int, ir.Expr] = {}
    stack: list[tuple[ast.Expr, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(_value_children(node)))
            continue
        try:
            vals[id(node)] = _lower_node(node, vals, scope, lower_let)
        except OptError as e:
            _relocate(e, node, [(vals.get(id(c)), c) for c in _value_children(node)])
            raise
    return vals[id(root)]


def _inside(a: Span, b: Span) -> bool:
    return ((a.line, a.column) >= (b.line, b.column)
            and (a.end_line, a.end_column) <= (b.end_line, b.end_column))


def _relocate(err: OptError, node, pairs) -> None:
    """Point an IR error at the text being lowered, not at a declaration.

    A name lowers to its shared declared node, whose span is the declaration;
    an IR error about such an operand is moved to the operand's use. Errors
    already inside ``node`` (or inside a let body) keep their span.
    """
    if err.span is None:
        err.span = node.span
        return
    if _inside(err.span, node.span):
        return
    for value, child in pairs:
        if value is not None and getattr(value, "span", None) == err.span:
            err.span = child.span
            return
    if isinstance(node, ast.Name):
        return  # errors from inside a let body keep their span
    err.span = node.span


def _lower_node(node, vals, scope: _Scope, lower_let):
    if isinstance(node, ast.Number):
        return ir.Constant(node.value, span=node.span)
    if isinstance(node, ast.Name):
        name = node.name
        if name in scope.leaves:
            return scope.leaves[name]
        if name in scope.let_decls:
            return lower_let(name, node.span)
        if name in scope.dims:
            raise OptTypeError(f"dim {name!r} is a size, not a value", span=node.span,
                               hint="dims appear in shapes and indices; declare a param "
                                    "for a number that varies")
        raise _unknown_name(name, node.span, scope)
    if isinstance(node, ast.BinOp):
        a, b = vals[id(node.left)], vals[id(node.right)]
        return _BINOPS[node.op](a, b, span=node.span)
    if isinstance(node, ast.Neg):
        a = vals[id(node.operand)]
        return ir.negate(a, span=node.span)
    if isinstance(node, ast.Power):
        base, p = vals[id(node.base)], vals[id(node.exponent)]
        if not (isinstance(p, ir.Constant) and p.is_scalar_number):
            raise OptTypeError("the exponent of ^ must be a number", span=node.exponent.span,
                               hint="write x ^ 2, x ^ 0.5 or x ^ -1")
        return ir.power(base, p.value, span=node.span)
    if isinstance(node, ast.Transpose):
        a = vals[id(node.operand)]
        return ir.transpose(a, span=node.span)
    if isinstance(node, ast.Index):
        base = vals[id(node.base)]
        key = []
        for it in node.items:
            if isinstance(it, ast.SliceItem):
                key.append(ir.Slice(*(None if e is None else _lower_size(e, scope, "an index")
                                      for e in (it.start, it.stop))))
            else:
                key.append(_lower_size(it, scope, "an index"))
        return ir.index(base, tuple(key), span=node.span)
    if isinstance(node, ast.Call):
        args = [vals[id(a)] for a in node.args]
        atom = ir.get_atom(node.name)
        if atom is None or atom.is_operator:
            if node.name in scope.decl_span:
                raise OptTypeError(f"{node.name!r} is a {scope.kind[node.name]}, not a function",
                                   span=node.name_span, hint="index it with [...] instead")
            if ir.get_set(node.name) is not None:
                raise OptTypeError(f"{node.name!r} is a set, not a function", span=node.name_span,
                                   hint=f"sets appear in constraints: x in {node.name}(...)")
            funcs = [n for n, a in ir.ATOMS.items() if not a.is_operator]
            raise OptTypeError(f"unknown function {node.name!r}", span=node.name_span,
                               hint=_did_you_mean(node.name, funcs)
                               or "functions are: " + ", ".join(sorted(funcs)))
        return ir.apply(node.name, args, span=node.span)
    raise OptTypeError(f"unexpected {type(node).__name__}", span=node.span)  # pragma: no cover


# -------------------------------------------------------------- statements
def _check_order(program: ast.Program):
    objective = None
    subject = None
    constraints = []
    for st in program.statements:
        if isinstance(st, ast.ObjectiveStmt):
            if objective is not None:
                raise OptSyntaxError(
                    f"a second objective (the first is at line {objective.span.line})",
                    span=st.span, hint="one problem per file: one minimize or maximize")
            if subject is not None:
                raise OptSyntaxError("the objective must come before `subject to`",
                                     span=st.span)
            objective = st
        elif isinstance(st, ast.SubjectTo):
            if subject is not None:
                raise OptSyntaxError(f"a second `subject to` (the first is at line "
                                     f"{subject.span.line})", span=st.span,
                                     hint="list every constraint after one `subject to`")
            if objective is None:
                raise OptSyntaxError("`subject to` before the objective", span=st.span,
                                     hint="write minimize ... or maximize ... first")
            subject = st
        elif isinstance(st, (ast.ConstraintStmt, ast.MembershipStmt)):
            if subject is None:
                raise OptSyntaxError(
                    "a constraint outside `subject to`", span=st.span,
                    hint="constraints follow the objective and a `subject to` line")
            constraints.append(st)
    if objective is None:
        end = program.span
        raise OptSyntaxError("the problem has no objective",
                             span=Span.point(end.end_line, end.end_column),
                             hint="add a line `minimize <expr>` or `maximize <expr>`")
    return objective, constraints


def lower_program(program: ast.Program) -> ir.Problem:
    """Build the (DCP-unchecked) :class:`optlayer.ir.Problem` of a parsed program.

    Raises:
        OptSyntaxError: statement order (objective count, ``subject to``),
            keywords used as names.
        OptTypeError: unknown or duplicate names, bad sizes, and whatever the
            IR constructors reject (shapes, arities, attributes, set arguments).
    """
    objective, constraints = _check_order(program)
    scope = _Scope()
    leaf_decls: list[ast.LeafDecl] = []
    let_order: list[str] = []
    for st in program.statements:
        if isinstance(st, ast.DimDecl):
            scope.declare(st.name, "dim", st.name_span)
            default = None
            if st.default is not None:
                if not isinstance(st.default.value, int) or st.default.value < 1:
                    raise OptTypeError(
                        f"the size of dim {st.name} must be a positive integer, got "
                        f"{st.default.text}", span=st.default.span)
                default = st.default.value
            scope.dims[st.name] = ir.dim_symbol(st.name, span=st.name_span)
            scope.dim_defaults[st.name] = default
        elif isinstance(st, ast.LeafDecl):
            scope.declare(st.name, st.kind, st.name_span)
            leaf_decls.append(st)
        elif isinstance(st, ast.LetDecl):
            scope.declare(st.name, "let", st.name_span)
            scope.let_decls[st.name] = st
            let_order.append(st.name)
    for st in leaf_decls:
        seen: dict[str, Span] = {}
        for a in st.attrs:
            if a.name not in ir.ATTRIBUTES:
                raise OptTypeError(f"unknown attribute {a.name!r} for {st.kind} {st.name}",
                                   span=a.span,
                                   hint=_did_you_mean(a.name, ir.ATTRIBUTES)
                                   or "attributes are: " + ", ".join(ir.ATTRIBUTES))
            if a.name in seen:
                raise OptTypeError(f"attribute {a.name!r} is given twice", span=a.span)
            seen[a.name] = a.span
        shape = () if st.shape is None else tuple(
            _lower_size(e, scope, "a size") for e in st.shape)
        cls = ir.Parameter if st.kind == "param" else ir.Variable
        scope.leaves[st.name] = cls(*shape, name=st.name, attrs=tuple(a.name for a in st.attrs),
                                    span=st.span)

    lowering: list[str] = []  # lets being lowered (a cycle check without networkx)

    def lower_let(name: str, ref_span: Span) -> ir.Expr:
        done = scope.lets.get(name)
        if done is not None:
            return done
        if name in lowering:
            loop = lowering[lowering.index(name):] + [name]
            first = scope.let_decls[loop[0]]
            raise OptTypeError(f"let {loop[0]!r} depends on itself: {' -> '.join(loop)}",
                               span=first.name_span,
                               hint="a let may use only names defined without it")
        if len(lowering) >= 64:
            raise OptSyntaxError("lets nested too deeply (more than 64 levels)", span=ref_span)
        decl = scope.let_decls[name]
        lowering.append(name)
        try:
            body = _lower_expr(decl.expr, scope, lower_let)
        finally:
            lowering.pop()
        node = ir.let(name, body, span=decl.span)
        scope.lets[name] = node
        return node

    for name in let_order:
        lower_let(name, scope.let_decls[name].span)

    obj_expr = _lower_expr(objective.expr, scope, lower_let)
    make = ir.minimize if objective.sense == "minimize" else ir.maximize
    obj = _with_span(lambda: make(obj_expr, span=objective.span), objective.span,
                     [(obj_expr, objective.expr)])

    labels: dict[str, Span] = {}
    cons = []
    for st in constraints:
        if st.label is not None:
            if st.label in labels:
                raise OptTypeError(f"constraint label {st.label!r} is used twice (first at "
                                   f"line {labels[st.label].line})", span=st.label_span,
                                   hint="labels name constraints (for duals); make them unique")
            labels[st.label] = st.label_span
        if isinstance(st, ast.ConstraintStmt):
            lhs = _lower_expr(st.lhs, scope, lower_let)
            rhs = _lower_expr(st.rhs, scope, lower_let)
            cons.append(_with_span(lambda st=st, lhs=lhs, rhs=rhs: ir.constraint(
                st.op, lhs, rhs, label=st.label, span=st.body_span), st.body_span,
                [(lhs, st.lhs), (rhs, st.rhs)]))
        else:
            member = _lower_expr(st.expr, scope, lower_let)
            args = [_lower_expr(a, scope, lower_let) for a in st.set_args]
            if ir.get_set(st.set_name) is None:
                raise OptTypeError(f"unknown set {st.set_name!r}", span=st.set_name_span,
                                   hint=_did_you_mean(st.set_name, ir.set_names())
                                   or "sets are: " + ", ".join(ir.set_names()))
            set_ = _with_span(lambda st=st, args=args: ir.make_set(
                st.set_name, args, span=st.set_span), st.set_span,
                list(zip(args, st.set_args, strict=True)))
            cons.append(_with_span(lambda st=st, member=member, set_=set_: ir.member(
                member, set_, label=st.label, span=st.body_span), st.body_span,
                [(member, st.expr), *zip(args, st.set_args, strict=True)]))

    return _with_span(lambda: ir.Problem(
        obj, cons, dims=dict(scope.dim_defaults),
        params=[v for v in scope.leaves.values() if isinstance(v, ir.Parameter)],
        vars=[v for v in scope.leaves.values() if isinstance(v, ir.Variable)],
        lets=[scope.lets[n] for n in let_order], check=False, span=program.span),
        program.span)


def _with_span(build, span: Span, pairs=()):
    """Run an IR constructor; an error without a span gets ``span``.

    An error at the declaration of an operand in ``pairs`` (value, AST node)
    moves to that operand's text.
    """
    try:
        return build()
    except OptError as e:
        if e.span is None:
            e.span = span
        else:
            for value, child in pairs:
                if getattr(value, "span", None) == e.span and not _inside(e.span, span):
                    e.span = child.span
                    break
        raise
