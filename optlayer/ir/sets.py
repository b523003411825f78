"""The set registry: one record per set of ``x in SET`` constraints.

Each :class:`SetKind` states its name, its (variable-free) arguments with
defaults, the shape rule for the member expression and the arguments, the name
of its Euclidean projection in :mod:`optlayer.projections`, and the name of
its KL (entropic) projection where one exists. Functions are resolved by name
when called, so this module imports nothing heavy.

=========  ==================  ============================  ==============
set        arguments           members                       projection
=========  ==================  ============================  ==============
simplex    value=1             x >= 0, sum(x) == value       simplex / kl_simplex
box        lower, upper        lower <= x <= upper           box
nonneg     -                   x >= 0                        nonneg
ball1      radius=1            norm1(x) <= radius            l1_ball
ball2      radius=1            norm2(x) <= radius            l2_ball
ballinf    radius=1            norm_inf(x) <= radius         linf_ball
soc        -                   norm2(x[1:]) <= x[0]          soc
psd        -                   X symmetric, eigenvalues >= 0 psd
=========  ==================  ============================  ==============
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from optlayer.errors import OptTypeError, Span
from optlayer.ir.shapes import dim_equal, format_shape

__all__ = ["SetKind", "SetExpr", "SETS", "get_set", "set_names"]


@dataclass(frozen=True, eq=False)
class SetKind:
    """One set record.

    Attributes:
        name: the name used in ``x in NAME(...)`` and ``ol.NAME(...)``.
        params: argument names in order (STYLE.md vocabulary: value, lower, upper, radius).
        defaults: default value per argument (``None``: required).
        check: ``(member_shape) -> str | None``: an error text when the member
            shape does not fit the set.
        projection: function name in :mod:`optlayer.projections`.
        kl_projection: name of the KL projection, if one exists.
        doc: one line of math.
        adapt: ``(fn, x, args) -> tensor`` when the catalog function's calling
            convention differs from the member layout (``soc``: the member is
            ``(t, z)`` with ``t`` first; the catalog takes ``(z, t)``), else ``None``.
        polyhedral: the set is a polyhedron (finitely many affine inequalities), so its
            projection is piecewise affine.
    """

    name: str
    params: tuple[str, ...]
    defaults: tuple
    check: Callable
    projection: str
    doc: str
    kl_projection: str | None = None
    adapt: Callable | None = None
    polyhedral: bool = False

    def project(self, x, *args):
        """Euclidean projection of ``x`` (member layout, batched over leading dims).

        Args:
            x: tensor whose trailing dims are the member's shape.
            *args: the set's arguments as tensors or numbers (``value``,
                ``lower, upper``, ``radius``), in the order of :attr:`params`.
        """
        fn = self.projection_fn()
        return self.adapt(fn, x, args) if self.adapt else fn(x, *args)

    def projection_fn(self) -> Callable:
        """The Euclidean projection from :mod:`optlayer.projections` (imported now)."""
        from optlayer.ir.atoms import resolve

        return resolve("optlayer.projections", self.projection,
                       f"the projection onto set {self.name}")

    def kl_projection_fn(self) -> Callable | None:
        """The KL projection from :mod:`optlayer.projections`, or ``None`` if there is none."""
        if self.kl_projection is None:
            return None
        from optlayer.ir.atoms import resolve

        return resolve("optlayer.projections", self.kl_projection,
                       f"the KL projection onto set {self.name}")

    # registry records are singletons: copies and pickles refer to the record by name
    def __reduce__(self):
        return (get_set, (self.name,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, span: Span | None = None):
        return SetExpr(self, args, span=span)


def _any(shape):
    return None


def _vector(shape):
    return None if len(shape) == 1 else f"needs a vector, got {format_shape(shape)}"


def _soc(shape):
    if len(shape) != 1:
        return f"needs a vector (t, x) with t = first entry, got {format_shape(shape)}"
    if isinstance(shape[0], int) and shape[0] < 2:
        return f"needs a vector of length >= 2, got {format_shape(shape)}"
    return None


def _soc_adapt(fn, x, args):
    import torch

    z, t = fn(x[..., 1:], x[..., 0])
    return torch.cat([t.unsqueeze(-1), z], dim=-1)


def _psd(shape):
    if len(shape) == 2 and dim_equal(shape[0], shape[1]):
        return None
    return f"needs a square matrix, got {format_shape(shape)}"


SETS: dict[str, SetKind] = {}


def _register(k: SetKind) -> None:
    SETS[k.name] = k


_register(SetKind("simplex", ("value",), (1,), _vector, "simplex",
                  "{x : x >= 0, sum(x) == value}", kl_projection="kl_simplex",
                  polyhedral=True))
_register(SetKind("box", ("lower", "upper"), (None, None), _any, "box",
                  "{x : lower <= x <= upper}, elementwise", polyhedral=True))
_register(SetKind("nonneg", (), (), _any, "nonneg", "{x : x >= 0}", polyhedral=True))
_register(SetKind("ball1", ("radius",), (1,), _any, "l1_ball", "{x : norm1(x) <= radius}",
                  polyhedral=True))
_register(SetKind("ball2", ("radius",), (1,), _any, "l2_ball", "{x : norm2(x) <= radius}"))
_register(SetKind("ballinf", ("radius",), (1,), _any, "linf_ball",
                  "{x : norm_inf(x) <= radius}", polyhedral=True))
_register(SetKind("soc", (), (), _soc, "soc", "{(t, x) : norm2(x) <= t}", adapt=_soc_adapt))
_register(SetKind("psd", (), (), _psd, "psd", "{X : X = X', eigenvalues(X) >= 0}"))


def get_set(name: str) -> SetKind | None:
    return SETS.get(name)


def set_names() -> list[str]:
    return sorted(SETS)


class SetExpr:
    """A set of the registry with its arguments, e.g. ``simplex(1)`` or ``box(lo, hi)``.

    Args:
        kind: the :class:`SetKind` (or its name).
        args: variable-free expressions (numbers are wrapped as constants);
            missing trailing arguments take their defaults.
        span: source location.

    Raises:
        OptTypeError: unknown set, too many or too few arguments, an argument
            that depends on variables, or a non-scalar radius/value.
    """

    __slots__ = ("kind", "args", "span", "explicit")

    def __init__(self, kind, args=(), *, span: Span | None = None) -> None:
        from optlayer.ir.build import as_expr

        if isinstance(kind, str):
            k = SETS.get(kind)
            if k is None:
                from optlayer.ir.build import did_you_mean

                raise OptTypeError(f"unknown set {kind!r}", span=span,
                                   hint=did_you_mean(kind, SETS) or
                                   "sets are: " + ", ".join(set_names()))
            kind = k
        if not isinstance(kind, SetKind):
            raise OptTypeError(f"{type(kind).__name__} {kind!r:.40} is not a set", span=span,
                               hint="sets are: " + ", ".join(set_names()))
        if not isinstance(args, (list, tuple)):
            raise OptTypeError(f"set arguments must be a list, got {type(args).__name__}",
                               span=span)
        args = list(args)
        if len(args) > len(kind.params):
            raise OptTypeError(
                f"set {kind.name} takes at most {len(kind.params)} argument(s) "
                f"({', '.join(kind.params) or 'none'}), got {len(args)}", span=span)
        self.explicit = len(args)
        for i in range(len(args), len(kind.params)):
            if kind.defaults[i] is None:
                raise OptTypeError(
                    f"set {kind.name} needs its argument {kind.params[i]!r}", span=span,
                    hint=f"write {kind.name}({', '.join(kind.params)})")
            args.append(kind.defaults[i])
        exprs = []
        for name, a in zip(kind.params, args, strict=False):
            e = as_expr(a, span=span)
            if not e.is_constant:
                raise OptTypeError(
                    f"the {name} of set {kind.name} depends on variables", span=e.span or span,
                    hint="set arguments must be numbers or parameters")
            if name in ("radius", "value") and e.ndim != 0:
                raise OptTypeError(
                    f"the {name} of set {kind.name} must be a scalar, got {format_shape(e.shape)}",
                    span=e.span or span)
            exprs.append(e)
        self.kind = kind
        self.args = tuple(exprs)
        self.span = span

    @property
    def name(self) -> str:
        return self.kind.name

    def arg(self, name: str):
        """The argument called ``name`` (e.g. ``radius``)."""
        return self.args[self.kind.params.index(name)]

    def check_member(self, shape, span: Span | None) -> None:
        """Raise OptTypeError when a member of this shape cannot belong to the set."""
        msg = self.kind.check(shape)
        if msg:
            raise OptTypeError(f"set {self.kind.name} {msg}", span=span)
        for pname, a in zip(self.kind.params, self.args, strict=False):
            if a.ndim and not (len(a.shape) == len(shape) and
                               all(dim_equal(x, y) for x, y in zip(a.shape, shape, strict=False))):
                raise OptTypeError(
                    f"the {pname} of set {self.kind.name} has shape {format_shape(a.shape)} "
                    f"but the member has shape {format_shape(shape)}",
                    span=a.span or span, hint="use a scalar or the member's shape")

    def __str__(self) -> str:
        from optlayer.ir.printer import set_text

        return set_text(self)

    def __repr__(self) -> str:
        return f"<SetExpr {self}>"
