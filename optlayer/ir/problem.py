"""Objective, constraints and the :class:`Problem` that holds a whole model.

A problem has dims (name -> default or ``None``), parameters, variables and
lets (name -> node, in declaration order), an :class:`Objective` and a list of
constraints (:class:`Constraint` for ``==``/``<=``/``>=``, :class:`Membership`
for ``x in SET``), each with an optional label and span.

DCP (:mod:`optlayer.ir.dcp`) is enforced here: a convex objective to
minimize, concave to maximize; constraints ``convex <= concave``,
``concave >= convex``, ``affine == affine``; set members affine. A violation
raises :class:`optlayer.errors.NonConvexError` whose span is the smallest
offending subexpression, with a why and (when a rewrite is known) a hint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from optlayer.errors import BindingError, NonConvexError, OptError, OptTypeError, Span
from optlayer.ir.enums import Curvature
from optlayer.ir.nodes import Apply, Constant, Expr, Let, Parameter, Variable, postorder
from optlayer.ir.shapes import (
    format_shape,
    free_dims,
    shape_equal,
    subs_dim,
    subs_shape,
)

__all__ = ["Objective", "Constraint", "Membership", "Problem", "set_layer_factory"]

_OPS = ("==", "<=", ">=")


class Objective:
    """``minimize expr`` or ``maximize expr``; the expression must be a scalar."""

    __slots__ = ("sense", "expr", "span")

    def __init__(self, sense: str, expr: Expr, *, span: Span | None = None) -> None:
        if sense not in ("minimize", "maximize"):
            raise OptTypeError(f"objective sense must be minimize or maximize, got {sense!r}",
                               span=span)
        if expr.ndim != 0:
            raise OptTypeError(
                f"the objective must be a scalar, got shape {format_shape(expr.shape)}",
                span=expr.span or span, hint="reduce it, e.g. sum(...) or sum_squares(...)")
        self.sense, self.expr, self.span = sense, expr, span

    @property
    def required(self) -> Curvature:
        return Curvature.CONVEX if self.sense == "minimize" else Curvature.CONCAVE

    def __repr__(self) -> str:
        from optlayer.ir.printer import expr_text

        return f"<Objective {self.sense} {expr_text(self.expr)}>"


class Constraint:
    """``lhs op rhs`` for ``op`` in ``==``, ``<=``, ``>=`` (elementwise, scalars broadcast).

    Raises:
        OptTypeError: unknown operator or shapes that differ (both shapes are named).
    """

    __slots__ = ("op", "lhs", "rhs", "label", "span")

    def __init__(self, op: str, lhs: Expr, rhs: Expr, *, label: str | None = None,
                 span: Span | None = None) -> None:
        if op not in _OPS:
            raise OptTypeError(f"unknown comparison {op!r}", span=span, hint="use ==, <= or >=")
        if lhs.ndim and rhs.ndim and not shape_equal(lhs.shape, rhs.shape):
            raise OptTypeError(
                f"shape mismatch in `{op}`: left is {format_shape(lhs.shape)}, right is "
                f"{format_shape(rhs.shape)}", span=span,
                hint="both sides need the same shape, or one side a scalar")
        _check_label(label, span)
        self.op, self.lhs, self.rhs, self.label, self.span = op, lhs, rhs, label, span

    @property
    def args(self) -> tuple[Expr, Expr]:
        return (self.lhs, self.rhs)

    def residual(self) -> Expr:
        """The expression ``g`` with the constraint as ``g <= 0`` (or ``g == 0`` for ``==``).

        ``lhs - rhs`` for ``<=`` and ``==``, ``rhs - lhs`` for ``>=``; convex
        for a DCP inequality, affine for a DCP equality. Evaluate it with
        ``residual().evaluate(env)`` (shape: the broadcast shape of both sides).
        """
        from optlayer.ir.build import sub

        if self.op == ">=":
            return sub(self.rhs, self.lhs, span=self.span)
        return sub(self.lhs, self.rhs, span=self.span)

    def labelled(self, label: str) -> Constraint:
        """The same constraint with a label (Python API; ``label: ...`` in ``.opt``)."""
        return Constraint(self.op, self.lhs, self.rhs, label=label, span=self.span)

    def __bool__(self):
        raise OptTypeError(
            "a constraint has no truth value (== on expressions builds a constraint)",
            hint="use optlayer.ir.equal(a, b) to compare expressions structurally")

    def __str__(self) -> str:
        from optlayer.ir.printer import constraint_text

        return constraint_text(self)

    def __repr__(self) -> str:
        return f"<Constraint {self}>"


class Membership:
    """``expr in SET`` for a set of the registry (:mod:`optlayer.ir.sets`)."""

    __slots__ = ("expr", "set", "label", "span")

    def __init__(self, expr: Expr, set_, *, label: str | None = None,
                 span: Span | None = None) -> None:
        set_.check_member(expr.shape, span or expr.span)
        _check_label(label, span)
        self.expr, self.set, self.label, self.span = expr, set_, label, span

    @property
    def args(self) -> tuple[Expr, ...]:
        return (self.expr,) + self.set.args

    def labelled(self, label: str) -> Membership:
        return Membership(self.expr, self.set, label=label, span=self.span)

    def __str__(self) -> str:
        from optlayer.ir.printer import constraint_text

        return constraint_text(self)

    def __repr__(self) -> str:
        return f"<Membership {self}>"


def _check_label(label, span):
    if label is not None:
        from optlayer.ir.nodes import check_name

        check_name(label, "constraint label", span)


def _as_dict(items) -> dict | None:
    if items is None:
        return None
    if isinstance(items, Mapping):
        return dict(items)
    return {x.name: x for x in items}


class Problem:
    """A whole model: dims, parameters, variables, lets, objective and constraints.

    Args:
        objective: :func:`optlayer.ir.build.minimize` / ``maximize`` result.
        constraints: constraints and memberships (a list; ``None`` for none).
        dims: ``{name: default or None}`` (or an iterable of names). Dims used
            by shapes but not listed are added without default.
        params, vars, lets: declared nodes in order (lists or name->node
            dicts). Omitted, they are collected from the expressions in order
            of first occurrence; given, every node used must be declared.
        check: enforce DCP now (``True``) or leave it to :meth:`check_dcp`.
        span: span of the whole source, if any.

    Raises:
        OptTypeError: duplicate names, undeclared nodes or dims.
        NonConvexError: a DCP rule is broken (``check=True``).

    Example:
        >>> import optlayer as ol
        >>> x = ol.Variable(3, name="x"); y = ol.Parameter(3, name="y")
        >>> prob = ol.Problem(ol.minimize(ol.sum_squares(x - y)), [ol.sum(x) == 1, x >= 0])
        >>> print(prob.to_opt(), end="")
        param y[3]
        var x[3]
        minimize sum_squares(x - y)
        subject to
            sum(x) == 1
            x >= 0
    """

    def __init__(self, objective: Objective, constraints: Iterable | None = None, *,
                 dims=None, params=None, vars=None, lets=None, check: bool = True,
                 span: Span | None = None) -> None:
        if not isinstance(objective, Objective):
            raise OptTypeError("the first argument of Problem must be ol.minimize(...) or "
                               "ol.maximize(...)")
        if isinstance(constraints, (Constraint, Membership)):
            constraints = [constraints]
        cons = list(constraints or [])
        for c in cons:
            if not isinstance(c, (Constraint, Membership)):
                raise OptTypeError(f"{c!r} is not a constraint",
                                   hint="build constraints with ==, <=, >= or x.within(set)")
        labels = [c.label for c in cons if c.label]
        for c in cons:
            if c.label and labels.count(c.label) > 1:
                raise OptTypeError(f"constraint label {c.label!r} is used more than once",
                                   span=c.span, hint="labels name constraints; make them unique")
        self.objective = objective
        self.constraints = cons
        self.span = span
        roots = self.roots()
        found: dict[str, Expr] = {}
        order = {"param": [], "var": [], "let": []}
        for root in roots:
            for node in postorder(root):
                if isinstance(node, (Parameter, Variable, Let)):
                    prev = found.get(node.name)
                    if prev is None:
                        found[node.name] = node
                        order[node.kind].append(node)
                    elif prev is not node:
                        what = (f"{node.kind}s" if node.kind == prev.kind
                                else f"declarations ({prev.kind} and {node.kind})")
                        raise OptTypeError(
                            f"two different {what} are named {node.name!r}",
                            span=node.span or prev.span, hint="give each a distinct name")
        self.params = self._declared(_as_dict(params), order["param"], "param")
        self.vars = self._declared(_as_dict(vars), order["var"], "var")
        self.lets = self._declared(_as_dict(lets), order["let"], "let")
        names = list(self.params) + list(self.vars) + list(self.lets)
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise OptTypeError(f"name {sorted(dup)[0]!r} is declared more than once")
        used = set()
        for leaf in list(self.params.values()) + list(self.vars.values()):
            used |= free_dims(leaf.shape)
        for root in roots:
            for node in postorder(root):
                if isinstance(node, Apply) and node.atom.name == "index":
                    for k in node.static:
                        used |= free_dims(tuple(x for x in (k if isinstance(k, tuple) else (k,))
                                                if x is not None))
        if dims is None:
            self.dims = {}
        elif isinstance(dims, Mapping):
            self.dims = dict(dims)
        else:
            self.dims = {d: None for d in dims}
        for d in sorted(used - set(self.dims)):
            if dims is not None:
                raise OptTypeError(f"dim {d!r} is used but not declared",
                                   hint=f"declare it: dim {d}")
            self.dims[d] = None
        for d, v in self.dims.items():
            if d in names:
                clash = {**self.params, **self.vars, **self.lets}[d]
                raise OptTypeError(f"name {d!r} is both a dim and a {clash.kind}",
                                   span=clash.span, hint="rename one of them")
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise OptTypeError(f"the default of dim {d} must be a positive integer, got {v!r}")
        if check:
            self.check_dcp()

    def _declared(self, given, found_order, kind):
        if given is None:
            return {n.name: n for n in found_order}
        for n in found_order:
            if given.get(n.name) is not n:
                raise OptTypeError(f"{kind} {n.name!r} is used but not declared", span=n.span)
        return given

    # ------------------------------------------------------------------ structure
    def roots(self) -> list[Expr]:
        """Objective expression, then every constraint argument."""
        out = [self.objective.expr]
        for c in self.constraints:
            out.extend(c.args)
        return out

    def attribute_constraints(self) -> list:
        """The constraints that variable attributes imply, in declaration order.

        ``nonneg`` and ``pos``: ``x >= 0`` (``pos`` is relaxed to ``>=``: a
        closed feasible set); ``nonpos``: ``x <= 0``; ``symmetric``:
        ``X == X'``; ``psd``: ``X in psd``. Spans are the declarations'.
        Parameter attributes are checks on values instead
        (:meth:`check_params`).
        """
        from optlayer.ir.sets import SetExpr

        out: list = []
        for v in self.vars.values():
            for a in v.attrs:
                if a in ("nonneg", "pos"):
                    out.append(Constraint(">=", v, Constant(0), span=v.span))
                elif a == "nonpos":
                    out.append(Constraint("<=", v, Constant(0), span=v.span))
                elif a == "symmetric":
                    from optlayer.ir.build import transpose

                    out.append(Constraint("==", v, transpose(v, span=v.span), span=v.span))
                elif a == "psd":
                    out.append(Membership(v, SetExpr("psd", (), span=v.span), span=v.span))
        return out

    @property
    def variables(self) -> list[Variable]:
        return list(self.vars.values())

    @property
    def parameters(self) -> list[Parameter]:
        return list(self.params.values())

    # ------------------------------------------------------------------------ DCP
    def check_dcp(self) -> Problem:
        """Raise :class:`NonConvexError` at the first DCP violation; returns self."""
        obj = self.objective
        _require(obj.expr, obj.required,
                 f"cannot {obj.sense} an expression of {{curv}} curvature")
        for c in self.constraints:
            if isinstance(c, Membership):
                if not c.expr.curvature.is_affine:
                    _require(c.expr, Curvature.AFFINE,
                             f"the member of set {c.set.name} must be affine, not {{curv}}")
                continue
            if c.op == "==":
                lreq, rreq = Curvature.AFFINE, Curvature.AFFINE
            elif c.op == "<=":
                lreq, rreq = Curvature.CONVEX, Curvature.CONCAVE
            else:
                lreq, rreq = Curvature.CONCAVE, Curvature.CONVEX
            rule = {"==": "affine == affine", "<=": "convex <= concave",
                    ">=": "concave >= convex"}[c.op]
            _require(c.lhs, lreq, f"constraint needs {rule}: left side has {{curv}} curvature")
            _require(c.rhs, rreq, f"constraint needs {rule}: right side has {{curv}} curvature")
        return self

    def is_dcp(self) -> bool:
        try:
            self.check_dcp()
        except NonConvexError:
            return False
        return True

    # -------------------------------------------------------------------- binding
    def bind(self, dims: Mapping[str, int] | None = None) -> Problem:
        """A copy with every dim bound to an integer (defaults fill the gaps).

        Raises:
            BindingError: unknown dim name (with did-you-mean), a value that is
                not a positive int, a dim without default left unbound, or a
                shape rule that fails with the bound sizes (e.g. a slice out of range).
        """
        from optlayer.ir.build import did_you_mean

        dims = dict(dims or {})
        for k, v in dims.items():
            if k not in self.dims:
                raise BindingError(f"unknown dim {k!r}", parameter=k,
                                   hint=did_you_mean(k, self.dims) or
                                   f"dims are: {', '.join(self.dims) or 'none'}")
            if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < 1:
                raise BindingError(f"dim {k} must be a positive integer, got {v!r}",
                                   parameter=k)
        values = {}
        for k, default in self.dims.items():
            v = dims.get(k, default)
            if v is None:
                raise BindingError(f"dim {k} has no value", parameter=k,
                                   hint=f"pass dims={{'{k}': ...}} or declare dim {k} = ...")
            values[k] = int(v)
        memo: dict[int, Expr] = {}
        try:
            for root in self.roots():
                for node in postorder(root):
                    if id(node) not in memo:
                        memo[id(node)] = _rebuild(node, [memo[id(a)] for a in node.args], values)
            obj = Objective(self.objective.sense, memo[id(self.objective.expr)],
                            span=self.objective.span)
            cons = [_rebuild_constraint(c, memo, values) for c in self.constraints]
        except OptTypeError as e:
            raise BindingError(f"with dims {values}: {e.message}", span=e.span, why=e.why,
                               hint=e.hint) from None

        def pick(d):
            return {k: memo[id(v)] if id(v) in memo else _rebuild(v, [], values)
                    for k, v in d.items()}
        return Problem(obj, cons, dims=values, params=pick(self.params), vars=pick(self.vars),
                       lets={k: memo[id(v)] for k, v in self.lets.items()}, check=False,
                       span=self.span)

    def check_params(self, values: Mapping[str, object], *, tol: float | None = None) -> dict:
        """Check a full set of parameter values against the declarations.

        Every declared parameter must be given and nothing else; each value is
        checked with :meth:`optlayer.ir.nodes.Leaf.check_value` (trailing
        shape, floating dtype, finiteness, attributes). Dims must be bound
        (see :meth:`bind`). All values must share one dtype and one device.

        Args:
            values: parameter name -> tensor (leading dims are batch dims).
            tol: tolerance for ``symmetric`` / ``psd`` (default from the dtype).

        Returns:
            A dict name -> tensor in declaration order.

        Raises:
            BindingError: a missing or unknown parameter (with did-you-mean),
                or a value that does not fit its declaration; the error's
                ``parameter`` names it.
        """
        from optlayer.ir.build import did_you_mean

        for name in values:
            if name not in self.params:
                raise BindingError(f"unknown parameter {name!r}", parameter=name,
                                   hint=did_you_mean(name, self.params) or
                                   f"parameters are: {', '.join(self.params) or 'none'}")
        out = {}
        first = None
        for name, leaf in self.params.items():
            if name not in values:
                raise BindingError(f"missing value for parameter {name!r}", parameter=name,
                                   hint=f"pass {name}=<a tensor of shape "
                                        f"{format_shape(leaf.shape)}>" if leaf.shape
                                   else f"pass {name}=<a scalar tensor>")
            t = leaf.check_value(values[name], tol=tol)
            if first is None:
                first = (name, t)
            elif t.dtype != first[1].dtype or t.device != first[1].device:
                raise BindingError(
                    f"parameter {name!r} is {t.dtype} on {t.device} but {first[0]!r} is "
                    f"{first[1].dtype} on {first[1].device}", parameter=name,
                    hint="give all parameters one dtype and device")
            out[name] = t
        return out

    # ------------------------------------------------------------------- printing
    def to_opt(self) -> str:
        """``.opt`` text that parses back to an equal problem."""
        from optlayer.ir.printer import problem_text

        return problem_text(self)

    def layer(self, **options):
        """The problem as a differentiable ``torch.nn.Module`` (``ol.OptLayer``).

        The layer module sits above the IR (DESIGN.md section 4), so it
        registers its builder here with :func:`set_layer_factory` when
        ``optlayer`` is imported; ``options`` are those of ``ol.compile``.

        Raises:
            OptError: when no layer builder has been registered.
        """
        if _LAYER_FACTORY is None:
            raise OptError("no layer builder is registered",
                           hint="import optlayer (which loads optlayer.layer) before "
                                "calling Problem.layer()")
        return _LAYER_FACTORY(self, **options)

    def summary(self) -> str:
        """Readable summary: curvature of each term, which parameters reach what."""
        from optlayer.ir.graph import summary

        return summary(self)

    def __eq__(self, other) -> bool:
        from optlayer.ir.equality import constraint_equal, equal

        if not isinstance(other, Problem):
            return NotImplemented
        if list(self.dims.items()) != list(other.dims.items()):
            return False
        for mine, theirs in ((self.params, other.params), (self.vars, other.vars),
                             (self.lets, other.lets)):
            if list(mine) != list(theirs) or not all(
                    equal(mine[k], theirs[k]) for k in mine):
                return False
        return (self.objective.sense == other.objective.sense
                and equal(self.objective.expr, other.objective.expr)
                and len(self.constraints) == len(other.constraints)
                and all(constraint_equal(a, b)
                        for a, b in zip(self.constraints, other.constraints, strict=False)))

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        from optlayer.ir.printer import problem_text

        return problem_text(self, strict=False)

    def __repr__(self) -> str:
        return (f"<Problem {self.objective.sense}: {len(self.vars)} var(s), "
                f"{len(self.params)} param(s), {len(self.constraints)} constraint(s)>")


_LAYER_FACTORY = None


def set_layer_factory(factory) -> None:
    """Register ``factory(problem, **options) -> nn.Module`` for :meth:`Problem.layer`.

    Called by the layer module (above the IR in the layering) at import time.
    """
    global _LAYER_FACTORY
    _LAYER_FACTORY = factory


def _require(expr: Expr, want: Curvature, template: str) -> None:
    from optlayer.ir.dcp import explain, find_offender

    found = find_offender(expr, want)
    if found is None:
        return
    node, need = found
    why, hint = explain(node, need)
    raise NonConvexError(template.format(curv=expr.curvature), span=node.span or expr.span,
                         why=why, hint=hint)


def _rebuild(node: Expr, args: list[Expr], values: Mapping[str, int]) -> Expr:
    if isinstance(node, (Variable, Parameter)):
        return type(node)(*subs_shape(node.shape, values), name=node.name, attrs=node.attrs,
                          span=node.span)
    if isinstance(node, Constant):
        return node
    if isinstance(node, Let):
        return Let(node.name, args[0], span=node.span)
    if isinstance(node, Apply):
        static = node.static
        if node.atom.name == "index":
            static = tuple(type(k)(*(None if x is None else subs_dim(x, values) for x in k))
                           if isinstance(k, tuple) else subs_dim(k, values) for k in static)
        return Apply(node.atom, args, static, span=node.span)
    raise OptError(f"cannot bind node {node!r}")  # pragma: no cover


def _rebuild_constraint(c, memo, values):
    if isinstance(c, Membership):
        from optlayer.ir.sets import SetExpr

        s = SetExpr(c.set.kind, [memo[id(a)] for a in c.set.args], span=c.set.span)
        return Membership(memo[id(c.expr)], s, label=c.label, span=c.span)
    return Constraint(c.op, memo[id(c.lhs)], memo[id(c.rhs)], label=c.label, span=c.span)
