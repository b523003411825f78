"""Coefficients of affine and quadratic expressions, carried through the IR in one pass.

An expression affine in the variables is ``e(z) = e(0) + J z``. :class:`AffineMaps`
evaluates each node of such expressions once, at ``z = 0`` on the parameters themselves,
and carries beside its value its Jacobian in ``z``: the variables' Jacobians are slices of
the identity, and each linear atom maps its arguments' Jacobians by its registry rule
(``Atom.tangent``: ``A @ x`` gives ``A J_x``, a sum sums them, an index indexes them).
This is forward-mode differentiation seeded with the identity, exact for affine nodes.
A Jacobian keeps the node's declared dims followed by the ``N`` unknowns, and a leading
dim of 1 where it does not depend on the parameters (``x <= 1``), so nothing is copied
per item or per unknown.

:class:`QuadraticModel` builds ``(Q, p)`` of an objective whose terms are quadratic
compositions of affine pieces (``sum_squares(a)``, ``square(a)``, ``a ^ 2``,
``quad_form(a, P)``, their sums and products with variable-free scalars, and affine terms):
``sum_squares(a)`` contributes ``2 J'J`` and ``2 J' a(0)``.

Both replace, for the expressions they cover, the read-off by evaluation at ``N + 1``
points (:mod:`optlayer.compiler.canon`, :func:`optlayer.compiler.quadratic.quadratic_data`):
a handful of tensor operations per call whose backward is as short, with no copies of the
parameters, so their cost grows with the data, not with ``N`` times the data. Nodes and
terms of no parameter (the variables' identity slices, a ridge term) are evaluated once
per dtype and device and reused. Their ``ok`` is false for expressions with an atom or a
form they do not cover; the callers then read off as before.
"""

from __future__ import annotations

import math

import torch

from optlayer.compiler.lower import Layout

__all__ = ["AffineMaps", "QuadraticModel"]


def _affine_nodes_ok(root) -> bool:
    """Whether every node of ``root`` that moves with the variables has a tangent rule."""
    from optlayer.ir import Apply, Leaf, Let, postorder

    if root.degree not in (0, 1):
        return False
    for node in postorder(root):
        if node.degree == 0 or isinstance(node, (Leaf, Let)):
            continue
        if not isinstance(node, Apply) or node.atom.tangent is None:
            return False
    return True


class AffineMaps:
    """Values at ``z = 0`` and Jacobians in ``z`` of expressions affine in the variables.

    Args:
        layout: the variables' packing (:class:`~optlayer.compiler.lower.Layout`).
        roots: the expressions.

    Attributes:
        ok: every root is affine and built of atoms with a tangent rule; :meth:`run`
            needs it.
    """

    def __init__(self, layout: Layout, roots) -> None:
        from optlayer.ir import Apply, Constant, Let, Parameter, Variable, postorder

        self.layout, self.roots = layout, list(roots)
        self.ok = all(_affine_nodes_ok(r) for r in self.roots)
        fixed, order, seen = [], [], {}
        for r in self.roots:
            for node in postorder(r):
                if id(node) in seen:
                    continue
                if not isinstance(node, (Variable, Parameter, Constant, Let, Apply)):
                    raise TypeError(f"cannot lower {type(node).__name__}")  # pragma: no cover
                # a node of no parameter is the same at every call: evaluated once
                seen[id(node)] = not isinstance(node, Parameter) and all(
                    seen[id(a)] for a in node.args)
                (fixed if seen[id(node)] else order).append(node)
        self.fixed, self.order = fixed, order
        self._fixed: dict = {}   # (dtype, device) -> values of the fixed nodes
        #: the rows of each root (its declared size)
        self.sizes = [math.prod(int(d) for d in r.shape) for r in self.roots]

    def _fixed_values(self, like) -> dict:
        """The values and Jacobians of the nodes without parameters (ordinary tensors,
        made once per dtype and device)."""
        key = (like.dtype, like.device)
        out = self._fixed.get(key)
        if out is None:
            out = {}
            with torch.inference_mode(False), torch.no_grad():
                like = torch.zeros((), dtype=like.dtype, device=like.device)
                eye = torch.eye(self.layout.size, dtype=like.dtype, device=like.device)
                for node in self.fixed:
                    self._evaluate(node, out, None, like, eye)
            self._fixed[key] = out
        return out

    def _evaluate(self, node, out, P, like, eye=None):
        """``out[id(node)] = (value at z = 0, Jacobian or None)`` from its arguments'."""
        from optlayer.ir import Constant, Let, Parameter, Variable

        if isinstance(node, Variable):
            shape = self.layout.shapes[node.name]
            rows = eye[self.layout.slices[node.name]].reshape(1, *shape, self.layout.size)
            out[id(node)] = (like.new_zeros((1, *shape)), rows)
        elif isinstance(node, Parameter):
            out[id(node)] = (P[node.name], None)
        elif isinstance(node, Constant):
            out[id(node)] = (node._eval([], P, like), None)
        elif isinstance(node, Let):
            out[id(node)] = out[id(node.args[0])]
        else:
            args = [out[id(a)] for a in node.args]
            nds = [a.ndim for a in node.args]
            value = node.atom.impl([v for v, _ in args], nds, node.static)
            J = None
            if node.degree != 0:
                moving = [j is not None for _, j in args]
                J = node.atom.tangent([j if m else v for (v, j), m in zip(
                    args, moving, strict=True)], nds, node.static, moving)
                shape = tuple(int(d) for d in node.shape)
                if tuple(J.shape[1:-1]) != shape:   # a scalar broadcast in the node
                    J = J.expand(J.shape[0], *shape, self.layout.size)
            out[id(node)] = (value, J)

    def run(self, P, like) -> dict:
        """``{id(node): (value at z = 0, Jacobian or None)}`` for every node of the roots
        (``like``: a tensor of the unknowns' dtype and device)."""
        out = dict(self._fixed_values(like))
        for node in self.order:
            self._evaluate(node, out, P, like)
        return out

    def rows(self, P, B: int, like):
        """The roots as stacked rows: ``(c (B, rows), J (B, rows, N))`` with
        ``roots(z) = c + J z`` (:attr:`sizes`: the rows of each root)."""
        N = self.layout.size
        vals = self.run(P, like)
        Ms, ms = [], []
        for r, k in zip(self.roots, self.sizes, strict=True):
            v, J = vals[id(r)]
            lead = v.shape[0] if v.dim() > r.ndim else 1
            ms.append(v.reshape(lead, k).expand(B, k))
            Ms.append(like.new_zeros(1, k, N).expand(B, k, N) if J is None
                      else J.reshape(J.shape[0], k, N).expand(B, k, N))
        if len(Ms) == 1:
            return ms[0], Ms[0]
        return torch.cat(ms, 1), torch.cat(Ms, 1)


