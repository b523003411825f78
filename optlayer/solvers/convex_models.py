"""What :class:`~optlayer.solvers.ConvexInteriorPoint` asks of ``f`` and ``g``: derivative models.

Per iteration the interior point needs, at the iterate ``x`` with multipliers ``λ``,
the rows ``g(x)``, their Jacobian ``Dg(x)``, ``∇f(x)`` and the curvature of the
Lagrangian ``∇²f(x) + Σᵢ λᵢ ∇²gᵢ(x)``; in its line search, at trial points, only
``g`` and ``∇f + Dgᵀλ``. A *model* answers these questions:

* objective model: ``grad(x) -> (*batch, n)`` and ``grad_hess(x) -> (∇f, ∇²f or None)``
  (None: no curvature);
* row model: ``values(x) -> g (*batch, r)``, ``first(x, lam) -> (g, Dgᵀλ)`` and
  ``second(x, lam) -> (g, Dg (*batch, r, n), Σᵢ λᵢ ∇²gᵢ or None)``.

The autograd models (:class:`AutogradObjective`, :class:`AutogradRows`, the
default) differentiate the user's functions: one forward pass and ``1 + r + n``
backward passes for ``second``. The data models answer from matrices without any
autograd: :class:`QuadraticObjective` (``½xᵀQx + pᵀx``), :class:`AffineRows`
(``Gx - h``: Jacobian ``G``, no curvature), :class:`QuadraticRows` (constant
Hessians), :class:`QuadOverLinRows` (the smooth cone row ``‖u‖²/s - s`` of affine
``u, s``, closed-form derivatives) and :class:`SmoothAtomRows` (``c φ(u) + Gx - h`` for
a smooth atom ``φ`` of an affine ``u``: ``exp``, ``log``, ``softplus``, ``logsumexp``,
...; closed-form derivatives). :class:`StackedRows` joins row models in a given row
order.

Example:
    >>> import torch
    >>> from optlayer.solvers import ConvexInteriorPoint
    >>> G = torch.tensor([[1.0, 1.0]], dtype=torch.float64)   # x₁ + x₂ ≤ 1 as data
    >>> h = torch.tensor([1.0], dtype=torch.float64)
    >>> f = lambda x, c: 0.5 * ((x - c) ** 2).sum(-1)
    >>> g = lambda x, _p=None: x @ G.mT - h
    >>> ip = ConvexInteriorPoint(f, g, ineq_model=lambda _p: AffineRows(G, h))
    >>> c = torch.tensor([1.0, 1.0], dtype=torch.float64)
    >>> ip.run(torch.zeros(2, dtype=torch.float64), c).params[0]
    tensor([0.5000, 0.5000], dtype=torch.float64)
"""

from __future__ import annotations

import functools

import torch

from optlayer.linalg._common import functorch_active
from optlayer.solvers._base import hessian
from optlayer.tree import flatten, tree_ordinary

__all__ = [
    "AffineRows",
    "AutogradObjective",
    "AutogradRows",
    "NoRows",
    "NormRows",
    "QuadraticObjective",
    "QuadOverLinRows",
    "QuadraticRows",
    "PhaseOneRows",
    "SmoothAtomRows",
    "StackedRows",
    "ELEMENTWISE",
    "outside_inference_mode",
]


def _mv(M, v):
    """``M v`` per item (a product and a sum: fewer dispatches than ``matmul`` at small n)."""
    return (M * v.unsqueeze(-2)).sum(-1)


def _tmv(M, v):
    """``Mᵀ v`` per item (``M (*batch, k, n)``, ``v (*batch, k)``) without a transposed view."""
    return (v.unsqueeze(-1) * M).sum(-2)


def _gram(V, w, H):
    """``Vᵀ diag(w) V + H`` per item (``w (*batch, k)`` or ``(*batch, 1)``; ``H`` None: no
    term); one fused product on a single batch dimension (``bmm`` / ``baddbmm``),
    ``matmul`` otherwise."""
    WV = w.unsqueeze(-1) * V
    if V.dim() == 3:
        return torch.bmm(V.mT, WV) if H is None else torch.baddbmm(H, V.mT, WV)
    K = V.mT @ WV
    return K if H is None else K + H


