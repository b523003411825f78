"""Expression nodes of the typed IR.

Every node is immutable and carries ``shape``, ``curvature``, ``sign``,
``smooth`` and ``span`` (an :class:`optlayer.errors.Span` or ``None``), and its
children in ``args``. There are five node classes:

* :class:`Variable` and :class:`Parameter` — named leaves with a shape and
  attributes (``nonneg``, ``nonpos``, ``pos``, ``symmetric``, ``psd``);
* :class:`Constant` — a number (or, from Python, a tensor);
* :class:`Let` — a named subexpression; the IR is a DAG and a let shared by
  several terms is computed once;
* :class:`Apply` — an atom or operator of the registry
  (:mod:`optlayer.ir.atoms`) applied to argument nodes, with static
  arguments (``static``: the exponent of ``^``, the key of an index).

Walks are iterative (:func:`postorder`), so deep expressions never hit
Python's recursion limit. Python operators on nodes build the same IR as the
``.opt`` language (see :mod:`optlayer.ir.build`); ``==``, ``<=`` and ``>=``
build constraints, so structural equality is :func:`optlayer.ir.equal`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from optlayer.errors import BindingError, OptTypeError, Span
from optlayer.ir.enums import Curvature, Sign
from optlayer.ir.shapes import as_dim, format_shape, is_concrete

__all__ = [
    "Expr",
    "Leaf",
    "Variable",
    "Parameter",
    "Constant",
    "Let",
    "Apply",
    "ATTRIBUTES",
    "postorder",
    "check_name",
    "KEYWORDS",
]

#: Attributes a variable or parameter may carry.
ATTRIBUTES = ("nonneg", "nonpos", "pos", "symmetric", "psd")


def _build():
    from optlayer.ir import build

    return build


class Expr:
    """Base class of IR expression nodes.

    Attributes:
        shape: tuple of dims (ints or sympy expressions); ``()`` is a scalar.
        curvature: :class:`Curvature` in the variables.
        sign: :class:`Sign` of every entry.
        smooth: True when the expression is differentiable everywhere in its domain.
        span: source location or ``None``.
        args: child nodes.
    """

    __slots__ = ("shape", "curvature", "sign", "smooth", "span", "args", "__weakref__")
    __array_ufunc__ = None  # numpy arrays defer to our reflected operators

    kind = "expr"

    # -- facts ----------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def children(self) -> tuple[Expr, ...]:
        return self.args

    @property
    def is_constant(self) -> bool:
        """True when no variable occurs (parameters count as constants)."""
        return self.curvature is Curvature.CONSTANT

    def variables(self) -> list[Variable]:
        """Distinct variables in first-occurrence order."""
        return [n for n in _unique_leaves(self) if isinstance(n, Variable)]

    def parameters(self) -> list[Parameter]:
        """Distinct parameters in first-occurrence order."""
        return [n for n in _unique_leaves(self) if isinstance(n, Parameter)]

    def lets(self) -> list[Let]:
        """Distinct lets, each after the lets it depends on."""
        return [n for n in postorder(self) if isinstance(n, Let)]

    # -- evaluation -----------------------------------------------------
    def evaluate(self, env: Mapping[str, torch.Tensor], cache: dict | None = None) -> torch.Tensor:
        """Evaluate with tensors for the leaves, batched over leading dimensions.

        Args:
            env: name -> tensor for every variable and parameter that occurs.
                A tensor's trailing dims are the declared shape; any leading
                dims are batch dims and broadcast against each other.
            cache: optional dict shared by calls *with the same env* (keys
                are node ids), so subexpressions and lets shared by the
                objective and the constraints are computed once. A cache must
                not outlive its env: values are never recomputed.

        Returns:
            A tensor of shape ``batch + self.shape``.

        Raises:
            BindingError: a leaf is missing from ``env``, its trailing shape
                differs from the declared one, or dims are still symbolic.
        """
        cache = {} if cache is None else cache
        like = _like(env)
        for node in postorder(self):
            key = id(node)
            if key in cache:
                continue
            vals = [cache[id(a)] for a in node.args]
            cache[key] = node._eval(vals, env, like)
        return cache[id(self)]

    def _eval(self, vals, env, like):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- python operators (build the IR; see optlayer.ir.build) ---------
    def __add__(self, other):
        return _build().add(self, other)

    def __radd__(self, other):
        return _build().add(other, self)

    def __sub__(self, other):
        return _build().sub(self, other)

    def __rsub__(self, other):
        return _build().sub(other, self)

    def __mul__(self, other):
        return _build().mul(self, other)

    def __rmul__(self, other):
        return _build().mul(other, self)

    def __truediv__(self, other):
        return _build().div(self, other)

    def __rtruediv__(self, other):
        return _build().div(other, self)

    def __matmul__(self, other):
        return _build().matmul(self, other)

    def __rmatmul__(self, other):
        return _build().matmul(other, self)

    def __neg__(self):
        return _build().negate(self)

    def __pos__(self):
        return self

    def __pow__(self, p):
        return _build().power(self, p)

    def __xor__(self, p):
        return _build().power(self, p)

    def __rpow__(self, base):
        raise OptTypeError("a variable exponent (c ** x) is not supported",
                           hint="write exp(x * log(c)) with c > 0")

    def __abs__(self):
        return _build().apply("abs", [self])

    @property
    def T(self):
        """Transpose (``expr'`` in the language)."""
        return _build().transpose(self)

    def __getitem__(self, key):
        return _build().index(self, key)

    def __iter__(self):
        # without this, Python would iterate through __getitem__ forever on symbolic dims
        raise OptTypeError("an optlayer expression is not iterable",
                           hint="index it (x[0], x[1:]) or use sum(...)")

    def __eq__(self, other):  # type: ignore[override]
        return _build().constraint("==", self, other)

    def __le__(self, other):
        return _build().constraint("<=", self, other)

    def __ge__(self, other):
        return _build().constraint(">=", self, other)

    def __lt__(self, other):
        raise OptTypeError("strict inequalities are not supported", hint="use <= or >=")

    def __gt__(self, other):
        raise OptTypeError("strict inequalities are not supported", hint="use <= or >=")

    __hash__ = object.__hash__

    def __bool__(self):
        raise OptTypeError(
            "an optlayer expression has no truth value",
            hint="use optlayer.ir.equal(a, b) to compare expressions structurally",
        )

    def within(self, set_):
        """The constraint ``self in set_`` (the ``.opt`` spelling ``x in simplex``).

        Example:
            >>> import optlayer as ol
            >>> x = ol.Variable(3, name="x")
            >>> print(x.within(ol.simplex(1)))
            x in simplex(1)
        """
        return _build().member(self, set_)

    def __repr__(self) -> str:
        from optlayer.ir.printer import expr_text

        shape = format_shape(self.shape)
        text = expr_text(self, strict=False, limit=200)
        return f"<{type(self).__name__} {text} {shape} {self.curvature}>"

    def __str__(self) -> str:
        from optlayer.ir.printer import expr_text

        return expr_text(self, strict=False)


def _like(env: Mapping[str, Any]) -> torch.Tensor | None:
    for v in env.values():
        if isinstance(v, torch.Tensor):
            return v
    return None


def postorder(root: Expr) -> Iterator[Expr]:
    """Yield each distinct node of the DAG once, children before parents (iterative)."""
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded:
            seen.add(id(node))
            yield node
            continue
        stack.append((node, True))
        for a in reversed(node.args):
            if id(a) not in seen:
                stack.append((a, False))


def _unique_leaves(root: Expr) -> list[Expr]:
    return [n for n in postorder(root) if not n.args]


def _check_attrs(attrs, shape, what: str, span: Span | None) -> tuple[str, ...]:
    attrs = tuple(attrs)
    for a in attrs:
        if a not in ATTRIBUTES:
            raise OptTypeError(
                f"unknown attribute {a!r} for {what}",
                span=span,
                hint="attributes are: " + ", ".join(ATTRIBUTES),
            )
    if len(set(attrs)) != len(attrs):
        raise OptTypeError(f"repeated attribute for {what}", span=span)
    s = set(attrs)
    if ("nonneg" in s or "pos" in s) and "nonpos" in s:
        raise OptTypeError(f"{what} cannot be both nonneg/pos and nonpos", span=span)
    if s & {"symmetric", "psd"}:
        from optlayer.ir.shapes import dim_equal

        if len(shape) != 2 or not dim_equal(shape[0], shape[1]):
            raise OptTypeError(
                f"{what} is {format_shape(shape)}: symmetric and psd need a square matrix",
                span=span,
            )
    return tuple(a for a in ATTRIBUTES if a in s)  # canonical order


#: Words of the ``.opt`` language that cannot name a dim, param, var or let.
KEYWORDS = frozenset({"dim", "param", "var", "let", "minimize", "maximize", "subject", "to",
                      "in"})


def check_name(name, kind: str, span: Span | None = None) -> str:
    """Check that ``name`` can name a ``kind`` (dim, param, var, let, label) in ``.opt`` text.

    A name must be an identifier that is not a keyword, an attribute, an atom
    or a set (the text ``sum(x)`` must mean the atom), so every problem prints
    as text that parses back.

    Raises:
        OptTypeError: naming the clash.
    """
    from optlayer.ir.atoms import ATOMS
    from optlayer.ir.sets import SETS

    if not isinstance(name, str) or not name.isidentifier():
        raise OptTypeError(f"a {kind} name must be an identifier, got {name!r}", span=span)
    what = ("a keyword" if name in KEYWORDS else "an attribute" if name in ATTRIBUTES
            else "an atom" if name in ATOMS else "a set" if name in SETS else None)
    if what:
        raise OptTypeError(f"{name!r} is {what} of the language and cannot name a {kind}",
                           span=span, hint=f"rename it, e.g. {name}_")
    return name


def _parse_shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(as_dim(d) for d in shape)


class Leaf(Expr):
    """A named variable or parameter."""

    __slots__ = ("name", "attrs")
    _counter = 0
    _prefix = "leaf"

    def __init__(
        self,
        *shape,
        name: str | None = None,
        attrs=(),
        nonneg: bool = False,
        nonpos: bool = False,
        pos: bool = False,
        symmetric: bool = False,
        psd: bool = False,
        span: Span | None = None,
    ) -> None:
        try:
            dims = _parse_shape(shape)
        except TypeError as e:
            raise OptTypeError(str(e), span=span) from None
        for d in dims:
            if isinstance(d, int) and d < 1:
                raise OptTypeError(f"dimension {d} of {name or self._prefix} must be positive",
                                   span=span)
        if name is None:
            name = f"{self._prefix}{type(self)._counter}"
            type(self)._counter += 1
        check_name(name, self.kind, span)
        flags = dict(nonneg=nonneg, nonpos=nonpos, pos=pos, symmetric=symmetric, psd=psd)
        attrs = tuple(attrs) + tuple(k for k, v in flags.items() if v and k not in attrs)
        self.name = name
        self.shape = dims
        self.attrs = _check_attrs(attrs, dims, f"{self.kind} {name}", span)
        self.span = span
        self.args = ()
        self.smooth = True
        self.sign = _attr_sign(self.attrs)

    def _eval(self, vals, env, like):
        try:
            t = env[self.name]
        except KeyError:
            raise BindingError(f"no value for {self.kind} {self.name!r}",
                               parameter=self.name, span=self.span) from None
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, dtype=like.dtype if like is not None else None)
        if not is_concrete(self.shape):
            raise BindingError(
                f"{self.kind} {self.name} has symbolic shape {format_shape(self.shape)}",
                parameter=self.name,
                hint="bind the dims first: problem.bind({'n': 10})",
            )
        k = len(self.shape)
        if tuple(t.shape[t.ndim - k:]) != tuple(self.shape) or t.ndim < k:
            raise BindingError(
                f"{self.kind} {self.name} is declared {format_shape(self.shape)} but the "
                f"value has shape {list(t.shape)} (trailing dims must match; leading dims batch)",
                parameter=self.name,
            )
        return t

    def check_value(self, value, *, tol: float | None = None) -> torch.Tensor:
        """Check a value for this leaf: shape, dtype, finiteness and attributes.

        The declared shape is the trailing dims; leading dims are batch dims.
        Attributes are checked entrywise (``nonneg``: >= 0, ``nonpos``: <= 0,
        ``pos``: > 0) and per matrix (``symmetric``: ``|A - A'| <= tol * (1 + |A|)``,
        ``psd``: symmetric and smallest eigenvalue >= ``-tol * (1 + |A|)``),
        with ``tol = optlayer.defaults.tol(dtype) ** 0.5`` unless given. One
        host synchronisation per attribute.

        Args:
            value: a tensor (batched or not) with the dims already bound.
            tol: relative tolerance for ``symmetric`` and ``psd``.

        Returns:
            ``value`` (unchanged) when it passes.

        Raises:
            BindingError: naming the leaf, what is wrong, and the first
                offending batch index (``batch_index``) when batched.
        """
        if not isinstance(value, torch.Tensor):
            raise BindingError(f"{self.kind} {self.name} must be a torch.Tensor, got "
                               f"{type(value).__name__}", parameter=self.name)
        t = self._eval((), {self.name: value}, None)
        if not t.is_floating_point():
            raise BindingError(f"{self.kind} {self.name} must be a floating-point tensor, "
                               f"got {t.dtype}", parameter=self.name,
                               hint="convert it with .double() or .float()")
        k = len(self.shape)

        def fail(bad: torch.Tensor, what: str, hint: str | None = None):
            flat = bad.reshape(-1) if bad.ndim else bad.reshape(1)
            if bool(flat.any()):
                idx = int(torch.nonzero(flat)[0])
                batch = t.shape[: t.ndim - k]
                at = None
                if len(batch):
                    at = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), batch))
                where = f" at batch index {at}" if at is not None else ""
                raise BindingError(f"{self.kind} {self.name} {what}{where}",
                                   parameter=self.name, batch_index=at, hint=hint)

        def per_item(mask: torch.Tensor) -> torch.Tensor:
            return mask.reshape(mask.shape[: mask.ndim - k] + (-1,)).any(-1) if k else mask

        fail(per_item(~torch.isfinite(t)), "has non-finite entries")
        if "pos" in self.attrs:
            fail(per_item(t <= 0), "is declared pos but has entries <= 0")
        if "nonneg" in self.attrs:
            fail(per_item(t < 0), "is declared nonneg but has negative entries")
        if "nonpos" in self.attrs:
            fail(per_item(t > 0), "is declared nonpos but has positive entries")
        if {"symmetric", "psd"} & set(self.attrs):
            from optlayer.defaults import tol as default_tol

            rtol = default_tol(t.dtype) ** 0.5 if tol is None else tol
            scale = 1 + t.abs().amax(dim=(-2, -1))
            asym = (t - t.transpose(-1, -2)).abs().amax(dim=(-2, -1))
            fail(asym > rtol * scale, "is declared symmetric but is not",
                 hint="symmetrize it: 0.5 * (A + A.mT)")
            if "psd" in self.attrs:
                low = torch.linalg.eigvalsh(0.5 * (t + t.transpose(-1, -2)))[..., 0]
                fail(low < -rtol * scale, "is declared psd but has a negative eigenvalue",
                     hint="pass L @ L.mT, or declare the matrix without psd")
        return value


