"""The reduced KKT matrix of an epigraph-shaped QP, factored by its arrow structure (private).

The interior point of :mod:`_qp_ipm` factors ``H = QA + G'WG`` (``QA = Q + rho A'A``,
``W = z / s``) every iteration. Forming ``G'WG`` densely costs ``m n^2`` per item, and for
the QPs that epigraph rows produce (``sum(abs(X @ w - t))``, hinge losses, ``norm1``
terms) it dominates: lad_regression at ``m = 1000, d = 100`` has ``n = 1100`` unknowns and
``2000`` rows, and one such product is 4.8 GFLOP per item, where its ``d`` columns of
interest need a hundredth of that.

Where a set ``T`` of columns is *diagonal* -- ``QA`` has no off-diagonal entry in the
rows of ``T`` (they meet no other unknown in the objective or the equalities) and every
row of ``G`` has at most one entry in ``T`` -- the block of ``H`` on ``T`` is diagonal
for every ``W``::

    H = [[H_FF, H_FT],      H_FF = QA_FF + G_F' W G_F          (f x f, f = n - t)
         [H_TF, D   ]]      H_TF[j] = sum of W_i g_i G_F[i] over the rows i whose T-entry
                                      is j (value g_i)
                            D_j = QA_jj + sum of W_i g_i^2 over those rows

and ``H`` is factored by eliminating ``T`` first: ``D`` is inverted entrywise and the
Schur complement ``S = H_FF - H_FT D^-1 H_TF`` takes one Cholesky factorization of
order ``f``. This is Cholesky's method on ``H`` with the columns of ``T`` taken first, whose
pivots are the diagonal of ``D``: backward stable as the dense factorization is. Each
factorization costs ``O(m f^2 + t f^2 + f^3)`` instead of ``O(m n^2 + n^3)``.

:func:`detect` finds ``T`` from the sparsity pattern of the batch (the union over its
items), once per solve: of the columns whose ``QA`` rows are diagonal, the densest of those
that share a row of ``G`` are dropped until none do. The epigraph variables of the
examples are found this way (their columns hold one or two entries each), the
regression weights they bound are not. Problems whose equality constraints the reduced
kernel eliminates (quantile_regression's pinball loss, written with ``X w - t = u - v``)
are solved in a null-space basis that mixes the columns, and are factored densely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from optlayer import defaults

__all__ = ["Arrow", "ArrowL", "detect", "factor", "solve", "lower_solve", "upper_solve",
           "active_gram", "put", "take"]


class Arrow(NamedTuple):
    """The arrow structure of a batch's ``H`` (:func:`detect`), made once per solve."""

    T: Tensor        # (t,) the diagonal columns
    F: Tensor        # (f,) the others
    row: Tensor      # (m,) per row of G, the position in T of its T-entry (t where none)
    g: Tensor        # (B, m, 1) that entry (0 where none)
    GF: Tensor       # (B, m, f) G's columns F
    QAd: Tensor      # (B, t + 1) QA's diagonal on T (and a slot for rows without T-entry)
    QAFF: Tensor     # (B, f, f) QA's block on F


class ArrowL(NamedTuple):
    """``H`` factored by its arrow structure (:func:`factor`), in place of its Cholesky
    factor (:func:`solve` applies ``H^-1``)."""

    T: Tensor
    F: Tensor
    Dinv: Tensor     # (B, t, 1) the inverse of H's diagonal block on T
    HTF: Tensor      # (B, t, f)
    LS: Tensor       # (B, f, f) Cholesky factor of S = H_FF - H_FT D^-1 H_TF


