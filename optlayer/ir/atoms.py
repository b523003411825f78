"""The atom registry: one record per atom and operator, the only place their facts live.

Each :class:`Atom` states name, arity, shape rule, curvature, sign rule,
monotonicity per argument (which may depend on argument signs: ``norm1`` is
nondecreasing where its argument is nonnegative), smoothness, domain, a torch
implementation batched over leading dims (the declared shape is the trailing
dims), the closed-form prox where one exists (a function *name* in
:mod:`optlayer.prox`, resolved when called), and a one-line math doc.
Operators (``+ - * / @``, unary ``-``, ``^``, transpose, indexing) are records
of the same table, so the DCP rule (:mod:`optlayer.ir.dcp`) and the shape rules
exist once. The parser, the Python API, the compiler and the docs read
:data:`ATOMS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from optlayer.ir.enums import Curvature, Domain, Mono, Sign
from optlayer.ir.shapes import dim_equal, dim_sub, format_dim, format_shape

__all__ = ["Atom", "ATOMS", "OPERATORS", "ShapeError", "Slice", "get_atom", "atom_names"]


class ShapeError(Exception):
    """Raised by shape rules; :class:`optlayer.ir.nodes.Apply` turns it into an OptTypeError."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Slice(NamedTuple):
    """A slice ``start:stop`` in an index key (``None`` = open end); an int entry indexes."""

    start: Any
    stop: Any