def _needs_graph(x, params) -> bool:
    """True when the derivatives must stay differentiable (unrolling, or a transform)."""
    if functorch_active():
        return True
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(isinstance(t, torch.Tensor) and t.requires_grad
                                  for t in flatten(params)[0])


def _columns(out, z, k):
    """``k`` backward passes of ``out[..., j].sum()`` to ``z``, stacked on the last dim."""
    return torch.stack([torch.autograd.grad(out[..., j].sum(), z, retain_graph=True,
                                            materialize_grads=True)[0] for j in range(k)], -1)


def _ordinary_params(params):
    """In inference mode, ``params`` with ordinary copies of its inference tensors, made out
    of it (autograd saves the parameters for its backward passes; it refuses inference
    tensors); ``params`` otherwise."""
    if not torch.is_inference_mode_enabled():
        return params
    with torch.inference_mode(False):
        return tree_ordinary(params)


def outside_inference_mode(method):
    """Decorator for the methods of a model that takes autograd: called in
    ``torch.inference_mode`` (the interior point's loop runs there), the method runs out of
    it, without a graph, on ordinary copies of its tensor arguments; its results are
    ordinary tensors, which the loop reads in inference mode. (The model's own tensors
    must be ordinary: made out of inference mode.)"""

    @functools.wraps(method)
    def run(self, *args):
        if not torch.is_inference_mode_enabled():
            return method(self, *args)
        with torch.inference_mode(False), torch.no_grad():
            return method(self, *tree_ordinary(args))

    return run


class AutogradObjective:
    """``∇f`` and ``∇²f`` of ``fun(x, params)`` by autograd (``n`` backward passes for the
    Hessian without a graph; :func:`optlayer.conditions.batched_hessian` with one)."""

    def __init__(self, fun, params) -> None:
        self.fun, self.params = fun, _ordinary_params(params)

    def _total(self, z):
        return self.fun(z, self.params).sum()

    @outside_inference_mode
    def grad(self, x):
        if _needs_graph(x, self.params):
            return torch.func.grad(self._total)(x)
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            return torch.autograd.grad(self._total(z), z)[0]

    @outside_inference_mode
    def grad_hess(self, x):
        if _needs_graph(x, self.params):
            return self.grad(x), hessian(self.fun, x, self.params)
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._total(z), z, create_graph=True)
            if not g.requires_grad:  # f is affine in x
                return g, None
            return g.detach(), _columns(g, z, x.shape[-1])


class QuadraticObjective:
    """``f(x) = ½xᵀQx + pᵀx``: ``∇f = Qx + p``, ``∇²f = Q`` (``Q`` None: linear ``f``)."""

    def __init__(self, Q, p) -> None:
        self.Q, self.p = Q, p

    def grad(self, x):
        g = self.p.expand(x.shape)
        return g if self.Q is None else _mv(self.Q, x) + g

    def grad_hess(self, x):
        Q = None if self.Q is None else self.Q.expand(x.shape + x.shape[-1:])
        return self.grad(x), Q


class AutogradRows:
    """Rows ``g = fun(x, params)`` differentiated by autograd: ``first`` is one backward pass
    of ``λᵀg``; ``second`` adds ``r`` backward passes for ``Dg`` and ``n`` for the Hessian
    of ``λᵀg`` (``torch.func`` when a graph is needed: unrolling, transforms)."""

    def __init__(self, fun, params) -> None:
        self.fun, self.params = fun, _ordinary_params(params)

    def values(self, x):
        return self.fun(x, self.params)

    @outside_inference_mode
    def first(self, x, lam):
        if _needs_graph(x, (self.params, lam)):
            g, vjp = torch.func.vjp(lambda z: self.fun(z, self.params), x)
            return g, vjp(lam)[0]
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            g = self.fun(z, self.params)
            if not g.requires_grad:
                return g, torch.zeros_like(x)
            (v,) = torch.autograd.grad(g, z, grad_outputs=lam.expand(g.shape).contiguous())
        return g.detach(), v

    @outside_inference_mode
    def second(self, x, lam):
        r = lam.shape[-1]
        if _needs_graph(x, (self.params, lam)):
            g, vjp = torch.func.vjp(lambda z: self.fun(z, self.params), x)
            eye = torch.eye(r, dtype=x.dtype, device=x.device)
            rows = torch.func.vmap(lambda e: vjp(e.expand(g.shape))[0])(eye)
            H = hessian(lambda z, lm: (lm * self.fun(z, self.params)).sum(-1), x, lam)
            return g, rows.movedim(0, -2), H
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            g = self.fun(z, self.params)
            if not g.requires_grad:  # rows independent of x
                return g, x.new_zeros(g.shape + x.shape[-1:]), None
            (v,) = torch.autograd.grad((lam * g).sum(), z, create_graph=True)
            J = _columns(g, z, r).movedim(-1, -2)
            H = _columns(v, z, x.shape[-1]) if v.requires_grad else None
        return g.detach(), J, H


