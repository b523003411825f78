"""QP data that are affine in the parameters, computed as one matrix product.

Where every expression of a problem's objective and rows has degree at most 1 in its
parameters (:func:`param_degree`: ``A @ x - t``, ``0.2 * c``, ``tau * sum(u)``; not
``sum_squares(A @ x)`` with ``A`` a parameter, nor ``sqrt(c)``), each number of the QP
data ``(Q, p, G, h, A, b)`` is an affine function of the parameters' entries, and the
data of a batch is::

    vec(data) = m0 + vec(P) @ M        (vec(P): every parameter entry of an item)

as cvxpylayers maps parameters to its cone program. :class:`AffineData` reads ``m0`` and
``M`` off once per dtype and device, evaluating the data by the general path at ``P = 0``
and at each unit vector (one batched evaluation), and then computes every call's data in
one ``addmm`` whose backward is one product too: at small sizes, where a call costs what
its number of tensor operations costs, a tenth of the general path's operations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from optlayer import defaults

__all__ = ["AffineData", "param_degree"]


def param_degree(root) -> int | None:
    """Polynomial degree of ``root`` in its parameters (variables and constants count as
    degree 0), by the atoms' degree rules; None where it is not a polynomial of degree
    at most 2."""
    from optlayer.ir import Apply, Let, Parameter, postorder

    deg: dict = {}
    for node in postorder(root):
        if isinstance(node, Parameter):
            d = 1
        elif isinstance(node, Let):
            d = deg[id(node.args[0])]
        elif isinstance(node, Apply):
            args = [deg[id(a)] for a in node.args]
            d = None if any(a is None for a in args) else \
                node.atom.degree_of(args, node.static)
        else:                                 # a variable or a constant
            d = 0
        deg[id(node)] = d
    return deg[id(root)]


class AffineData:
    """The QP data of a program as ``m0 + vec(P) @ M`` (see the module doc).

    Args:
        program: a KKT-classified :class:`~optlayer.compiler.program.Program`.
        general: ``general(P, B, dtype, device) -> (Q, p, G, h, A, b, isz, esz)``, the
            data by the general path (read off once, at the probe points).

    Attributes:
        affine: every expression of the objective and the rows is affine in the
            parameters.
    """

    def __init__(self, program, general) -> None:
        plan = program.plan
        roots = [e for _, e in plan.smooth] + [r.expr for r in (*plan.ineq, *plan.eq)]
        self.general = general
        self.names = list(program.problem.params)
        self.shapes = [tuple(int(d) for d in program.problem.params[k].shape)
                       for k in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        N = program.layout.size
        rows = sum(math.prod(int(d) for d in r.expr.shape) for r in (*plan.ineq, *plan.eq))
        #: the entries of ``M`` at most (all data moving)
        self.entries = (sum(self.sizes) + 1) * (N * N + N + rows * (N + 1))
        self.affine = bool(self.names) and all(param_degree(e) in (0, 1) for e in roots)
        self._maps: dict = {}    # (dtype, device) -> _Map

    def _read_off(self, dtype, device) -> _Map:
        """The data at ``P = 0`` and their changes per unit parameter entry."""
        K = sum(self.sizes)
        with torch.inference_mode(False), torch.no_grad():
            probe = torch.cat([torch.zeros(1, K, dtype=dtype, device=device),
                               torch.eye(K, dtype=dtype, device=device)])
            P, at = {}, 0
            for name, shape, k in zip(self.names, self.shapes, self.sizes, strict=True):
                P[name] = probe[:, at:at + k].reshape(K + 1, *shape)
                at += k
            *data, isz, esz = self.general(P, K + 1, dtype, device)
            blocks, moving = [], []
            for t in data:
                if t is None:
                    blocks.append(None)
                    continue
                change = t[1:] - t[:1]
                if bool(change.ne(0).any()):
                    blocks.append(tuple(t.shape[1:]))
                    moving.append(t.reshape(K + 1, -1))
                else:       # the same for every parameter value: no gradient either
                    blocks.append(t[:1].clone())
            flat = torch.cat(moving, dim=1) if moving else probe.new_zeros(K + 1, 0)
            m0 = flat[:1].clone()
            M = flat[1:] - m0
            # only the entries that move with the parameters are computed per call (the
            # epigraph rows of lad_regression: 80 of its G's and h's 280)
            move = M.ne(0).any(dim=0)
            cols = None if bool(move.all()) else move.nonzero().view(-1)
            if cols is not None:
                M = M.index_select(1, cols)
        return _Map(m0, m0 if cols is None else m0.index_select(1, cols), M.contiguous(),
                    cols, blocks, isz, esz)

    @property
    def ok(self) -> bool:
        """Whether the data are computed here: affine, and ``M`` of at most
        ``defaults.PARAM_AFFINE_MAX_ENTRIES`` entries."""
        return self.affine and self.entries <= defaults.PARAM_AFFINE_MAX_ENTRIES

    def __call__(self, P, B: int, dtype, device):
        """``(Q, p, G, h, A, b, isz, esz)`` as :func:`~optlayer.compiler.canonicalize_qp`
        returns them (differentiable in ``P``)."""
        key = (dtype, device)
        f = self._maps.get(key)
        if f is None:
            f = self._maps[key] = self._read_off(dtype, device)
        vec = torch.cat([P[k].reshape(B, -1) for k in self.names], dim=1) \
            if len(self.names) > 1 else P[self.names[0]].reshape(B, -1)
        if f.cols is None:
            flat = torch.addmm(f.m0, vec, f.M)
        else:
            flat = f.m0.expand(B, -1).index_copy(1, f.cols, torch.addmm(f.base, vec, f.M))
        out, at = [], 0
        for b in f.blocks:
            if b is None or isinstance(b, torch.Tensor):
                out.append(b if b is None else b.expand(B, *b.shape[1:]))
                continue
            k = math.prod(b)
            out.append(flat[:, at:at + k].view(B, *b))
            at += k
        return (*out, f.isz, f.esz)


class _Map(NamedTuple):
    m0: torch.Tensor        # (1, D) the moving blocks' data at P = 0
    base: torch.Tensor      # (1, C) its entries that move (m0 where cols is None)
    M: torch.Tensor         # (K, C) their change per unit parameter entry
    cols: torch.Tensor | None   # (C,) where those entries lie in m0 (None: all D)
    blocks: list            # per datum: None (absent), its shape (moving) or its value
    #                         (1, ...) where no parameter moves it
    isz: list
    esz: list
