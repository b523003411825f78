"""Smooth functions of affine arguments read off as data: the row tapes and Taylor data
shared by the KKT paths (:mod:`optlayer.compiler.canon`), the smooth-atom models of rows,
and the closed-form derivative model of a smooth objective (:func:`objective_model`) that
the stationary Newton solve, the first-order loop's Newton steps and the convex interior
point use in place of autograd.

Every function here is evaluated through the program's lowered IR (a :class:`Tape`), so
what it reads off (values, Jacobians and Hessians at ``z = 0`` by :func:`taylor`) is exact
for the affine and quadratic pieces it is applied to; the non-quadratic part is a smooth
atom whose derivatives are closed forms (:data:`optlayer.solvers.convex_models.ELEMENTWISE`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from optlayer import defaults
from optlayer.compiler.coefficients import AffineMaps, QuadraticModel
from optlayer.compiler.lower import Tape
from optlayer.compiler.quadratic import degree
from optlayer.linalg._common import functorch_active

__all__ = ["ELEMENTWISE_ATOMS", "REDUCED_ATOMS", "ObjectiveModel", "Rows", "SmoothSpec",
           "bare_row", "chunk_points", "objective_model", "objective_terms", "repeat",
           "smooth_model", "smooth_parts", "spec_parts", "taylor"]


def repeat(P, k):
    """Each parameter's items repeated ``k`` times in place (``b`` -> ``b, b, ...``)."""
    return {n: t.repeat_interleave(k, dim=0) for n, t in P.items()}