class NoRows:
    """No inequality rows: ``g`` is an empty ``(*batch, 0)`` tensor."""

    def values(self, x):
        return x.new_zeros(x.shape[:-1] + (0,))

    def first(self, x, lam):
        return self.values(x), torch.zeros_like(x)

    def second(self, x, lam):
        return self.values(x), x.new_zeros(x.shape[:-1] + (0, x.shape[-1])), None


class AffineRows:
    """Rows ``g = Gx - h``: Jacobian ``G`` (``(*batch, r, n)``), no curvature."""

    def __init__(self, G, h) -> None:
        self.G, self.h = G, h

    def values(self, x):
        return _mv(self.G, x) - self.h

    def first(self, x, lam):
        return self.values(x), _mv(self.G.mT, lam)

    def second(self, x, lam):
        return self.values(x), self.G.expand(x.shape[:-1] + self.G.shape[-2:]), None


class QuadraticRows:
    """Rows ``gᵢ = ½xᵀQᵢx + pᵢᵀx + cᵢ`` (``Q (*batch, r, n, n)`` symmetric, ``p (*batch, r, n)``,
    ``c (*batch, r)``): Jacobian rows ``Qᵢx + pᵢ``, curvature ``Σᵢ λᵢ Qᵢ``."""

    def __init__(self, Q, p, c) -> None:
        self.Q, self.p, self.c = Q, p, c

    def _parts(self, x):
        xr = x.unsqueeze(-2)
        J = (self.Q * xr.unsqueeze(-2)).sum(-1) + self.p  # Qᵢx + pᵢ, (*batch, r, n)
        # gᵢ = xᵀ(½Qᵢx + pᵢ) + cᵢ = ½ xᵀ(Jᵢ + pᵢ) + cᵢ
        g = ((J + self.p) * xr).sum(-1) * 0.5 + self.c
        return g, J

    def values(self, x):
        return self._parts(x)[0]

    def first(self, x, lam):
        g, J = self._parts(x)
        return g, _mv(J.mT, lam)

    def second(self, x, lam):
        g, J = self._parts(x)
        return g, J, (lam.unsqueeze(-1).unsqueeze(-1) * self.Q).sum(-3)


class QuadOverLinRows:
    """One row ``g = ‖Ux + u₀‖² / s - s`` with ``s = aᵀx + b > 0`` (the smooth form of the cone
    ``‖u‖ ≤ s``): ``∇g = Uᵀ(2u/s) - (‖u‖²/s² + 1) a`` and ``∇²g = (2/s) VᵀV`` with
    ``V = U - u aᵀ/s`` (``U (*batch, k, n)``, ``u₀ (*batch, k)``, ``a (*batch, n)``,
    ``b (*batch)``)."""

    def __init__(self, U, u0, a, b) -> None:
        self.U, self.u0, self.a, self.b = U, u0, a, b
        self._b = b.unsqueeze(-1)

    def _parts(self, x):
        u = _mv(self.U, x) + self.u0
        s = (self.a * x).sum(-1, keepdim=True) + self._b
        q = (u * u).sum(-1, keepdim=True)
        return u, s, q, q / s - s

    def _grad(self, u, s, q):
        # Uᵀ(2u/s) - (q/s² + 1) a with t = u/s: 2 Uᵀt - (tᵀt + 1) a
        t = u / s
        return 2.0 * _tmv(self.U, t) - ((t * t).sum(-1, keepdim=True) + 1.0) * self.a

    def values(self, x):
        return self._parts(x)[3]

    def first(self, x, lam):
        u, s, q, g = self._parts(x)
        return g, lam * self._grad(u, s, q)

    def second(self, x, lam):
        u, s, q, g = self._parts(x)
        V = self.U - u.unsqueeze(-1) * (self.a / s).unsqueeze(-2)
        H = _gram(V, 2.0 * lam / s, None)  # (a weight per item, broadcast over the rows)
        return g, self._grad(u, s, q).unsqueeze(-2), H