# -------------------------------------------------------------------- quadratic terms

def _quadratic_pieces(node, pieces: list) -> bool:
    """Whether the scalar ``node`` (degree <= 2) is a composition this module models;
    collects the affine nodes whose coefficients it needs in ``pieces``."""
    from optlayer.ir import Apply, Let

    if node.degree in (0, 1):
        pieces.append(node)
        return True
    if node.degree != 2 or node.shape != ():
        return False
    if isinstance(node, Let):
        return _quadratic_pieces(node.args[0], pieces)
    if not isinstance(node, Apply):
        return False
    name, args = node.atom.name, node.args
    if name in ("add", "sub"):
        return all(_quadratic_pieces(a, pieces) for a in args)
    if name == "negate":
        return _quadratic_pieces(args[0], pieces)
    if name in ("mul", "div"):
        const = [a for a in args if a.degree == 0]
        if len(const) != 1 or const[0].shape != () or (name == "div" and args[1].degree):
            return False
        pieces.append(const[0])
        return _quadratic_pieces(args[0] if args[1].degree == 0 else args[1], pieces)
    inner = _square_argument(node)
    if inner is not None:
        pieces.append(inner)
        return _affine_nodes_ok(inner)
    if name == "quad_form" and args[0].degree == 1:
        pieces.extend(args)
        return _affine_nodes_ok(args[0])
    return False


def _square_argument(node):
    """``a`` of ``sum_squares(a)``, ``sum(square(a))``, ``square(a)``, ``a ^ 2`` (scalar
    nodes), or None."""
    from optlayer.ir import Apply, Let

    def squared(n):
        while isinstance(n, Let):
            n = n.args[0]
        if isinstance(n, Apply) and (n.atom.name == "square" or (
                n.atom.name == "power" and n.static == (2,))) and n.args[0].degree == 1:
            return n.args[0]
        return None

    if not isinstance(node, Apply):
        return None
    if node.atom.name == "sum_squares" and node.args[0].degree == 1:
        return node.args[0]
    if node.atom.name == "sum":
        return squared(node.args[0])
    return squared(node)