@dataclass(frozen=True, eq=False)
class Atom:
    """One registry record.

    Attributes:
        name: registry name (``ol.<name>`` and ``name(...)`` in ``.opt``).
        arity: (min, max) number of expression arguments.
        shape: ``(arg_shapes, static) -> shape``; raises :class:`ShapeError`.
        curvature: intrinsic curvature of the function, or a callable
            ``(args, static) -> Curvature`` when it depends on the arguments.
        sign: ``(args, static) -> Sign`` of the result.
        mono: per-argument monotonicity, a tuple or ``(args, static) -> tuple``.
        smooth: differentiable everywhere on its domain.
        domain: per-argument :class:`Domain` (used by binding checks and tests).
        impl: ``(tensors, declared_ndims, static) -> tensor`` batched over leading dims.
        doc: one line of math.
        prox: name of the closed-form prox in :mod:`optlayer.prox` or ``None``.
        prox_hyper: the prox hyperparameter equal to weight 1 of this atom
            (``sum_squares = ridge`` with ``l2reg = 2``).
        symbol: operator text for operators (``+``, ``@``, ...), else ``None``.
        const_args: indices of arguments that must not depend on variables.
        hint: a rewrite hint shown with DCP errors, if any.
        tangent: for atoms linear in each argument that carries the variables (the
            arguments of the others are variable-free), the map of Jacobians:
            ``(args, declared_ndims, static, moving) -> Jacobian`` where ``args[i]`` is
            the Jacobian ``(lead, *declared_i, N)`` (its ``N`` tangents last) of each
            argument with ``moving[i]`` true and the value ``(*lead, *declared_i)`` of
            the others; ``None`` for the rest. Read by
            :mod:`optlayer.compiler.coefficients` (the coefficients of affine rows).
    """

    name: str
    arity: tuple[int, int]
    shape: Callable
    curvature: Curvature | Callable
    sign: Callable
    mono: tuple | Callable
    smooth: bool
    impl: Callable
    doc: str
    domain: tuple[Domain, ...] = (Domain.REAL,)
    prox: str | None = None
    prox_hyper: float = 1.0
    symbol: str | None = None
    const_args: tuple[int, ...] = ()
    hint: str | None = None
    why_unknown: Callable | None = field(default=None)
    domain_rule: Callable | None = None
    degree: Callable | None = None
    tangent: Callable | None = None

    def degree_of(self, degrees, static=()) -> int | None:
        """Polynomial degree in the variables (0, 1, 2) or ``None`` (not a quadratic).

        ``degrees`` are the arguments' degrees. Atoms without a ``degree``
        rule are constant on constant arguments and not polynomial otherwise.
        """
        if all(d == 0 for d in degrees):
            return 0
        if self.degree is None or any(d is None for d in degrees):
            return None
        d = self.degree(degrees, static)
        return d if d is not None and d <= 2 else None

    def domain_of(self, static=()) -> tuple[Domain, ...]:
        """Per-argument domain; ``domain_rule(static)`` refines it (``x ^ p`` depends on p)."""
        return self.domain_rule(static) if self.domain_rule else self.domain

    @property
    def display(self) -> str:
        return f"`{self.symbol}`" if self.symbol else self.name

    @property
    def is_operator(self) -> bool:
        return self.symbol is not None

    def curvature_of(self, args, static) -> Curvature:
        c = self.curvature
        return c(args, static) if callable(c) else c

    def monotonicity(self, args, static) -> tuple[Mono, ...]:
        m = self.mono
        m = m(args, static) if callable(m) else m
        if len(m) < len(args):
            m = tuple(m) + (m[-1],) * (len(args) - len(m))
        return tuple(m)

    def unknown_why(self, args, static) -> str | None:
        return self.why_unknown(args, static) if self.why_unknown else None

    def prox_fn(self) -> Callable | None:
        """The prox function from :mod:`optlayer.prox` (imported now, not at registration)."""
        if self.prox is None:
            return None
        return resolve("optlayer.prox", self.prox, f"the prox of atom {self.name}")

    # registry records are singletons: copies and pickles refer to the record by name
    def __reduce__(self):
        return (get_atom, (self.name,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, span=None, **static):
        from optlayer.ir.build import apply

        return apply(self.name, list(args), span=span, **static)


def resolve(module: str, name: str, what: str) -> Callable:
    """``module.name`` imported now; an :class:`OptError` naming ``what`` if it is missing.

    Registries refer to catalog functions by name so that the IR imports no
    catalog module (and the catalogs can be written independently).
    """
    import importlib

    from optlayer.errors import OptError

    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise OptError(f"{what} is {module}.{name}, which is not available",
                       hint=f"check that {module} defines {name}") from None
    return fn


ATOMS: dict[str, Atom] = {}
OPERATORS: dict[str, Atom] = {}


def _register(atom: Atom) -> Atom:
    table = OPERATORS if atom.symbol else ATOMS
    assert atom.name not in ATOMS and atom.name not in OPERATORS, atom.name
    table[atom.name] = atom
    return atom


def get_atom(name: str) -> Atom | None:
    """The record named ``name`` (atom or operator), or ``None``."""
    return ATOMS.get(name) or OPERATORS.get(name)


def atom_names() -> list[str]:
    """Names callable as ``name(...)`` in ``.opt`` text, sorted."""
    return sorted(ATOMS)


# ---------------------------------------------------------------- shape rules

def _same(shapes, static):
    return shapes[0]


def _scalar(shapes, static):
    return ()


def _broadcast(shapes, static):
    """Equal shapes, or scalars broadcast against the one non-scalar shape."""
    out = ()
    for s in shapes:
        if len(s) == 0:
            continue
        if len(out) == 0:
            out = s
        elif len(out) != len(s) or not all(dim_equal(a, b) for a, b in zip(out, s, strict=False)):
            if len(shapes) == 2:
                msg = f"left is {format_shape(shapes[0])}, right is {format_shape(shapes[1])}"
            else:
                msg = f"{format_shape(out)} and {format_shape(s)} differ"
            raise ShapeError(msg, hint="elementwise operations need equal shapes or a scalar")
    return out


def _matmul_shape(shapes, static):
    a, b = shapes
    if len(a) == 0 or len(b) == 0:
        raise ShapeError("`@` needs vectors or matrices, not scalars", hint="use * to scale")
    if len(a) > 2 or len(b) > 2:
        raise ShapeError("`@` supports vectors and matrices only")
    k1, k2 = a[-1], b[0]
    if not dim_equal(k1, k2):
        raise ShapeError(
            f"inner dimensions {format_dim(k1)} and {format_dim(k2)} differ "
            f"(left is {format_shape(a)}, right is {format_shape(b)})",
            hint="transpose one side with ' if needed",
        )
    return tuple(a[:-1]) + tuple(b[1:])


def _dot_shape(shapes, static):
    a, b = shapes
    if len(a) != 1 or len(b) != 1 or not dim_equal(a[0], b[0]):
        raise ShapeError(f"dot needs two vectors of equal length, got {format_shape(a)} "
                         f"and {format_shape(b)}")
    return ()


def _quad_shape(shapes, static):
    x, P = shapes
    if len(x) != 1 or len(P) != 2 or not (dim_equal(P[0], x[0]) and dim_equal(P[1], x[0])):
        raise ShapeError(
            f"quad_form(x, P) needs x of shape [n] and P of shape [n, n], got "
            f"{format_shape(x)} and {format_shape(P)}"
        )
    return ()


def _square_matrix(shapes, static):
    s = shapes[0]
    if len(s) != 2 or not dim_equal(s[0], s[1]):
        raise ShapeError(f"needs a square matrix, got {format_shape(s)}")
    return ()


def _diag_shape(shapes, static):
    s = shapes[0]
    if len(s) == 1:
        return (s[0], s[0])
    if len(s) == 2 and dim_equal(s[0], s[1]):
        return (s[0],)
    raise ShapeError(f"diag needs a vector or a square matrix, got {format_shape(s)}")


def _transpose_shape(shapes, static):
    s = shapes[0]
    return tuple(reversed(s)) if len(s) == 2 else s


def _maxmin_shape(shapes, static):
    return () if len(shapes) == 1 else _broadcast(shapes, static)


def _huber_shape(shapes, static):
    if len(shapes) == 2 and len(shapes[1]) != 0:
        raise ShapeError(f"the threshold M must be a scalar, got {format_shape(shapes[1])}")
    return shapes[0]


def _index_shape(shapes, static):
    s = shapes[0]
    key = static
    if len(key) > len(s):
        raise ShapeError(f"{len(key)} indices for a {len(s)}-dimensional expression "
                         f"of shape {format_shape(s)}")
    out = []
    for d, k in zip(s, key, strict=False):
        if isinstance(k, Slice):
            start = 0 if k.start is None else _norm_index(k.start, d, True)
            stop = d if k.stop is None else _norm_index(k.stop, d, True)
            n = dim_sub(stop, start)
            if _provably_negative(dim_sub(n, 1)):
                raise ShapeError(f"slice {_kfmt(k)} of a dimension of size {format_dim(d)} "
                                 "is empty")
            out.append(n)
        else:
            _norm_index(k, d, False)
    out.extend(s[len(key):])
    return tuple(out)


def _kfmt(k) -> str:
    if isinstance(k, Slice):
        a = "" if k.start is None else format_dim(k.start)
        b = "" if k.stop is None else format_dim(k.stop)
        return f"{a}:{b}"
    return format_dim(k)


def _provably_negative(d) -> bool:
    if isinstance(d, int):
        return d < 0
    return bool(d.is_negative)


def _norm_index(i, d, is_bound: bool):
    """Resolve a negative int index against dim ``d`` and check the range."""
    if isinstance(i, int) and i < 0:
        i = dim_sub(d, -i) if not isinstance(d, int) else d + i
    hi = dim_sub(d, i) if is_bound else dim_sub(dim_sub(d, i), 1)
    if _provably_negative(i) or _provably_negative(hi):
        raise ShapeError(f"index {format_dim(i)} is out of range for a dimension of size "
                         f"{format_dim(d)}")
    return i


# ------------------------------------------------------------------ torch helpers

def _align(ts, nds):
    """Unsqueeze declared scalars so declared dims line up at the right."""
    k = max(nds)
    return [t.reshape(t.shape + (1,) * (k - n)) if n < k else t
            for t, n in zip(ts, nds, strict=True)]


def _red(t, nd, fn="sum"):
    if nd == 0:
        return t
    dims = tuple(range(-nd, 0))
    if fn == "sum":
        return t.sum(dim=dims)
    if fn == "amax":
        return t.amax(dim=dims)
    if fn == "amin":
        return t.amin(dim=dims)
    if fn == "lse":
        return torch.logsumexp(t.flatten(-nd), dim=-1)
    raise ValueError(fn)


def _ew(fn):
    return lambda ts, nds, st: fn(*_align(ts, nds))


def _unary(fn):
    return lambda ts, nds, st: fn(ts[0])


def _reduce(fn, red="sum"):
    return lambda ts, nds, st: _red(fn(ts[0]), nds[0], red)


def _matmul_impl(ts, nds, st):
    a, b = ts
    na, nb = nds
    if na == 1:
        a = a.unsqueeze(-2)
    if nb == 1:
        b = b.unsqueeze(-1)
    out = a @ b
    if nb == 1:
        out = out.squeeze(-1)
    if na == 1:  # the row dim of a is -2, or -1 once b's column dim is gone
        out = out.squeeze(-1 if nb == 1 else -2)
    return out


def _index_impl(ts, nds, st):
    t = ts[0]
    key = tuple(slice(k.start, k.stop) if isinstance(k, Slice) else k for k in st)
    # the key addresses the leading *declared* dims: pad it to all declared dims
    key = key + (slice(None),) * (nds[0] - len(key))
    return t[(Ellipsis,) + key]


def _diag_impl(ts, nds, st):
    t = ts[0]
    return torch.diag_embed(t) if nds[0] == 1 else torch.diagonal(t, dim1=-2, dim2=-1)


def _transpose_impl(ts, nds, st):
    return ts[0].transpose(-1, -2) if nds[0] == 2 else ts[0]


def _xlogx(x):
    return torch.special.xlogy(x, x)


def _kl_impl(ts, nds, st):
    x, y = _align(ts, nds)
    return _red(torch.special.xlogy(x, x) - torch.special.xlogy(x, y) - x + y, max(nds))


def _norm2_impl(ts, nds, st):
    # vector_norm's backward gives the subgradient 0 at x = 0 (sqrt(sum x^2) gives NaN)
    x = ts[0]
    if nds[0] == 0:
        return x.abs()
    return torch.linalg.vector_norm(x, dim=tuple(range(-nds[0], 0)))


def _huber_impl(ts, nds, st):
    # m (2x - m) with m = x clipped to [-M, M]: x^2 inside, 2 M |x| - M^2 outside. No abs:
    # the second derivative of a twice-used abs is a ZeroTensor, whose sums run in Python
    # (torch._refs) in a double backward, a quarter millisecond each
    x = ts[0]
    M = 1.0 if len(ts) == 1 else ts[1]
    if len(ts) > 1 and nds[0] > 0:
        M = M.reshape(M.shape + (1,) * nds[0])
    m = torch.clamp(x, -M, M)
    return m * (2.0 * x - m)


def _power_impl(ts, nds, st):
    (p,) = st
    x = ts[0]
    if p == 2:
        return x * x
    if p == 0.5:
        return torch.sqrt(x)
    return torch.pow(x, p)


# ----------------------------------------------------------- Jacobian (tangent) rules
# A Jacobian carries the declared dims of its node, then the N tangents; its leading
# dim is 1 (the same for every item) or the batch. Values of variable-free arguments
# keep their own leading dims (none for constants).

def _jlift(J, nd, k):
    """A Jacobian of ``nd`` declared dims aligned to ``k`` (as :func:`_align`)."""
    return J.reshape(J.shape[:-1] + (1,) * (k - nd) + J.shape[-1:]) if nd < k else J


def _vlift(v, nd, k):
    """A value of ``nd`` declared dims aligned to ``k``, with a unit tangent dim."""
    return v.reshape(v.shape + (1,) * (k - nd + 1))


def _t_add(sign):
    def rule(ts, nds, st, moving):
        k, out = max(nds), None
        for i, (t, nd) in enumerate(zip(ts, nds, strict=True)):
            if moving[i]:
                t = _jlift(t, nd, k)
                t = t if i == 0 or sign > 0 else -t
                out = t if out is None else out + t
        return out
    return rule


def _t_scale(op):
    """``mul`` / ``div``: the moving argument's Jacobian times (over) the other's value."""
    def rule(ts, nds, st, moving):
        i = 0 if moving[0] else 1
        k = max(nds)
        return op(_jlift(ts[i], nds[i], k), _vlift(ts[1 - i], nds[1 - i], k))
    return rule


def _t_matmul(ts, nds, st, moving):
    na, nb = nds
    if moving[1] and na == 2 and nb == 1:       # A @ x: the common case, one matmul
        return ts[0] @ ts[1]
    if moving[0] and na == 1 and nb == 2:       # x' @ A
        return ts[1].mT @ ts[0]
    a = "ij" if na == 2 else "j"
    b = "jk" if nb == 2 else "j"
    out = (a[0] if na == 2 else "") + (b[1] if nb == 2 else "")
    a, b = (a + "n", b) if moving[0] else (a, b + "n")
    return torch.einsum(f"...{a},...{b}->...{out}n", ts[0], ts[1])


def _t_dot(ts, nds, st, moving):
    i = 0 if moving[0] else 1
    return (ts[i] * ts[1 - i].unsqueeze(-1)).sum(-2)


def _t_unary(fn):
    return lambda ts, nds, st, moving: fn(ts[0], nds[0], st)


def _t_transpose(J, nd, st):
    return J.transpose(-3, -2) if nd == 2 else J


def _t_sum(J, nd, st):
    return J.sum(dim=tuple(range(-nd - 1, -1))) if nd else J


def _t_mean(J, nd, st):
    return _t_sum(J, nd, st) / max(1, math.prod(J.shape[J.dim() - nd - 1:-1]))


def _t_index(J, nd, st):
    key = tuple(slice(k.start, k.stop) if isinstance(k, Slice) else k for k in st)
    return J[(slice(None),) + key + (slice(None),) * (nd - len(key) + 1)]


def _t_trace(J, nd, st):
    return torch.diagonal(J, dim1=-3, dim2=-2).sum(-1)


def _t_diag(J, nd, st):
    if nd == 1:   # vector -> diagonal matrix
        return torch.diag_embed(J.movedim(-1, -2)).movedim(-3, -1)
    return torch.diagonal(J, dim1=-3, dim2=-2).movedim(-1, -2)


# --------------------------------------------------------------- sign / mono rules

def _s(sign):
    return lambda args, st: sign


def _sign_of(i=0):
    return lambda args, st: args[i].sign


def _signs_add(args, st):
    return args[0].sign.add(args[1].sign)


def _signs_mul(args, st):
    return args[0].sign.mul(args[1].sign)


def _mono_abs(args, st):
    return (Mono.by_sign(args[0].sign),) + (Mono.NONMONOTONE,) * (len(args) - 1)


def _mono_mul(args, st):
    return (Mono.scaled_by(args[1].sign), Mono.scaled_by(args[0].sign))


def _mono_div(args, st):
    return (Mono.scaled_by(args[1].sign), Mono.NONMONOTONE)


def _bilinear(args, st):
    if sum(not a.is_constant for a in args) <= 1:
        return Curvature.AFFINE
    return Curvature.UNKNOWN


def _bilinear_why(name):
    def why(args, st):
        from optlayer.ir.dcp import brief as expr_text

        a, b = args[0], args[1]
        return (f"both factors of {name} depend on variables ({expr_text(a)} is {a.curvature}, "
                f"{expr_text(b)} is {b.curvature}); a product is DCP only when one factor "
                "is a parameter or constant.")
    return why


def _div_curv(args, st):
    return Curvature.AFFINE if args[1].is_constant else Curvature.UNKNOWN


def _div_why(args, st):
    from optlayer.ir.dcp import brief as expr_text

    return (f"the divisor {expr_text(args[1])} depends on variables; `/` divides only by a "
            "constant or a parameter.")


def _div_sign(args, st):
    return args[0].sign.mul(args[1].sign)


def _quad_curv(args, st):
    x, P = args
    if not P.is_constant:
        return Curvature.UNKNOWN
    psd = _definiteness(P)
    if psd == "psd":
        return Curvature.CONVEX
    if psd == "nsd":
        return Curvature.CONCAVE
    return Curvature.UNKNOWN


def _definiteness(P) -> str | None:
    from optlayer.ir.nodes import Constant, Parameter

    if isinstance(P, Parameter):
        return "psd" if "psd" in P.attrs else None
    if isinstance(P, Constant) and not P.is_scalar_number:
        ev = torch.linalg.eigvalsh(0.5 * (P.value + P.value.T).double())
        tol = 1e-10 * max(1.0, float(ev.abs().max()))
        if bool((ev >= -tol).all()):
            return "psd"
        if bool((ev <= tol).all()):
            return "nsd"
    return None


def _quad_why(args, st):
    from optlayer.ir.dcp import brief as expr_text

    P = args[1]
    if not P.is_constant:
        return f"the matrix {expr_text(P)} of quad_form depends on variables."
    return (f"the matrix {expr_text(P)} of quad_form is not known to be positive "
            "semidefinite, so quad_form has unknown curvature.")


def _quad_hint():
    return "declare the matrix parameter psd (param P[n, n] psd), or use sum_squares(L @ x)."


def _quad_sign(args, st):
    d = _definiteness(args[1])
    return Sign.NONNEG if d == "psd" else Sign.NONPOS if d == "nsd" else Sign.UNKNOWN


def _power_curv(args, st):
    """x ^ p: affine for p in {0, 1}, convex for p > 1 or p < 0, concave for 0 < p < 1."""
    (p,) = st
    if p in (0, 1):
        return Curvature.AFFINE
    return Curvature.CONVEX if p > 1 or p < 0 else Curvature.CONCAVE


def _power_mono(args, st):
    (p,) = st
    if p == 1:
        return (Mono.INCREASING,)
    if p < 0:
        return (Mono.DECREASING,)
    if _even(p):
        return (Mono.by_sign(args[0].sign),)
    return (Mono.INCREASING,)


def _power_sign(args, st):
    (p,) = st
    if p == 0:
        return Sign.POSITIVE
    if p == 1:
        return args[0].sign
    # even p: a square; other p: the domain is x >= 0 (x > 0 for p < 0)
    return Sign.POSITIVE if args[0].sign.is_positive or p < 0 else Sign.NONNEG


def _power_domain(st) -> tuple[Domain, ...]:
    """x ^ p: real x for p in {0, 1} and even p, x > 0 for p < 0, else x >= 0 (as cvxpy)."""
    (p,) = st
    if p in (0, 1) or (p > 0 and _even(p)):
        return (Domain.REAL,)
    return (Domain.POSITIVE,) if p < 0 else (Domain.NONNEG,)


def _even(p) -> bool:
    return float(p).is_integer() and int(p) % 2 == 0


def _nonneg_or_pos(args, st):
    return Sign.POSITIVE if args[0].sign.is_positive else Sign.NONNEG


def _diag_sign(args, st):
    s = args[0].sign  # diag(vector) has zeros off the diagonal: positive becomes nonneg
    return Sign.NONNEG if s is Sign.POSITIVE and args[0].ndim == 1 else s


def _trace_sign(args, st):
    return args[0].sign  # a sum of diagonal entries keeps their common sign


def _sum_sign(args, st):
    s = args[0].sign
    return Sign.NONNEG if s is Sign.POSITIVE else s


def _deg_linear(ds, st):
    return max(ds)


def _deg_product(ds, st):
    return sum(ds)


def _deg_div(ds, st):
    return ds[0] if ds[1] == 0 else None


def _deg_square(ds, st):
    return 2 * ds[0]


def _deg_quad(ds, st):
    return 2 * ds[0] if ds[1] == 0 else None


def _deg_power(ds, st):
    (p,) = st
    if p == 0:
        return 0
    if float(p).is_integer() and p > 0:
        return int(p) * ds[0]
    return None


I = Mono.INCREASING
D = Mono.DECREASING
N = Mono.NONMONOTONE
AFF, CVX, CCV = Curvature.AFFINE, Curvature.CONVEX, Curvature.CONCAVE
R, NN, P = Domain.REAL, Domain.NONNEG, Domain.POSITIVE

# ------------------------------------------------------------------------ operators

_register(Atom("add", (2, 2), _broadcast, AFF, _signs_add, (I, I), True,
               _ew(torch.add), "a + b, elementwise with scalar broadcasting", symbol="+",
               degree=_deg_linear,
               tangent=_t_add(1)))
_register(Atom("sub", (2, 2), _broadcast, AFF,
               lambda a, st: a[0].sign.add(a[1].sign.negate()), (I, D), True,
               _ew(torch.sub), "a - b, elementwise with scalar broadcasting", symbol="-",
               degree=_deg_linear,
               tangent=_t_add(-1)))
_register(Atom("negate", (1, 1), _same, AFF, lambda a, st: a[0].sign.negate(), (D,), True,
               _unary(torch.neg), "-a", symbol="-u",
               degree=_deg_linear,
               tangent=_t_unary(lambda J, nd, st: -J)))
_register(Atom("mul", (2, 2), _broadcast, _bilinear, _signs_mul, _mono_mul, True,
               _ew(torch.mul), "a * b, elementwise; one factor must be variable-free",
               symbol="*", why_unknown=_bilinear_why("`*`"),
               degree=_deg_product,
               tangent=_t_scale(torch.mul)))
_register(Atom("div", (2, 2), _broadcast, _div_curv, _div_sign, _mono_div, True,
               _ew(torch.div), "a / c for a variable-free c (a constant or a parameter)",
               symbol="/", const_args=(1,), why_unknown=lambda a, st: _div_why(a, st),
               degree=_deg_div,
               tangent=_t_scale(torch.div)))
_register(Atom("matmul", (2, 2), _matmul_shape, _bilinear, _signs_mul, _mono_mul, True,
               _matmul_impl,
               "A @ x, matrix-matrix / matrix-vector / vector-vector product", symbol="@",
               why_unknown=_bilinear_why("`@`"),
               degree=_deg_product,
               tangent=_t_matmul))
_register(Atom("power", (1, 1), _same, _power_curv, _power_sign, _power_mono, True,
               _power_impl, "x ^ p, elementwise, p a constant number", symbol="^",
               domain=(NN,), domain_rule=_power_domain,
               degree=_deg_power,
               tangent=_t_unary(lambda J, nd, st: J)))
_register(Atom("transpose", (1, 1), _transpose_shape, AFF, _sign_of(), (I,), True,
               _transpose_impl, "A', the transpose of a matrix (vectors unchanged)",
               symbol="'",
               degree=_deg_linear,
               tangent=_t_unary(_t_transpose)))
_register(Atom("index", (1, 1), _index_shape, AFF, _sign_of(), (I,), True, _index_impl,
               "x[i], x[a:b], X[i, j]: indexing and slicing (0-based, end exclusive)",
               symbol="[]",
               degree=_deg_linear,
               tangent=_t_unary(_t_index)))

# ---------------------------------------------------------------------------- atoms

_register(Atom("sum", (1, 1), _scalar, AFF, _sum_sign, (I,), True, _reduce(lambda x: x),
               "sum(x) = sum_i x_i",
               degree=_deg_linear,
               tangent=_t_unary(_t_sum)))
_register(Atom("mean", (1, 1), _scalar, AFF, _sum_sign, (I,), True,
               lambda ts, nds, st: _red(ts[0], nds[0]) / max(1, math.prod(ts[0].shape[
                   ts[0].ndim - nds[0]:])), "mean(x) = sum_i x_i / size(x)",
               degree=_deg_linear,
               tangent=_t_unary(_t_mean)))
_register(Atom("dot", (2, 2), _dot_shape, _bilinear, _signs_mul, _mono_mul, True,
               lambda ts, nds, st: (ts[0] * ts[1]).sum(-1), "dot(x, y) = sum_i x_i y_i",
               why_unknown=_bilinear_why("dot"),
               degree=_deg_product,
               tangent=_t_dot))
_register(Atom("quad_form", (2, 2), _quad_shape, _quad_curv, _quad_sign, (N, N), True,
               lambda ts, nds, st: torch.einsum("...i,...ij,...j->...", ts[0], ts[1], ts[0]),
               "quad_form(x, P) = x' P x, convex for a psd P", const_args=(1,),
               why_unknown=_quad_why, hint=_quad_hint(),
               degree=_deg_quad))
_register(Atom("sum_squares", (1, 1), _scalar, CVX, _s(Sign.NONNEG), _mono_abs, True,
               _reduce(lambda x: x * x), "sum_squares(x) = sum_i x_i^2",
               prox="ridge", prox_hyper=2.0,
               degree=_deg_square))
_register(Atom("square", (1, 1), _same, CVX, _nonneg_or_pos, _mono_abs, True,
               _unary(lambda x: x * x), "square(x) = x^2, elementwise",
               degree=_deg_square))
_register(Atom("abs", (1, 1), _same, CVX, _s(Sign.NONNEG), _mono_abs, False,
               _unary(torch.abs), "abs(x) = |x|, elementwise"))
_register(Atom("norm1", (1, 1), _scalar, CVX, _s(Sign.NONNEG), _mono_abs, False,
               _reduce(torch.abs), "norm1(x) = sum_i |x_i|", prox="lasso"))
_register(Atom("norm2", (1, 1), _scalar, CVX, _s(Sign.NONNEG), _mono_abs, False,
               _norm2_impl, "norm2(x) = sqrt(sum_i x_i^2) (Frobenius for matrices)",
               prox="group_lasso"))
_register(Atom("norm_inf", (1, 1), _scalar, CVX, _s(Sign.NONNEG), _mono_abs, False,
               _reduce(torch.abs, "amax"), "norm_inf(x) = max_i |x_i|", prox="linf"))
_register(Atom("exp", (1, 1), _same, CVX, _s(Sign.POSITIVE), (I,), True, _unary(torch.exp),
               "exp(x) = e^x, elementwise"))
_register(Atom("log", (1, 1), _same, CCV, _s(Sign.UNKNOWN), (I,), True, _unary(torch.log),
               "log(x), elementwise, x > 0", domain=(P,)))
_register(Atom("sqrt", (1, 1), _same, CCV, _s(Sign.NONNEG), (I,), True, _unary(torch.sqrt),
               "sqrt(x), elementwise, x >= 0", domain=(NN,)))
_register(Atom("logsumexp", (1, 1), _scalar, CVX, _s(Sign.UNKNOWN), (I,), True,
               lambda ts, nds, st: _red(ts[0], nds[0], "lse") if nds[0] else ts[0],
               "logsumexp(x) = log(sum_i exp(x_i))"))
_register(Atom("entropy", (1, 1), _scalar, CCV, _s(Sign.UNKNOWN), (N,), True,
               _reduce(lambda x: -_xlogx(x)), "entropy(x) = -sum_i x_i log x_i, x >= 0",
               domain=(NN,)))
_register(Atom("kl_div", (2, 2), lambda sh, st: (_broadcast(sh, st), ())[1], CVX,
               _s(Sign.NONNEG), (N, N), True, _kl_impl,
               "kl_div(x, y) = sum_i x_i log(x_i / y_i) - x_i + y_i, x >= 0, y > 0",
               domain=(NN, P)))
_register(Atom("huber", (1, 2), _huber_shape, CVX, _s(Sign.NONNEG), _mono_abs, True,
               _huber_impl, "huber(x, M=1) = x^2 if |x| <= M else 2 M |x| - M^2, elementwise",
               const_args=(1,)))
_register(Atom("logistic", (1, 1), _same, CVX, _s(Sign.POSITIVE), (I,), True,
               _unary(torch.nn.functional.softplus),
               "logistic(x) = log(1 + exp(x)), elementwise (as in cvxpy)"))
_register(Atom("softplus", (1, 1), _same, CVX, _s(Sign.POSITIVE), (I,), True,
               _unary(torch.nn.functional.softplus),
               "softplus(x) = log(1 + exp(x)), elementwise (torch's name for logistic)"))
_register(Atom("pos", (1, 1), _same, CVX, _s(Sign.NONNEG), (I,), False,
               _unary(torch.relu), "pos(x) = max(x, 0), elementwise"))
_register(Atom("neg", (1, 1), _same, CVX, _s(Sign.NONNEG), (D,), False,
               _unary(lambda x: torch.relu(-x)), "neg(x) = max(-x, 0), elementwise"))
_register(Atom("max", (1, 2), _maxmin_shape, CVX, lambda a, st: (
    a[0].sign if len(a) == 1 else Sign.NONNEG if a[0].sign.is_nonneg or a[1].sign.is_nonneg
    else a[0].sign.add(a[1].sign)), (I, I), False,
    lambda ts, nds, st: _red(ts[0], nds[0], "amax") if len(ts) == 1
    else torch.maximum(*_align(ts, nds)),
    "max(x) = max_i x_i; max(a, b) = elementwise maximum"))
_register(Atom("min", (1, 2), _maxmin_shape, CCV, lambda a, st: (
    a[0].sign if len(a) == 1 else Sign.NONPOS if a[0].sign.is_nonpos or a[1].sign.is_nonpos
    else a[0].sign.add(a[1].sign)), (I, I), False,
    lambda ts, nds, st: _red(ts[0], nds[0], "amin") if len(ts) == 1
    else torch.minimum(*_align(ts, nds)),
    "min(x) = min_i x_i; min(a, b) = elementwise minimum"))
_register(Atom("trace", (1, 1), _square_matrix, AFF, _trace_sign, (I,), True,
               lambda ts, nds, st: torch.diagonal(ts[0], dim1=-2, dim2=-1).sum(-1),
               "trace(X) = sum_i X_ii",
               degree=_deg_linear,
               tangent=_t_unary(_t_trace)))
_register(Atom("diag", (1, 1), _diag_shape, AFF, _diag_sign, (I,), True, _diag_impl,
               "diag(x) = the diagonal matrix of vector x; diag(X) = the diagonal of X",
               degree=_deg_linear,
               tangent=_t_unary(_t_diag)))