class NormRows:
    """One row ``g = ‖Ux + u₀‖ - s`` with ``s = aᵀx + b`` (the phase I form of the cone row):
    ``∇g = Uᵀû - a`` (``û = u/‖u‖``, 0 at ``u = 0``), ``∇²g = Uᵀ(I - ûûᵀ)U / ‖u‖`` with
    ``‖u‖`` floored at ``sqrt(eps)`` (at the apex ``u = 0`` autograd gives NaN: this keeps
    the Newton system finite, with a large curvature that keeps ``u`` put)."""

    def __init__(self, U, u0, a, b) -> None:
        self.U, self.u0, self.a, self.b = U, u0, a, b

    def _parts(self, x):
        u = _mv(self.U, x) + self.u0
        nrm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        s = (self.a * x).sum(-1, keepdim=True) + self.b.unsqueeze(-1)
        floor = torch.finfo(x.dtype).eps ** 0.5
        uhat = u / nrm.clamp_min(floor)
        return u, uhat, nrm.clamp_min(floor), nrm - s

    def values(self, x):
        return self._parts(x)[3]

    def first(self, x, lam):
        _, uhat, _, g = self._parts(x)
        return g, lam * (_mv(self.U.mT, uhat) - self.a)

    def second(self, x, lam):
        _, uhat, nrm, g = self._parts(x)
        Uh = _mv(self.U.mT, uhat)
        H = (self.U.mT @ self.U - Uh.unsqueeze(-1) * Uh.unsqueeze(-2)) * (lam / nrm).unsqueeze(-1)
        return g, (Uh - self.a).unsqueeze(-2), H


def _power(u, p):
    # (three powers: u^(p-2) u^2 would be NaN at u = 0 for p < 2, where u^p is 0)
    return u ** p, p * u ** (p - 1), (p * (p - 1)) * u ** (p - 2)


def _softplus(u):
    sg = torch.sigmoid(u)
    return torch.nn.functional.softplus(u), sg, sg * (1.0 - sg)


def _exp(u):
    e = torch.exp(u)
    return e, e, e


def _log(u):
    inv = u.reciprocal()
    return torch.log(u), inv, -inv * inv


def _sqrt(u):
    r = torch.sqrt(u)
    return r, 0.5 / r, -0.25 / (r * u)


def _neg_xlogx(u):
    return -torch.special.xlogy(u, u), -torch.log(u) - 1.0, u.reciprocal().neg_()


def _huber(u, M=1.0):
    # as the atom: m (2u - m), m = u clipped to [-M, M]; φ'' is 2 where m = u (|u| <= M,
    # the atom's own autograd at |u| = M too), else 0
    m = torch.clamp(u, -M, M)
    return m * (2.0 * u - m), 2.0 * m, 2.0 * (m == u).to(u.dtype)


# Smooth elementwise functions: ``φ(u, *static) -> (φ(u), φ'(u), φ''(u))`` (the static
# argument of ``power`` is its exponent, that of ``huber`` its ``M``, a float or a tensor
# that broadcasts over ``u``). ``neg_xlogx`` is the summand of ``entropy``.
ELEMENTWISE = {
    "exp": _exp,
    "log": _log,
    "sqrt": _sqrt,
    "softplus": _softplus,
    "logistic": _softplus,
    "power": _power,
    "neg_xlogx": _neg_xlogx,
    "huber": _huber,
}