def chunk_points(P, points: int) -> int:
    """How many of ``points`` read-off points to evaluate at once on :func:`repeat` copies
    of ``P`` (each ``(B, ...)``): as many as keep the copies within
    ``defaults.READOFF_MAX_ELEMENTS`` parameter elements, at least one."""
    per = max(1, sum(t.numel() for t in P.values()))
    return max(1, min(points, defaults.READOFF_MAX_ELEMENTS // per))


class Rows:
    """Row blocks lowered to one function ``(z, P) -> (B, rows)`` (a :class:`Tape`);
    ``phase_one=True`` lowers each row's phase-I form where it has one."""

    def __init__(self, program, rows, phase_one: bool = False) -> None:
        self.program = program
        self.rows = list(rows)
        self.exprs = [r.phase_one if phase_one and r.phase_one is not None else r.expr
                      for r in self.rows]
        self.tape = Tape(self.exprs) if self.rows else None
        self._coefficients: dict = {}   # second -> the model of coefficients()

    def __bool__(self) -> bool:
        return bool(self.rows)

    def blocks(self, z, P) -> list:
        B = z.shape[0]
        vals = self.tape.run(self.program.env(z, P))
        out = []
        for e in self.exprs:
            v = vals[id(e)]
            out.append(v.reshape(B, -1) if v.numel() >= B and v.dim() > 0 and v.shape[0] == B
                       else v.reshape(1, -1).expand(B, -1))
        return out

    def __call__(self, z, P) -> torch.Tensor:
        return torch.cat(self.blocks(z, P), dim=-1)

    def coefficients(self, P, B: int, like, second: bool = False):
        """As :func:`taylor` at ``P`` for affine rows (``second``: scalar quadratic rows),
        from their coefficients (:mod:`optlayer.compiler.coefficients`: one pass over the
        IR, differentiable in ``P``): ``(c (B, rows), J (B, rows, N))``, and the rows'
        Hessians ``(B, rows, N, N)`` with ``second``; None where an atom or a form is not
        covered or ``defaults.READOFF_COEFFICIENTS`` is off (the caller reads off at
        points)."""
        if not defaults.READOFF_COEFFICIENTS:
            return None
        model = self._coefficients.get(second)
        if model is None:
            model = self._coefficients[second] = (
                QuadraticModel(self.program.layout, [(1.0, e) for e in self.exprs])
                if second and all(e.shape == () for e in self.exprs)
                else None if second else AffineMaps(self.program.layout, self.exprs))
        if model is None or not model.ok:
            return None
        return model.rows(P, B, like)

    def sizes(self, z, P) -> list:
        return [b.shape[-1] for b in self.blocks(z, P)]


def taylor(fn, P, B, N, k, dtype, device, second):
    """Value, Jacobian and (``second``) Hessians at ``z = 0`` of ``fn(z, P) -> (B, k)``, by
    autograd on copies of ``z = 0``: one copy per item, row ``i`` and (``second``) unknown
    ``j``, weighted by ``e_i`` for the first backward pass and ``e_j`` for the second, so
    ``B k N`` points in all and no loop over rows or unknowns. The copies of ``P`` they
    need run in chunks of at most ``defaults.READOFF_MAX_ELEMENTS`` parameter elements
    (a chunk of one point per item uses ``P`` itself), so the memory stays bounded
    however large ``k N`` and the data are.
    ``(c (B, k), J (B, k, N), Q (B, k, N, N) or None)``, detached. Exact (no differences):
    for an affine or quadratic ``fn`` these are its coefficients."""
    m = N if second else 1
    pairs = k * m                      # point t: row t // m, unknown t % m
    size = chunk_points(P, pairs)
    W = torch.eye(k, dtype=dtype, device=device).repeat_interleave(m, 0)    # (pairs, k)
    E = torch.eye(N, dtype=dtype, device=device).repeat(k, 1) if second else None
    c, grads, hess = None, [], []
    for start in range(0, pairs, size):
        kk = min(size, pairs - start)
        Z = torch.zeros(B * kk, N, dtype=dtype, device=device, requires_grad=True)
        w = W[start:start + kk].expand(B, kk, k).reshape(-1, k)
        with torch.enable_grad():
            vals = fn(Z, P if kk == 1 else repeat(P, kk))
            (gr,) = torch.autograd.grad((w * vals).sum(), Z, create_graph=second,
                                        materialize_grads=True)
            if second and gr.requires_grad:   # (not for an affine fn: no curvature)
                e = E[start:start + kk].expand(B, kk, N).reshape(-1, N)
                (Hr,) = torch.autograd.grad((gr * e).sum(), Z, materialize_grads=True)
                hess.append(Hr.reshape(B, kk, N))
        if c is None:   # the value at z = 0, the same at every point
            c = vals.detach().reshape(B, kk, k)[:, 0, :]
        grads.append(gr.detach().reshape(B, kk, N))
    J = (torch.cat(grads, 1) if len(grads) > 1 else grads[0]).reshape(B, k, m, N)[:, :, 0, :]
    Q = None
    if second and not hess:
        Q = torch.zeros(B, k, N, N, dtype=dtype, device=device)
    elif second:
        Q = (torch.cat(hess, 1) if len(hess) > 1 else hess[0]).reshape(B, k, N, N).detach()
        Q = 0.5 * (Q + Q.transpose(-1, -2))
    return c, J, Q


class SmoothSpec(NamedTuple):
    """A row ``coef φ(u) + rest`` (:func:`smooth_parts`): ``name`` keys
    :data:`optlayer.solvers.convex_models.ELEMENTWISE` (or is ``"logsumexp"``),
    ``static`` its static arguments, ``reduce`` as for
    :class:`~optlayer.solvers.convex_models.SmoothAtomRows`, ``u`` the affine argument,
    ``sign * coef`` the parameter-only weight (``coef`` None: 1), ``rest`` the affine part
    (None: 0), ``arg`` a parameter-only scalar second argument of the atom (``huber``'s
    ``M``; None: its default); set where the row is lowered: ``rows`` the row count,
    ``split`` the sizes of :func:`spec_parts` and ``rest_varies`` whether ``rest`` has
    variables."""

    name: str
    static: tuple
    reduce: str
    u: object
    sign: float = 1.0
    coef: object = None
    rest: object = None
    arg: object = None
    rows: int = 0
    split: tuple = ()
    rest_varies: bool = False


# atoms a smooth-atom row can hold: elementwise, or reduced to one value
ELEMENTWISE_ATOMS = ("exp", "log", "sqrt", "softplus", "logistic", "power", "huber")
REDUCED_ATOMS = {"entropy": ("neg_xlogx", "sum"), "logsumexp": ("logsumexp", "logsumexp"),
                 "norm2": ("norm2", "norm2")}


def smooth_parts(e):
    """:class:`SmoothSpec` when ``e`` is ``coef φ(u) + rest``: one smooth atom ``φ`` (of
    :data:`ELEMENTWISE_ATOMS`, possibly summed, or of :data:`REDUCED_ATOMS`) of an affine
    ``u``, under sums and differences with affine terms and products or quotients with
    parameter-only factors (scalars, or of the atom's shape before a reduction); else None."""
    from optlayer.ir import Apply, functions

    if not isinstance(e, Apply):
        return None
    name, args = e.atom.name, e.args
    if name in ELEMENTWISE_ATOMS or name in REDUCED_ATOMS:
        if degree(args[0]) > 1:
            return None
        arg = None
        if len(args) > 1:   # huber's M: a parameter-only scalar
            arg = args[1]
            if len(args) > 2 or degree(arg) > 0 or math.prod(arg.shape) != 1:
                return None
        key, reduce = REDUCED_ATOMS.get(name, (name, "none"))
        return SmoothSpec(key, tuple(e.static), reduce, args[0], arg=arg)
    if name == "sum":
        inner = smooth_parts(args[0])
        if inner is None or inner.reduce != "none":
            return None
        rest = None if inner.rest is None else functions.sum(inner.rest)
        return inner._replace(reduce="sum", rest=rest)
    if name == "negate":
        inner = smooth_parts(args[0])
        return None if inner is None else inner._replace(
            sign=-inner.sign, rest=None if inner.rest is None else -inner.rest)
    if name not in ("add", "sub", "mul", "div") or len(args) != 2:
        return None
    a, b = args
    da, db = degree(a), degree(b)
    inner_first = da > 1 >= db
    if not (inner_first or db > 1 >= da):
        return None
    child, other = (a, b) if inner_first else (b, a)
    if child.shape != e.shape:  # the atom's value is not broadcast up
        return None
    inner = smooth_parts(child)
    if inner is None:
        return None
    if name == "add":
        return inner._replace(rest=other if inner.rest is None else inner.rest + other)
    if name == "sub":
        if inner_first:
            return inner._replace(rest=-other if inner.rest is None else inner.rest - other)
        return inner._replace(sign=-inner.sign,
                              rest=other if inner.rest is None else other - inner.rest)
    # a parameter-only factor: a scalar, or of the atom's own shape before a reduction
    if name == "div" and not inner_first or degree(other) > 0:
        return None
    if other.shape != () and inner.reduce != "none":
        return None
    if name == "mul":
        coef = other if inner.coef is None else other * inner.coef
        rest = None if inner.rest is None else other * inner.rest
    else:
        coef = 1.0 / other if inner.coef is None else inner.coef / other
        rest = None if inner.rest is None else inner.rest / other
    return inner._replace(coef=coef, rest=rest)


def spec_parts(spec: SmoothSpec) -> list:
    """The expressions a smooth-atom row is read off from, in this order: ``u``, then
    ``coef``, ``arg`` and ``rest`` where present (all affine)."""
    return [e for e in (spec.u, spec.coef, spec.arg, spec.rest) if e is not None]


def smooth_model(spec, c, J, B):
    """:class:`~optlayer.solvers.convex_models.SmoothAtomRows` of a smooth-atom row from
    the values ``c`` and Jacobians ``J`` of :func:`spec_parts` at ``z = 0`` (exact: all
    affine)."""
    from optlayer.solvers.convex_models import ELEMENTWISE, SmoothAtomRows

    parts_c = c.split_with_sizes(spec.split, -1)
    coef = None if spec.coef is None and spec.sign == 1.0 else \
        spec.sign * (parts_c[1] if spec.coef is not None else c.new_ones(B, 1))
    h = None if spec.rest is None else -parts_c[-1]
    G = J[:, -spec.split[-1]:] if spec.rest_varies else None
    phi = None
    if spec.name not in ("logsumexp", "norm2"):
        base = ELEMENTWISE[spec.name]
        static = spec.static if spec.arg is None else \
            (parts_c[1 + (spec.coef is not None)],)       # (B, 1): broadcast over u

        def phi(u):
            return base(u, *static)

    return SmoothAtomRows(phi, spec.reduce, J[:, :spec.split[0]], parts_c[0], coef, G, h)


def bare_row(expr):
    from optlayer.compiler.epigraph import Row

    return Row(None, expr)


class ObjectiveModel:
    """``f(z) = c + pᵀz + ½ zᵀQz + Σₜ wₜ gₜ(z)`` per item with closed-form derivatives:
    the quadratic part as data (``Q (B, N, N)`` or None for none, ``p (B, N)``,
    ``c (B,)``), each ``gₜ`` a
    one-row smooth-atom model (:class:`~optlayer.solvers.convex_models.SmoothAtomRows`,
    joined in ``rows``; None: no such term) with the weights ``w (B, r)``. A few tensor
    operations per evaluation where autograd would take a forward and ``1 + N``
    backward passes."""

    def __init__(self, Q, p, c, rows, weights, linear: bool = True) -> None:
        from optlayer.solvers.convex_models import QuadraticObjective

        self.Q, self.p, self.c, self.rows, self.w = Q, p, c, rows, weights
        self.quad = QuadraticObjective(Q, p)
        # False: no quadratic or linear term (Q None, p = 0), skipped in the evaluations
        self.linear = linear or Q is not None

    def _quadratic(self, z):
        if not self.linear:
            return self.c, None
        g = self.quad.grad(z)      # Qz + p: the value is c + z'(Qz + 2p) / 2
        return self.c + 0.5 * (z * (g + self.p)).sum(-1), g

    def value(self, z):
        """``f(z)``, ``(B,)``."""
        f = self._quadratic(z)[0]
        return f if self.rows is None else f + (self.w * self.rows.values(z)).sum(-1)

    # the objective protocol of optlayer.solvers.convex_models (the convex interior point)
    def grad(self, z):
        """``∇f(z)``."""
        return self.value_grad(z)[1]

    def grad_hess(self, z):
        """``(∇f(z), ∇²f(z))``."""
        g = self.quad.grad(z) if self.linear else None
        if self.rows is None:
            return g, self.Q
        _, J, H = self.rows.second(z, self.w)
        gz = (self.w.unsqueeze(-1) * J).sum(-2)
        return gz if g is None else gz + g, H if self.Q is None else self.Q + H

    def value_grad(self, z):
        """``(f (B,), ∇f (B, N))`` at ``z``."""
        f, g = self._quadratic(z)
        if self.rows is None:
            return f, g
        vals, jt = self.rows.first(z, self.w)
        return f + (self.w * vals).sum(-1), jt if g is None else jt + g

    def value_grad_hess(self, z):
        """``(f (B,), ∇f (B, N), ∇²f (B, N, N))`` at ``z``."""
        f, g = self._quadratic(z)
        if self.rows is None:
            return f, g, self.Q
        vals, J, H = self.rows.second(z, self.w)
        gz = (self.w.unsqueeze(-1) * J).sum(-2)
        return (f + (self.w * vals).sum(-1), gz if g is None else gz + g,
                H if self.Q is None else self.Q + H)


def objective_terms(program):
    """How ``f``'s terms split (cached per program; no parameters needed):
    ``(quadratic, smooth)``, the ``(weight, expr)`` of the terms of degree <= 2 and the
    ``(weight, spec)`` of the smooth-atom terms (:func:`smooth_parts`), or None when some
    term is neither or none is a smooth atom (a quadratic ``f`` has ``(Q, p)`` from
    ``Program.quad``)."""
    cache = program.derived
    if "objective terms" not in cache:
        quad, smooth, out = [], [], None
        for w, e in program.plan.smooth:
            spec = None if degree(e) <= 2 else smooth_parts(e)
            if spec is None and degree(e) > 2 or math.prod(e.shape) != 1:
                break
            if spec is None:
                quad.append((float(w), e))
            else:
                smooth.append((float(w), spec))
        else:
            out = (quad, smooth) if smooth else None
        cache["objective terms"] = out
    return cache["objective terms"]


def _objective_structure(program, P):
    """:func:`objective_terms` lowered (cached per program): ``(weights, quad_fn, specs,
    parts_fn, sizes)``, the weights of the quadratic terms and the :class:`Rows` of those
    terms (None without one), ``(weight, spec)`` of the smooth ones with their part sizes
    set and the :class:`Rows` of the :func:`spec_parts` of each, ``sizes`` its output
    sizes; or None."""
    cache = program.derived
    if "objective structure" in cache:
        return cache["objective structure"]
    terms = objective_terms(program)
    out = None
    if terms is not None:
        quad, smooth = terms
        quad_fn = Rows(program, [bare_row(e) for _, e in quad]) if quad else None
        parts_fn = Rows(program, [bare_row(e) for _, spec in smooth for e in spec_parts(spec)])
        like = next(iter(P.values()))
        z1 = torch.zeros(1, program.layout.size, dtype=like.dtype, device=like.device)
        sizes = parts_fn.sizes(z1, {k: v[:1] for k, v in P.items()})
        specs, at = [], 0
        for w, spec in smooth:
            k = len(spec_parts(spec))
            specs.append((w, spec._replace(rows=1, split=tuple(sizes[at:at + k]), rest_varies=(
                spec.rest is not None and degree(spec.rest) > 0))))
            at += k
        out = ([w for w, _ in quad], quad_fn, specs, parts_fn, sizes)
    cache["objective structure"] = out
    return out


def objective_model(program, P) -> ObjectiveModel | None:
    """The :class:`ObjectiveModel` of the program's smooth objective at the parameters
    ``P`` (a second-order :func:`taylor` pass on the weighted sum of the quadratic terms,
    a first-order one on the smooth terms' affine parts), or None unless every term is
    quadratic or one smooth atom of an affine argument (:func:`smooth_parts`: ``exp``,
    ``log``, ``logistic``, ``huber``, ``logsumexp``, ...) with at least one of the latter;
    None under a ``torch.func`` transform, above ``defaults.QUADRATIC_MAX_SIZE``
    unknowns (the model's Hessians are dense) and where the parameter copies of the
    read-off would exceed ``defaults.OBJECTIVE_MODEL_MAX_ELEMENTS``."""
    from optlayer.solvers.convex_models import StackedRows

    if functorch_active():   # (taylor's autograd cannot run under a torch.func transform)
        return None
    N = program.layout.size
    st = None if N > defaults.QUADRATIC_MAX_SIZE else _objective_structure(program, P)
    if st is None:
        return None
    quad, quad_fn, specs, parts_fn, sizes = st
    like = next(iter(P.values()))
    B = like.shape[0]
    # from the coefficients where they cover the pieces, else by taylor on copies of P
    cJ = parts_fn.coefficients(P, B, like)
    Qpc = None
    if quad_fn is not None and defaults.READOFF_COEFFICIENTS:
        qmodel = program.derived.get("objective quadratic terms")
        if qmodel is None:
            qmodel = program.derived["objective quadratic terms"] = QuadraticModel(
                program.layout, list(zip(quad, quad_fn.exprs, strict=True)))
        Qpc = qmodel(P, B, like, value=True) if qmodel.ok else None
    copies = max(sum(sizes) if cJ is None else 0,
                 N if quad_fn is not None and Qpc is None else 0)
    if B * copies * sum(t[0].numel() for t in P.values()) > \
            defaults.OBJECTIVE_MODEL_MAX_ELEMENTS:
        return None
    opts = {"dtype": like.dtype, "device": like.device}
    Q = None
    p, c0 = like.new_zeros(B, N), like.new_zeros(B)
    if Qpc is not None:
        Q, p, c0 = (t.detach() for t in Qpc)
    elif quad_fn is not None:
        wq = torch.tensor(quad, **opts)
        c, J, H = taylor(lambda Z, PP: (quad_fn(Z, PP) * wq).sum(-1, keepdim=True), P, B, N,
                         1, second=True, **opts)
        Q, p, c0 = H[:, 0], J[:, 0], c[:, 0]
    c, J = (t.detach() for t in cJ) if cJ is not None else \
        taylor(parts_fn, P, B, N, sum(sizes), second=False, **opts)[:2]
    rows, at = [], 0
    for _w, spec in specs:
        k = sum(spec.split)
        rows.append(smooth_model(spec, c[:, at:at + k], J[:, at:at + k], B))
        at += k
    model = rows[0] if len(rows) == 1 else StackedRows(rows, [1] * len(rows))
    w = torch.tensor([w for w, _ in specs], **opts).expand(B, len(specs))
    return ObjectiveModel(Q, p, c0, model, w, linear=quad_fn is not None)