def _attr_sign(attrs) -> Sign:
    if "pos" in attrs:
        return Sign.POSITIVE
    if "nonneg" in attrs:
        return Sign.NONNEG
    if "nonpos" in attrs:
        return Sign.NONPOS
    return Sign.UNKNOWN


class Variable(Leaf):
    """An optimization variable.

    Args:
        *shape: dims (ints or dim symbols); none for a scalar; a tuple also works.
        name: identifier (auto-generated ``var0``, ``var1``, ... if omitted).
        attrs: attribute names; or the flags ``nonneg=``, ``nonpos=``, ``pos=``,
            ``symmetric=``, ``psd=``. A variable attribute is an implicit constraint.
        span: source location (the parser passes it).

    Example:
        >>> import optlayer as ol
        >>> x = ol.Variable(3, name="x", nonneg=True)
        >>> x.shape, x.attrs, str(x.curvature)
        ((3,), ('nonneg',), 'affine')
    """

    __slots__ = ()
    kind = "var"
    _prefix = "var"
    _counter = 0

    def __init__(self, *shape, **kw) -> None:
        super().__init__(*shape, **kw)
        self.curvature = Curvature.AFFINE


class Parameter(Leaf):
    """A problem parameter: a constant for DCP, a tensor at call time.

    Same arguments as :class:`Variable`. A parameter attribute gives DCP its
    sign (``nonneg``, ``pos``, ``nonpos``) or definiteness (``psd``) and is
    checked on the value at call time.
    """

    __slots__ = ()
    kind = "param"
    _prefix = "param"
    _counter = 0

    def __init__(self, *shape, **kw) -> None:
        super().__init__(*shape, **kw)
        self.curvature = Curvature.CONSTANT