class QuadraticModel:
    """``(Q, p)`` of ``f = sum_i coeff_i * term_i`` (``f(z) = 1/2 z'Qz + p'z + c``), or the
    Taylor data of each term as a row, from the coefficients of the terms' affine pieces.

    Args:
        layout: the variables' packing.
        terms: ``[(coeff, expr)]``, scalar expressions of degree at most 2.

    Attributes:
        ok: every term is a composition this module models (see the module doc).
    """

    def __init__(self, layout: Layout, terms) -> None:
        self.terms = list(terms)
        pieces: list = []
        self.ok = all(_quadratic_pieces(e, pieces) for _, e in self.terms)
        self.maps = AffineMaps(layout, pieces) if self.ok else None
        self.ok = self.ok and self.maps.ok
        # terms of no parameter (a ridge, a sum of epigraph variables): the same at every
        # call, evaluated once per dtype and device
        self.fixed = [not e.parameters() for _, e in self.terms]
        self._fixed: dict = {}

    def _terms(self, P, like, value: bool):
        """Each term's ``coeff * (c, g, H)`` (see :meth:`_taylor`)."""
        vals, out = None, []
        for i, ((coeff, e), fixed) in enumerate(zip(self.terms, self.fixed, strict=True)):
            key = (i, value, like.dtype, like.device)
            t = self._fixed.get(key) if fixed else None
            if t is None:
                vals = self.maps.run(P, like) if vals is None else vals
                if fixed:
                    with torch.inference_mode(False), torch.no_grad():
                        t = self._fixed[key] = tuple(
                            _scaled(u, coeff) for u in self._taylor(e, vals, value))
                else:
                    t = tuple(_scaled(u, coeff) for u in self._taylor(e, vals, value))
            out.append(t)
        return out

    def __call__(self, P, B: int, like, value: bool = False):
        """``Q (B, N, N)`` (symmetric) and ``p (B, N)``, differentiable in ``P``; with
        ``value`` also ``c (B,)``."""
        N = self.maps.layout.size
        Q = p = c = None
        for c1, g, H in self._terms(P, like, value):
            c = _plus(c, c1) if value else None
            p = _plus(p, g)
            Q = _plus(Q, H)
        p = like.new_zeros(1, N) if p is None else p
        Q = like.new_zeros(1, N, N) if Q is None else Q
        if not value:
            return Q.expand(B, N, N), p.expand(B, N)
        c = like.new_zeros(1) if c is None else c.reshape(-1)
        return Q.expand(B, N, N), p.expand(B, N), c.expand(B)

    def rows(self, P, B: int, like):
        """Each term times its coefficient as a row: ``(c (B, k), J (B, k, N),
        H (B, k, N, N))``, its value at ``z = 0``, gradient there and Hessian."""
        N = self.maps.layout.size
        cs, gs, Hs = [], [], []
        for c, g, H in self._terms(P, like, True):
            cs.append(c.reshape(-1, 1).expand(B, 1))
            gs.append(like.new_zeros(1, 1, N).expand(B, 1, N) if g is None
                      else g.reshape(-1, 1, N).expand(B, 1, N))
            Hs.append(like.new_zeros(1, 1, N, N).expand(B, 1, N, N) if H is None
                      else H.reshape(-1, 1, N, N).expand(B, 1, N, N))
        return tuple(t[0] if len(t) == 1 else torch.cat(t, 1) for t in (cs, gs, Hs))

    def _taylor(self, node, vals, value: bool):
        """``(c, g, H)`` of the scalar ``node``: its value at ``z = 0`` (``(*lead,)``; None
        unless ``value``), gradient there ``(lead, N)`` and Hessian ``(lead, N, N)``
        (None where zero)."""
        from optlayer.ir import Let

        if node.degree in (0, 1):
            c, g = vals[id(node)]
            return c, g, None
        if isinstance(node, Let):
            return self._taylor(node.args[0], vals, value)
        name, args = node.atom.name, node.args
        if name in ("add", "sub"):
            t0, t1 = (self._taylor(a, vals, value) for a in args)
            if name == "sub":
                t1 = tuple(_scaled(t, -1.0) for t in t1)
            return tuple(_plus(a, b) for a, b in zip(t0, t1, strict=True))
        if name == "negate":
            return tuple(_scaled(t, -1.0) for t in self._taylor(args[0], vals, value))
        if name in ("mul", "div"):
            i = 1 if args[0].degree == 0 else 0
            k = vals[id(args[1 - i])][0]
            k = k if name == "mul" else 1.0 / k
            return tuple(_scaled(t, k) for t in self._taylor(args[i], vals, value))
        inner = _square_argument(node)
        if inner is not None:   # sum of squares of a: |a(0)|^2, 2 J'a(0), 2 J'J
            a0, J = vals[id(inner)]
            J = J.reshape(J.shape[0], -1, J.shape[-1])
            a0 = a0.reshape(*a0.shape[:a0.dim() - inner.ndim], -1, 1)
            c = (a0 * a0).sum((-2, -1)) if value else None
            return c, 2.0 * (J * a0).sum(-2), 2.0 * (J.mT @ J)
        # quad_form(a, S): a(0)'S a(0), J'(S + S')a(0), J'(S + S')J
        a0, J = vals[id(args[0])]
        S = vals[id(args[1])][0]
        c = (a0 * (S @ a0.unsqueeze(-1)).squeeze(-1)).sum(-1) if value else None
        S = S + S.mT
        SJ = S @ J
        return c, (SJ * a0.unsqueeze(-1)).sum(-2), J.mT @ SJ


def _plus(a, b):
    return b if a is None else a if b is None else a + b


def _scaled(t, c):
    """``c * t`` for a value ``(*lead,)``, gradient ``(lead, N)`` or Hessian
    ``(lead, N, N)`` ``t`` and a scalar value ``c`` (a number or ``(*lead,)``)."""
    if t is None:
        return None
    if isinstance(c, torch.Tensor) and c.dim():
        c = c.reshape(-1, *(1,) * (t.dim() - 1)) if t.dim() else c
    return c * t
