"""The catalog table the projection and prox tests parametrize over.

One record per entry. A record says how to draw random inputs, what the entry
supports (which inputs gradcheck perturbs, whether it is a convex set so the
variational inequality holds, whether it is iterative) and how to compute a
reference with cvxpy (or by brute force for the non-convex sets).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch

from optlayer import projections as P
from optlayer import prox as X

CLARABEL = dict(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11,
                tol_ktratio=1e-10, max_iter=500)


def _solve(objective, constraints=()):
    """Solve tightly; conic problems where Clarabel stalls at 1e-11 get 1e-9."""
    prob = cp.Problem(cp.Minimize(objective), list(constraints))
    prob.solve(**CLARABEL)
    if prob.status != cp.OPTIMAL:
        prob.solve(**{**CLARABEL, "tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9})
    assert prob.status == cp.OPTIMAL, prob.status


@dataclass
class Entry:
    """One catalog entry.

    Attributes:
        name: test id.
        fn: ``fn(*inputs) -> tensor`` (tuple outputs are concatenated by ``out``).
        make: ``make(gen, batch, dtype) -> tuple of tensors`` with leading batch dims.
        reference: ``reference(*numpy unbatched inputs) -> numpy`` solution.
        grad_args: indices of inputs gradcheck perturbs.
        convex_set: a convex set membership ``feasible(z, *inputs) -> bool`` and a
            sampler of feasible points for the variational inequality.
        ref_tol: attainable accuracy of the reference (1e-8 unless the reference
            solver cannot reach it; then the optimality test carries the tight check).
        wrap: maps raw gradcheck inputs to the entry's inputs (keeps marginals balanced).
    """

    name: str
    fn: Callable
    make: Callable
    reference: Callable
    grad_args: tuple = (0,)
    feasible: Callable | None = None
    sample_feasible: Callable | None = None
    ref_tol: float = 1e-8
    wrap: Callable | None = None
    props: set = field(default_factory=set)
    g: Callable | None = None
    conj_prox: Callable | None = None


def _ind(mask: torch.Tensor) -> torch.Tensor:
    """Indicator: 0 where every entry of the last dim holds, +inf otherwise."""
    return torch.where(mask.all(-1), 0.0, float("inf")).to(torch.float64)


def rand(gen, *shape, dtype, scale=1.0, low=None):
    t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    if low is not None:
        t = torch.rand(*shape, generator=gen, dtype=torch.float64) + low
    return t.to(dtype)


N = 5


def _vec(gen, batch, dtype, scale=1.0):
    return rand(gen, *batch, N, dtype=dtype, scale=scale)


# ---------------------------------------------------------------- references


def ref_box(x, lo, hi):
    """Closed form (Clarabel's interior point leaves ~1e-8 on clipped coordinates)."""
    return np.minimum(np.maximum(x, lo), hi)


def ref_set(constraint_fn, shape=None):
    def ref(x, *args):
        z = cp.Variable(shape or x.shape)
        _solve(cp.sum_squares(z - x), constraint_fn(z, *args))
        return z.value

    return ref


def ref_soc(x, t):
    z, s = cp.Variable(x.shape), cp.Variable()
    _solve(cp.sum_squares(z - x) + cp.square(s - t), [cp.norm(z, 2) <= s])
    return np.concatenate([z.value, [s.value]])


def ref_psd(S):
    Z = cp.Variable(S.shape, symmetric=True)
    _solve(cp.sum_squares(Z - 0.5 * (S + S.T)), [Z >> 0])
    return Z.value


def ref_transport(Xm, a, b):
    Z = cp.Variable(Xm.shape)
    _solve(cp.sum_squares(Z - Xm), [Z >= 0, cp.sum(Z, axis=1) == a, cp.sum(Z, axis=0) == b])
    return Z.value


def ref_kl_transport(Xm, a, b):
    Z = cp.Variable(Xm.shape, nonneg=True)
    _solve(cp.sum(cp.kl_div(Z, np.exp(Xm))), [cp.sum(Z, axis=1) == a, cp.sum(Z, axis=0) == b])
    return Z.value


def ref_kl_simplex(x):
    z = cp.Variable(x.shape, nonneg=True)
    _solve(cp.sum(cp.kl_div(z, np.exp(x))), [cp.sum(z) == 1])
    return z.value


def ref_sparse_simplex(x, value, k):
    """Brute force over supports of size k (small n)."""
    best, best_d = None, np.inf
    for supp in itertools.combinations(range(len(x)), k):
        z = np.zeros_like(x)
        w = cp.Variable(k, nonneg=True)
        _solve(cp.sum_squares(w - x[list(supp)]), [cp.sum(w) == value])
        z[list(supp)] = w.value
        d = np.sum((z - x) ** 2)
        if d < best_d:
            best, best_d = z, d
    return best


def ref_l1_sphere(x, radius):
    """Brute force over orthants: the nearest point of each face sign*z >= 0, sum = r."""
    best, best_d = None, np.inf
    for signs in itertools.product([-1.0, 1.0], repeat=len(x)):
        s = np.array(signs)
        w = cp.Variable(len(x), nonneg=True)
        _solve(cp.sum_squares(cp.multiply(s, w) - x), [cp.sum(w) == radius])
        z = s * w.value
        d = np.sum((z - x) ** 2)
        if d < best_d - 1e-12:
            best, best_d = z, d
    return best


def ref_prox(g, nonneg=False):
    """Reference prox: argmin 0.5||z - x||^2 + scaling * g(z, *hyper) (z >= 0 if nonneg)."""

    def ref(x, *hyper_and_scaling):
        *hyper, scaling = hyper_and_scaling
        z = cp.Variable(x.shape, nonneg=nonneg)
        _solve(0.5 * cp.sum_squares(z - x) + float(scaling) * g(z, *hyper))
        return z.value

    return ref


# ---------------------------------------------------------------- makers


def mk_x(gen, batch, dtype):
    return (_vec(gen, batch, dtype, 1.5),)


def mk_box(gen, batch, dtype):
    lo = rand(gen, *batch, N, dtype=dtype) * 0.3 - 0.5
    return _vec(gen, batch, dtype), lo, lo + rand(gen, *batch, N, dtype=dtype, low=0.2)


def mk_plane(gen, batch, dtype):
    return _vec(gen, batch, dtype), _vec(gen, batch, dtype), rand(gen, *batch, dtype=dtype)


def mk_affine(gen, batch, dtype):
    return (_vec(gen, batch, dtype), rand(gen, *batch, 2, N, dtype=dtype),
            rand(gen, *batch, 2, dtype=dtype))


def mk_poly(gen, batch, dtype):
    x = _vec(gen, batch, dtype, 2.0)
    A = rand(gen, *batch, 1, N, dtype=dtype)
    G = rand(gen, *batch, 3, N, dtype=dtype)
    # a feasible point z0 makes the polyhedron nonempty
    z0 = _vec(gen, batch, dtype, 0.3)
    b = (A @ z0.unsqueeze(-1)).squeeze(-1)
    h = (G @ z0.unsqueeze(-1)).squeeze(-1) + rand(gen, *batch, 3, dtype=dtype, low=0.05)
    return x, A, b, G, h


def mk_radius(gen, batch, dtype, low=0.5):
    return _vec(gen, batch, dtype, 1.5), rand(gen, *batch, dtype=dtype, low=low)


def mk_box_section(gen, batch, dtype):
    x = _vec(gen, batch, dtype)
    alpha = rand(gen, *batch, N, dtype=dtype, low=0.5)
    lo = -rand(gen, *batch, N, dtype=dtype, low=0.2)
    hi = rand(gen, *batch, N, dtype=dtype, low=0.2)
    # a value strictly inside the attainable range keeps the set nonempty
    t = rand(gen, *batch, dtype=dtype, low=0.0) * 0.6 + 0.2
    value = ((alpha * lo).sum(-1) * (1 - t) + (alpha * hi).sum(-1) * t)
    return x, alpha, lo, hi, value


def mk_soc(gen, batch, dtype):
    return _vec(gen, batch, dtype), rand(gen, *batch, dtype=dtype)


def mk_psd(gen, batch, dtype):
    return (rand(gen, *batch, 4, 4, dtype=dtype),)


def mk_transport(gen, batch, dtype):
    Xm = rand(gen, *batch, 3, 4, dtype=dtype)
    a = rand(gen, *batch, 3, dtype=dtype, low=0.3)
    b = rand(gen, *batch, 4, dtype=dtype, low=0.3)
    b = b / b.sum(-1, keepdim=True) * a.sum(-1, keepdim=True)
    return Xm, a, b


def mk_square(gen, batch, dtype):
    return (rand(gen, *batch, 4, 4, dtype=dtype),)


def balance(Xm, a, b):
    """Keep sum(b) = sum(a) under gradcheck's perturbations."""
    return Xm, a, b / b.sum(-1, keepdim=True) * a.sum(-1, keepdim=True)


def with_scaling(maker):
    def mk(gen, batch, dtype):
        return (*maker(gen, batch, dtype), rand(gen, *batch, dtype=dtype, low=0.5))

    return mk


def mk_l1(gen, batch, dtype):
    return _vec(gen, batch, dtype, 1.5), rand(gen, *batch, dtype=dtype, low=0.2)


def mk_en(gen, batch, dtype):
    return (_vec(gen, batch, dtype, 1.5), rand(gen, *batch, dtype=dtype, low=0.2),
            rand(gen, *batch, dtype=dtype, low=0.2))


# ---------------------------------------------------------------- feasibility


def within(tol):
    return tol


def feas_nonneg(z, *_):
    return bool((z >= -1e-12).all())


def sample_orthant(gen, z, *_):
    return torch.rand(z.shape, generator=gen, dtype=torch.float64).to(z.dtype) * 2


PROJECTIONS = [
    Entry("nonneg", P.nonneg, mk_x, ref_set(lambda z: [z >= 0]),
          feasible=feas_nonneg, sample_feasible=sample_orthant),
    Entry("box", P.box, mk_box, ref_box, grad_args=(0, 1, 2),
          feasible=lambda z, x, lo, hi: bool(((z >= lo - 1e-12) & (z <= hi + 1e-12)).all()),
          sample_feasible=lambda g, z, x, lo, hi: lo + (hi - lo) * torch.rand(
              z.shape, generator=g, dtype=torch.float64).to(z.dtype)),
    Entry("hypercube", lambda x, s: P.hypercube(x, s.unsqueeze(-1)),
          lambda g, b, d: mk_radius(g, b, d),
          lambda x, s: ref_box(x, 0.0, s), grad_args=(0, 1)),
    Entry("hyperplane", P.hyperplane, mk_plane,
          ref_set(lambda z, a, b: [a @ z == b]), grad_args=(0, 1, 2)),
    Entry("halfspace", P.halfspace, mk_plane,
          ref_set(lambda z, a, b: [a @ z <= b]), grad_args=(0, 1, 2),
          feasible=lambda z, x, a, b: bool(((a * z).sum(-1) <= b + 1e-10).all())),
    Entry("affine_set", P.affine_set, mk_affine,
          ref_set(lambda z, A, b: [A @ z == b]), grad_args=(0, 1, 2)),
    Entry("polyhedron", P.polyhedron, mk_poly,
          ref_set(lambda z, A, b, G, h: [A @ z == b, G @ z <= h]),
          grad_args=(0, 1, 2, 3, 4), props={"iterative"},
          feasible=lambda z, x, A, b, G, h: bool(
              ((G @ z.unsqueeze(-1)).squeeze(-1) <= h + 1e-9).all())),
    Entry("simplex", P.simplex, mk_radius, ref_set(lambda z, v: [z >= 0, cp.sum(z) == v]),
          grad_args=(0, 1),
          feasible=lambda z, x, v: feas_nonneg(z) and bool(
              torch.allclose(z.sum(-1), v, atol=1e-10))),
    Entry("sparse_simplex", lambda x, v: P.sparse_simplex(x, v, 2), mk_radius,
          lambda x, v: ref_sparse_simplex(x, v, 2), grad_args=(0, 1),
          props={"nonconvex"}),
    Entry("l1_ball", P.l1_ball, mk_radius, ref_set(lambda z, r: [cp.norm1(z) <= r]),
          grad_args=(0, 1),
          feasible=lambda z, x, r: bool((z.abs().sum(-1) <= r + 1e-10).all()),
          sample_feasible=lambda g, z, x, r: P.l1_ball(
              4 * torch.randn(z.shape, generator=g, dtype=torch.float64).to(z.dtype), r)),
    Entry("l1_sphere", P.l1_sphere, lambda g, b, d: mk_radius(g, b, d, low=2.0),
          ref_l1_sphere, grad_args=(0, 1), props={"nonconvex"}),
    Entry("l2_ball", P.l2_ball, mk_radius, ref_set(lambda z, r: [cp.norm(z, 2) <= r]),
          grad_args=(0, 1),
          feasible=lambda z, x, r: bool((z.norm(dim=-1) <= r + 1e-10).all())),
    Entry("l2_sphere", P.l2_sphere, mk_radius,
          lambda x, r: r * x / np.linalg.norm(x), grad_args=(0, 1), props={"nonconvex"}),
    Entry("linf_ball", P.linf_ball, mk_radius, ref_set(lambda z, r: [cp.norm_inf(z) <= r]),
          grad_args=(0, 1),
          feasible=lambda z, x, r: bool((z.abs().amax(-1) <= r + 1e-12).all())),
    Entry("box_section", P.box_section, mk_box_section,
          ref_set(lambda z, al, lo, hi, v: [z >= lo, z <= hi, al @ z == v]),
          grad_args=(0, 1, 2, 3, 4)),
    Entry("soc", lambda x, t: torch.cat(
        [P.soc(x, t)[0], P.soc(x, t)[1].unsqueeze(-1)], -1), mk_soc, ref_soc,
        grad_args=(0, 1), ref_tol=1e-7),
    Entry("psd", P.psd, mk_psd, ref_psd, ref_tol=1e-7,
          feasible=lambda z, S: bool((torch.linalg.eigvalsh(z) >= -1e-10).all())),
    Entry("transport", P.transport, mk_transport, ref_transport, grad_args=(0, 1, 2),
          wrap=balance, props={"iterative"},
          feasible=lambda z, Xm, a, b: feas_nonneg(z) and bool(
              torch.allclose(z.sum(-1), a, atol=1e-10))),
    Entry("birkhoff", P.birkhoff, mk_square,
          lambda Xm: ref_transport(Xm, np.ones(4), np.ones(4)), props={"iterative"}),
    Entry("kl_simplex", P.kl_simplex, mk_x, ref_kl_simplex, ref_tol=1e-6, props={"kl"}),
    Entry("kl_transport", P.kl_transport, mk_transport, ref_kl_transport, grad_args=(0, 1, 2),
          wrap=balance, ref_tol=1e-6, props={"iterative", "kl"}),
    Entry("kl_birkhoff", P.kl_birkhoff, mk_square,
          lambda Xm: ref_kl_transport(Xm, np.ones(4), np.ones(4)), ref_tol=1e-6,
          props={"iterative", "kl"}),
]


def _l1(z):
    return z.abs().sum(-1)


def _sq(z):
    return (z * z).sum(-1)


def _col(w):
    return w.unsqueeze(-1) if w.dim() else w


PROXES = [
    Entry("none", lambda x, s: X.none(x, None, s), with_scaling(mk_x),
          ref_prox(lambda z: 0), grad_args=(0,), g=lambda z: torch.zeros(z.shape[:-1])),
    Entry("lasso", X.lasso, with_scaling(mk_l1), ref_prox(lambda z, l1: l1 * cp.norm1(z)),
          grad_args=(0, 1, 2), g=lambda z, l1: l1 * _l1(z),
          # g* = indicator of the linf ball of radius l1reg
          conj_prox=lambda v, t, l1: P.linf_ball(v, l1)),
    Entry("nonneg_lasso", X.nonneg_lasso, with_scaling(mk_l1),
          ref_prox(lambda z, l1: l1 * cp.norm1(z), nonneg=True),
          grad_args=(0, 1, 2), g=lambda z, l1: l1 * _l1(z) + _ind(z >= 0)),
    Entry("elastic_net", X.elastic_net, with_scaling(mk_en),
          ref_prox(lambda z, l1, l2: l1 * cp.norm1(z) + 0.5 * l2 * cp.sum_squares(z)),
          grad_args=(0, 1, 2, 3), g=lambda z, l1, l2: l1 * _l1(z) + 0.5 * l2 * _sq(z)),
    Entry("group_lasso", X.group_lasso, with_scaling(mk_l1),
          ref_prox(lambda z, l2: l2 * cp.norm(z, 2)), grad_args=(0, 1, 2),
          g=lambda z, l2: l2 * z.norm(dim=-1),
          # g* = indicator of the l2 ball of radius l2reg
          conj_prox=lambda v, t, l2: P.l2_ball(v, l2)),
    Entry("group_lasso_groups",
          lambda x, l2, s: X.group_lasso(x, l2, s, groups=torch.tensor([0, 0, 1, 2, 2])),
          with_scaling(mk_l1),
          ref_prox(lambda z, l2: l2 * (cp.norm(z[0:2], 2) + cp.norm(z[2:3], 2)
                                       + cp.norm(z[3:5], 2))), grad_args=(0, 1, 2),
          g=lambda z, l2: l2 * (z[..., 0:2].norm(dim=-1) + z[..., 2:3].norm(dim=-1)
                                + z[..., 3:5].norm(dim=-1))),
    Entry("ridge", X.ridge, with_scaling(mk_l1),
          ref_prox(lambda z, l2: 0.5 * l2 * cp.sum_squares(z)), grad_args=(0, 1, 2),
          g=lambda z, l2: 0.5 * l2 * _sq(z),
          # g*(y) = ||y||^2 / (2 l2reg): prox_{t g*}(v) = v / (1 + t / l2reg)
          conj_prox=lambda v, t, l2: v / (1 + _col(t) / _col(l2))),
    Entry("nonneg_ridge", X.nonneg_ridge, with_scaling(mk_l1),
          ref_prox(lambda z, l2: 0.5 * l2 * cp.sum_squares(z), nonneg=True), grad_args=(0, 1, 2),
          g=lambda z, l2: 0.5 * l2 * _sq(z) + _ind(z >= 0)),
    Entry("linf", X.linf, with_scaling(mk_l1), ref_prox(lambda z, r: r * cp.norm_inf(z)),
          grad_args=(0, 1, 2), g=lambda z, r: r * z.abs().amax(-1),
          conj_prox=lambda v, t, r: P.l1_ball(v, r)),
    Entry("box_indicator", lambda x, lo, hi, s: X.box_indicator(x, lo, hi, s),
          with_scaling(mk_box), lambda x, lo, hi, s: ref_box(x, lo, hi), grad_args=(0, 1, 2),
          g=lambda z, lo, hi: _ind((z >= lo) & (z <= hi))),
    Entry("from_projection_simplex",
          lambda x, v, s: X.from_projection(P.simplex)(x, v, s), with_scaling(mk_radius),
          lambda x, v, s: ref_set(lambda z, v: [z >= 0, cp.sum(z) == v])(x, v),
          grad_args=(0, 1)),
]