class SmoothAtomRows:
    """Rows ``g = c φ(u) + Gx - h`` of a smooth atom of the affine ``u = Ux + u₀``
    (``U (*batch, k, n)``, ``u₀ (*batch, k)``) in closed form, ``reduce`` one of:

    * ``"none"``: ``k`` rows ``cᵢ φ(uᵢ)``, ``φ`` from :data:`ELEMENTWISE`
      (``c (*batch, 1)`` or ``(*batch, k)``): Jacobian ``diag(c φ') U``, curvature
      ``Uᵀ diag(λ c φ'') U``;
    * ``"sum"``: one row ``Σᵢ cᵢ φ(uᵢ)``: Jacobian ``(c φ')ᵀ U``, curvature
      ``λ Uᵀ diag(c φ'') U``;
    * ``"logsumexp"``: one row ``c log Σᵢ exp(uᵢ)`` (``φ`` unused, ``c (*batch, 1)``):
      with ``p = softmax(u)`` and ``t = Uᵀp``, Jacobian ``c tᵀ``, curvature
      ``λ c (Uᵀ diag(p) U - t tᵀ)``;
    * ``"norm2"``: one row ``c ‖u‖`` (``φ`` unused, ``c (*batch, 1)``): with ``û = u / ‖u‖``
      and ``t = Uᵀû``, Jacobian ``c tᵀ``, curvature ``λ c (UᵀU - t tᵀ) / ‖u‖``, ``‖u‖``
      floored at ``sqrt(eps)`` as in :class:`NormRows` (smooth only where ``u ≠ 0``: the
      layer checks that ``u`` cannot vanish before it uses this model).

    ``c`` None: a weight of 1. ``G (*batch, rows, n)`` / ``h (*batch, rows)``: the affine
    part ``Gx - h`` (each None when absent: ``h`` alone for a constant)."""

    def __init__(self, phi, reduce, U, u0, c, G=None, h=None) -> None:
        if reduce not in ("none", "sum", "logsumexp", "norm2"):
            raise ValueError(f"SmoothAtomRows: reduce must be 'none', 'sum', 'logsumexp' or "
                             f"'norm2'; got {reduce!r}")
        self.phi, self.reduce = phi, reduce
        self.U, self.u0, self.c, self.G, self.h = U, u0, c, G, h
        self._UtU = None   # norm2: UᵀU, made at the first second-order evaluation

    def _parts(self, x):
        """``(g, c φ'(u), c φ''(u))``; for logsumexp ``(g, c p, p)``, for norm2
        ``(g, c û, (û, c / ‖u‖))`` (``c`` None: 1)."""
        u = _mv(self.U, x) + self.u0
        c = self.c
        if self.reduce == "norm2":
            nrm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
            inv = nrm.clamp_min(torch.finfo(u.dtype).eps ** 0.5).reciprocal()
            uhat = u * inv
            g, w1, w2 = (nrm, uhat, (uhat, inv)) if c is None else \
                (c * nrm, c * uhat, (uhat, c * inv))
        elif self.reduce == "logsumexp":
            v = torch.logsumexp(u, -1, keepdim=True)
            p = torch.exp(u - v)
            g, w1, w2 = (v, p, p) if c is None else (c * v, c * p, p)
        else:
            g, w1, w2 = self.phi(u)
            if c is not None:
                g, w1, w2 = c * g, c * w1, c * w2
            if self.reduce == "sum":
                g = g.sum(-1, keepdim=True)
        if self.G is not None:
            g = g + _mv(self.G, x)
        if self.h is not None:
            g = g - self.h
        return g, w1, w2

    def values(self, x):
        return self._parts(x)[0]

    def first(self, x, lam):
        g, w1, _ = self._parts(x)
        v = _tmv(self.U, lam * w1)  # (λ broadcasts: one row for sum and logsumexp)
        if self.G is not None:
            v = v + _tmv(self.G, lam)
        return g, v

    def second(self, x, lam):
        g, w1, w2 = self._parts(x)
        if self.reduce == "none":
            J = w1.unsqueeze(-1) * self.U
            H = _gram(self.U, lam * w2, None)
        elif self.reduce == "sum":
            J = _tmv(self.U, w1).unsqueeze(-2)
            H = _gram(self.U, lam * w2, None)
        elif self.reduce == "norm2":   # λ c (UᵀU - t tᵀ) / ‖u‖, t = Uᵀû
            uhat, c_inv = w2
            if self._UtU is None:
                self._UtU = self.U.mT @ self.U
            t = _tmv(self.U, uhat)
            J = (t if self.c is None else self.c * t).unsqueeze(-2)
            tt = t.unsqueeze(-1) * t.unsqueeze(-2)
            H = (self._UtU - tt).mul_((lam * c_inv).unsqueeze(-1))
        else:  # λ c (Uᵀ diag(p) U - t tᵀ), t = Uᵀp
            t = _tmv(self.U, w2)
            lc = lam if self.c is None else lam * self.c
            J = (t if self.c is None else self.c * t).unsqueeze(-2)
            H = (_gram(self.U, w2, None) - t.unsqueeze(-1) * t.unsqueeze(-2)) * lc.unsqueeze(-1)
        if self.G is not None:
            J = J + self.G
        return g, J, H