def detect(QA: Tensor, G: Tensor) -> Arrow | None:
    """The arrow structure of ``QA + G'WG`` (see the module doc), or None where it would not
    pay: fewer than ``defaults.IPM_ARROW_MIN_SHARE`` of the ``n`` columns diagonal, or
    ``n`` below ``defaults.IPM_ARROW_MIN_SIZE``. A few host synchronizations (once per
    solve)."""
    B, m, n = G.shape
    if n < defaults.IPM_ARROW_MIN_SIZE:
        return None
    eye = torch.eye(n, dtype=torch.bool, device=QA.device)
    # columns of QA with no off-diagonal entry in any item (QA is symmetric)
    cand = ~((QA != 0).any(dim=0) & ~eye).any(dim=0)
    nzG = (G != 0).any(dim=0)                               # (m, n), the batch's pattern
    nnz = nzG.sum(dim=0)
    T = cand
    for dropped in range(defaults.IPM_ARROW_ROUNDS + 1):   # rounds of dropping columns
        shared = (nzG & T).sum(dim=1) >= 2                  # rows with two T-entries
        if not bool(shared.any()):
            break
        if dropped == defaults.IPM_ARROW_ROUNDS:
            return None
        clash = T & (nzG & shared.unsqueeze(1)).any(dim=0)
        T = T & ~(clash & (nnz >= nnz.masked_fill(~clash, -1).amax()))
    t = int(T.sum())
    if t == 0 or t < defaults.IPM_ARROW_MIN_SHARE * n:
        return None
    Ti = T.nonzero().view(-1)
    Fi = (~T).nonzero().view(-1)
    hit = nzG & T                                           # (m, n): at most one per row
    has = hit.any(dim=1)
    col = hit.to(torch.int8).argmax(dim=1)                  # each row's T-column (or 0)
    row = torch.where(has, T.cumsum(0).sub_(1).index_select(0, col), t)
    g = G.gather(2, col.view(1, m, 1).expand(B, m, 1)) * has.view(1, m, 1)
    QAd = torch.nn.functional.pad(QA.diagonal(dim1=1, dim2=2).index_select(1, Ti), (0, 1))
    QAFF = QA.index_select(1, Fi).index_select(2, Fi)
    return Arrow(Ti, Fi, row, g, G.index_select(2, Fi).contiguous(), QAd, QAFF)


def factor(a: Arrow, W: Tensor | float, reg_abs: Tensor, reg_rel: float):
    """``(ArrowL, ok)`` for ``H = QA + G'WG`` plus the dense path's diagonal regularization
    (``|diag| reg_rel + reg_abs``, ``reg_abs`` ``(B, 1)``); ``ok`` ``(B,)`` False where a
    pivot is not positive (or not finite)."""
    B, m, f = a.GF.shape
    t = a.T.numel()
    Wg = a.g * W                                            # (B, m, 1)
    HFF = torch.baddbmm(a.QAFF, a.GF.transpose(1, 2), a.GF * W)
    D = a.QAd.index_add(1, a.row, (Wg * a.g).view(B, m))[:, :t]
    HTF = a.GF.new_zeros(B, t + 1, f).index_add_(1, a.row, Wg * a.GF)[:, :t]
    D = D + D.abs() * reg_rel + reg_abs
    dF = HFF.diagonal(dim1=1, dim2=2)
    dF.add_(dF.abs() * reg_rel + reg_abs)
    Dinv = D.reciprocal().unsqueeze(-1)
    S = torch.baddbmm(HFF, HTF.transpose(1, 2), Dinv * HTF, alpha=-1.0)
    LS, info = torch.linalg.cholesky_ex(S)
    ok = (info == 0) & (D > 0).all(dim=1)
    return ArrowL(a.T, a.F, Dinv, HTF, LS), ok


def solve(L: ArrowL, r: Tensor) -> Tensor:
    """``H^-1 r`` for ``r`` ``(B, n, k)``: ``T`` eliminated, then the Schur complement."""
    rT = L.Dinv * r.index_select(1, L.T)                    # D^-1 r_T
    y = torch.baddbmm(r.index_select(1, L.F), L.HTF.transpose(1, 2), rT, alpha=-1.0)
    xF = torch.cholesky_solve(y, L.LS)
    xT = torch.baddbmm(rT, L.Dinv * L.HTF, xF, alpha=-1.0)
    return torch.empty_like(r).index_copy_(1, L.T, xT).index_copy_(1, L.F, xF)