class Constant(Expr):
    """A numeric constant: a Python number, or (from Python) a tensor-like.

    Args:
        value: int, float, or an array-like / tensor (stored as a tensor).
        span: source location.
    """

    __slots__ = ("value",)
    kind = "const"

    def __init__(self, value, *, span: Span | None = None) -> None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.requires_grad:
            value = value.item() if value.is_floating_point() else int(value)
        if isinstance(value, (int, float)):
            self.shape = ()
            self.sign = Sign.of_value(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise OptTypeError(f"constant {value} is not finite", span=span)
        else:
            try:
                t = torch.as_tensor(value)
            except Exception as e:
                raise OptTypeError(f"cannot use {type(value).__name__} as a constant: {e}",
                                   span=span) from None
            if not t.is_floating_point():
                t = t.to(torch.get_default_dtype())
            if not bool(torch.isfinite(t).all()):
                raise OptTypeError("constant has non-finite entries", span=span)
            value = t
            self.shape = tuple(t.shape)
            if bool((t > 0).all()):
                self.sign = Sign.POSITIVE
            elif bool((t >= 0).all()):
                self.sign = Sign.NONNEG
            elif bool((t <= 0).all()):
                self.sign = Sign.NONPOS
            else:
                self.sign = Sign.UNKNOWN
        self.value = value
        self.curvature = Curvature.CONSTANT
        self.smooth = True
        self.span = span
        self.args = ()

    @property
    def is_scalar_number(self) -> bool:
        return not isinstance(self.value, torch.Tensor)

    def _eval(self, vals, env, like):
        dtype = like.dtype if like is not None and like.is_floating_point() else None
        device = like.device if like is not None else None
        return torch.as_tensor(self.value, dtype=dtype or torch.get_default_dtype(), device=device)


class Let(Expr):
    """A named subexpression ``let NAME = expr``; shares the facts of its body.

    Args:
        name: identifier.
        body: the expression.
        span: source location of the definition.
    """

    __slots__ = ("name",)
    kind = "let"

    def __init__(self, name: str, body: Expr, *, span: Span | None = None) -> None:
        check_name(name, "let", span)
        if not isinstance(body, Expr):
            body = _build().as_expr(body, span=span)
        self.name = name
        self.args = (body,)
        self.shape = body.shape
        self.curvature = body.curvature
        self.sign = body.sign
        self.smooth = body.smooth
        self.span = span

    @property
    def body(self) -> Expr:
        return self.args[0]

    def _eval(self, vals, env, like):
        return vals[0]


class Apply(Expr):
    """An atom or operator of the registry applied to arguments.

    Build it with :func:`optlayer.ir.build.apply` (by name) or the operator
    helpers; the constructor takes the registry record itself.

    Args:
        atom: the :class:`optlayer.ir.atoms.Atom` record.
        args: argument nodes.
        static: hashable tuple of static arguments (exponent, index key, ...).
        span: source location.

    Raises:
        OptTypeError: wrong number of arguments or a shape mismatch (the
            message names the operator and gives every argument's shape).
    """

    __slots__ = ("atom", "static")
    kind = "apply"

    def __init__(self, atom, args, static=(), *, span: Span | None = None) -> None:
        from optlayer.ir.atoms import ShapeError
        from optlayer.ir.dcp import compose

        args = tuple(args)
        lo, hi = atom.arity
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise OptTypeError(
                f"{atom.display} takes {want} argument{'s' if hi != 1 else ''}, got {len(args)}",
                span=span,
                hint=f"{atom.name}: {atom.doc}",
            )
        self.atom = atom
        self.args = args
        self.static = tuple(static)
        self.span = span
        try:
            self.shape = tuple(atom.shape([a.shape for a in args], self.static))
        except ShapeError as e:
            shapes = ", ".join(format_shape(a.shape) for a in args)
            msg = str(e)
            raise OptTypeError(
                f"shape mismatch in {atom.display}: {msg}",
                span=span,
                why=None if "[" in msg or "scalar" in msg else f"argument shapes: {shapes}",
                hint=e.hint,
            ) from None
        self.curvature = compose(atom, args, self.static)
        self.sign = atom.sign(args, self.static)
        self.smooth = atom.smooth and all(a.smooth for a in args)

    @property
    def name(self) -> str:
        return self.atom.name

    def _eval(self, vals, env, like):
        return self.atom.impl(vals, [a.ndim for a in self.args], self.static)