class StackedRows:
    """Row models side by side: ``parts[i]`` gives ``sizes[i]`` rows; the rows are
    ``cat(parts)[..., order]`` (``order`` None: as stacked)."""

    def __init__(self, parts, sizes, order=None) -> None:
        self.parts, self.sizes = list(parts), [int(s) for s in sizes]
        self.order = order
        self.inverse = None if order is None else torch.argsort(order)
        self._single = len(self.parts) == 1 and order is None

    def unordered(self):
        """The same rows in stacking order (``cat(parts)``): for a solver that does not need
        the rows' order, whose multipliers are then put in order by ``order`` once."""
        if self.order is None:
            return self
        return StackedRows(self.parts, self.sizes)

    def _lams(self, lam):
        lam = lam if self.inverse is None else lam.index_select(-1, self.inverse)
        return lam.split_with_sizes(self.sizes, dim=-1)

    def _join(self, gs, dim):
        out = torch.cat(gs, dim)
        return out if self.order is None else out.index_select(dim, self.order)

    def values(self, x):
        if self._single:
            return self.parts[0].values(x)
        return self._join([m.values(x) for m in self.parts], -1)

    def first(self, x, lam):
        if self._single:
            return self.parts[0].first(x, lam)
        gs, v = [], None
        for m, lm in zip(self.parts, self._lams(lam), strict=True):
            g, vi = m.first(x, lm)
            gs.append(g)
            v = vi if v is None else v + vi
        return self._join(gs, -1), v

    def second(self, x, lam):
        if self._single:
            return self.parts[0].second(x, lam)
        gs, Js, H = [], [], None
        for m, lm in zip(self.parts, self._lams(lam), strict=True):
            g, J, Hi = m.second(x, lm)
            gs.append(g)
            Js.append(J)
            if Hi is not None:
                H = Hi if H is None else H + Hi
        return self._join(gs, -1), self._join(Js, -2), H


class PhaseOneRows:
    """Phase I rows on ``z = (x, s)``: ``(g(x) - s, -s - 1)`` from the row model of ``g``."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def _wrap(self, gx, s):
        return torch.cat([gx - s, -s - 1.0], -1)

    def values(self, z):
        return self._wrap(self.inner.values(z[..., :-1]), z[..., -1:])

    def first(self, z, lam):
        gx, v = self.inner.first(z[..., :-1], lam[..., :-1])
        return self._wrap(gx, z[..., -1:]), torch.cat([v, -lam.sum(-1, keepdim=True)], -1)

    def second(self, z, lam):
        gx, J, H = self.inner.second(z[..., :-1], lam[..., :-1])
        col = z.new_full(J.shape[:-1] + (1,), -1.0)
        J1 = torch.cat([torch.cat([J, col], -1),
                        torch.cat([torch.zeros_like(J[..., :1, :]), col[..., :1, :]], -1)], -2)
        if H is not None:
            H = torch.nn.functional.pad(H, (0, 1, 0, 1))
        return self._wrap(gx, z[..., -1:]), J1, H