def lower_solve(L: ArrowL, r: Tensor) -> Tensor:
    """``y = C^-1 r``, ``C`` the Cholesky factor of ``H`` with the columns of ``T`` first
    (``C = [[D^1/2, 0], [H_FT D^-1/2, L_S]]``); ``y`` in that order (``T``, then ``F``)."""
    rT = r.index_select(1, L.T)
    yF = torch.linalg.solve_triangular(
        L.LS, torch.baddbmm(r.index_select(1, L.F), L.HTF.transpose(1, 2), L.Dinv * rT,
                            alpha=-1.0), upper=False)
    return torch.cat([L.Dinv.sqrt() * rT, yF], dim=1)


def upper_solve(L: ArrowL, y: Tensor) -> Tensor:
    """``x = C^-T y`` (``y`` in the order of :func:`lower_solve`, ``x`` in the columns'
    own): ``H^-1 r = upper_solve(L, lower_solve(L, r))``."""
    t = L.T.numel()
    xF = torch.linalg.solve_triangular(L.LS.transpose(1, 2), y[:, t:], upper=True)
    xT = torch.baddbmm(L.Dinv.sqrt() * y[:, :t], L.Dinv * L.HTF, xF, alpha=-1.0)
    return torch.empty_like(y).index_copy_(1, L.T, xT).index_copy_(1, L.F, xF)


def active_gram(a: Arrow, L: ArrowL, rows: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """``(V, V'V)`` with ``V = C^-1 G_K'`` (``C`` as in :func:`lower_solve`) for the rows
    ``rows`` ``(B, k)`` of ``G``, each multiplied by ``keep`` ``(B, k, 1)``: the columns of
    the active-set system's Schur complement (``_qp_ipm.split_factor``). ``V``'s rows on
    ``T`` hold one entry per column (each row of ``G`` has at most one in ``T``), so its
    part of ``V'V`` is an outer product on the pairs of rows that share their ``T``
    column."""
    B, k = rows.shape
    t, f = a.T.numel(), a.F.numel()
    pos = a.row.index_select(0, rows.reshape(-1)).view(B, k)      # T-position (t: none)
    at = pos.clamp(max=t - 1).unsqueeze(-1)                      # (B, k, 1)
    gk = a.g.gather(1, rows.unsqueeze(-1)) * keep                # 0 where no T-entry
    vT = L.Dinv.sqrt().gather(1, at) * gk                        # (B, k, 1)
    VT = vT.new_zeros(B, t, k).scatter_(1, at.transpose(1, 2), vT.transpose(1, 2))
    CF = a.GF.gather(1, rows.unsqueeze(-1).expand(B, k, f)) * keep
    U = (L.Dinv * L.HTF).gather(1, at.expand(B, k, f)) * gk      # rows of H_FT D^-1 C_T'
    VF = torch.linalg.solve_triangular(L.LS, (CF - U).transpose(1, 2), upper=False)
    same = (pos.unsqueeze(2) == pos.unsqueeze(1)).to(vT.dtype)
    S = torch.baddbmm(same * (vT @ vT.transpose(1, 2)), VF.transpose(1, 2), VF)
    return torch.cat([VT, VF], dim=1), S


def put(full: ArrowL, idx: Tensor, part: ArrowL, put_one) -> ArrowL:
    """``full`` with the items ``idx`` replaced by ``part``'s (``put_one`` on each batched
    tensor)."""
    return full._replace(Dinv=put_one(full.Dinv, idx, part.Dinv),
                         HTF=put_one(full.HTF, idx, part.HTF), LS=put_one(full.LS, idx, part.LS))


def take(a: Arrow | None, idx: Tensor) -> Arrow | None:
    """The items ``idx`` of ``a``."""
    if a is None:
        return None
    return a._replace(g=a.g.index_select(0, idx), GF=a.GF.index_select(0, idx),
                      QAd=a.QAd.index_select(0, idx), QAFF=a.QAFF.index_select(0, idx))
