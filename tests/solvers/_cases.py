"""A catalog of (solver, problem class, reference) cases shared by the solver tests.

Each case builds a batched problem (B = 3 items) in a given dtype, a solver,
and a reference solution per item from a closed form or cvxpy (float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from optlayer.projections import nonneg, simplex
from optlayer.prox import lasso
from optlayer.solvers import (
    LBFGS,
    AndersonAcceleration,
    ConvexInteriorPoint,
    FixedPointIteration,
    GradientDescent,
    MirrorDescent,
    Newton,
    ProjectedGradient,
    ProximalGradient,
)

B = 3
CLARABEL = {"solver": cp.CLARABEL, "tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def lsq(w, X, y):
    r = (X @ w.unsqueeze(-1)).squeeze(-1) - y
    return 0.5 * (r**2).sum(-1)


def ridge(w, X, y, lam):
    return lsq(w, X, y) + 0.5 * lam * (w**2).sum(-1)


def logreg(w, X, y, lam):
    z = (X @ w.unsqueeze(-1)).squeeze(-1)
    return (torch.nn.functional.softplus(z) - y * z).sum(-1) + 0.5 * lam * (w**2).sum(-1)


def ent_obj(x, c):
    return (c * x).sum(-1) + 0.5 * (x**2).sum(-1) + (x * torch.log(x)).sum(-1)


def qcqp_obj(x, c):
    return 0.5 * (x**2).sum(-1) + (c * x).sum(-1)


def qcqp_ineq(x, r):
    return torch.stack([(x**2).sum(-1) - r, x[..., 0] - 0.3], -1)


def affine_T(x, M, b):
    return (M @ x.unsqueeze(-1)).squeeze(-1) + b


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


@dataclass
class Case:
    """One solver on one problem class.

    Attributes:
        make: ``make(**settings) -> solver``.
        data: ``data(dtype) -> (init, args)`` with batch B.
        reference: ``reference(args64) -> (B, n) float64 tensor``.
        diff_arg: index in ``args`` of the tensor differentiated in gradient tests.
        primal: extracts the primal solution from ``params``.
    """

    make: Callable
    data: Callable
    reference: Callable
    diff_arg: int
    primal: Callable = lambda p: p  # noqa: E731
    unroll_ok: bool = True


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _lasso_data(dtype):
    g = _gen(1)
    X = torch.randn(B, 8, 5, generator=g, dtype=torch.float64)
    y = torch.randn(B, 8, generator=g, dtype=torch.float64)
    lam = torch.tensor(0.4, dtype=torch.float64)
    return torch.zeros(B, 5, dtype=dtype), (lam.to(dtype), X.to(dtype), y.to(dtype))


def _lasso_ref(args):
    lam, X, y = map(_np, args)
    out = []
    for i in range(B):
        w = cp.Variable(X.shape[-1])
        obj = 0.5 * cp.sum_squares(X[i] @ w - y[i]) + lam * cp.norm1(w)
        cp.Problem(cp.Minimize(obj)).solve(**CLARABEL)
        out.append(w.value)
    return torch.tensor(np.stack(out))


def _ls_data(seed):
    def data(dtype):
        g = _gen(seed)
        X = torch.randn(B, 8, 4, generator=g, dtype=torch.float64)
        y = torch.randn(B, 8, generator=g, dtype=torch.float64)
        return torch.full((B, 4), 0.25, dtype=dtype), (None, X.to(dtype), y.to(dtype))

    return data


def _constrained_ls_ref(kind):
    def ref(args):
        _, X, y = args
        X, y = _np(X), _np(y)
        out = []
        for i in range(B):
            w = cp.Variable(X.shape[-1])
            cons = [w >= 0] + ([cp.sum(w) == 1] if kind == "simplex" else [])
            cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X[i] @ w - y[i])), cons).solve(
                **CLARABEL
            )
            out.append(w.value)
        return torch.tensor(np.stack(out))

    return ref


def _ridge_data(dtype):
    g = _gen(4)
    X = torch.randn(B, 8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(B, 8, generator=g, dtype=torch.float64)
    lam = torch.tensor(0.5, dtype=torch.float64)
    return torch.zeros(B, 4, dtype=dtype), (X.to(dtype), y.to(dtype), lam.to(dtype))


def _ridge_ref(args):
    X, y, lam = args
    M = X.mT @ X + lam * torch.eye(X.shape[-1], dtype=X.dtype)
    return torch.linalg.solve(M, (X.mT @ y.unsqueeze(-1)).squeeze(-1))


def _logreg_data(dtype):
    g = _gen(5)
    X = torch.randn(B, 12, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(B, 12, generator=g, dtype=torch.float64) > 0.5).to(torch.float64)
    lam = torch.tensor(0.3, dtype=torch.float64)
    return torch.zeros(B, 4, dtype=dtype), (X.to(dtype), y.to(dtype), lam.to(dtype))


def _logreg_ref(args):
    """Independent numpy Newton with analytic gradient and Hessian (cvxpy's exponential
    cone is only accurate to ~1e-6 here)."""
    X, y, lam = map(_np, args)
    out = []
    for i in range(B):
        w = np.zeros(X.shape[-1])
        for _ in range(100):
            p = 1 / (1 + np.exp(-X[i] @ w))
            grad = X[i].T @ (p - y[i]) + lam * w
            H = X[i].T @ ((p * (1 - p))[:, None] * X[i]) + lam * np.eye(len(w))
            w = w - np.linalg.solve(H, grad)
        assert np.linalg.norm(grad) < 1e-13
        out.append(w)
    return torch.tensor(np.stack(out))


def _ent_data(dtype):
    g = _gen(6)
    c = torch.randn(B, 5, generator=g, dtype=torch.float64)
    return torch.full((B, 5), 0.2, dtype=dtype), (None, c.to(dtype))


def _ent_ref(args):
    c = _np(args[1])
    out = []
    for i in range(B):
        x = cp.Variable(5)
        obj = c[i] @ x + 0.5 * cp.sum_squares(x) - cp.sum(cp.entr(x))
        cp.Problem(cp.Minimize(obj), [cp.sum(x) == 1]).solve(**CLARABEL)
        out.append(x.value)
    return torch.tensor(np.stack(out))


def _qcqp_data(dtype):
    g = _gen(7)
    n = 4
    c = 2 * torch.randn(B, n, generator=g, dtype=torch.float64)
    A = torch.randn(B, 1, n, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(B, 1, generator=g, dtype=torch.float64)
    r = torch.tensor(1.0, dtype=torch.float64)
    to = lambda t: t.to(dtype)  # noqa: E731
    return torch.zeros(B, n, dtype=dtype), (to(c), (to(A), to(b)), to(r))


def _qcqp_ref(args):
    c, (A, b), r = args
    c, A, b, r = _np(c), _np(A), _np(b), float(r)
    out = []
    for i in range(B):
        x = cp.Variable(c.shape[-1])
        cons = [cp.sum_squares(x) <= r, x[0] <= 0.3, A[i] @ x == b[i]]
        cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + c[i] @ x), cons).solve(**CLARABEL)
        out.append(x.value)
    return torch.tensor(np.stack(out))


def _affine_data(dtype):
    g = _gen(8)
    M = torch.randn(B, 4, 4, generator=g, dtype=torch.float64)
    M = 0.6 * M / torch.linalg.matrix_norm(M, ord=2).reshape(B, 1, 1)
    b = torch.randn(B, 4, generator=g, dtype=torch.float64)
    return torch.zeros(B, 4, dtype=dtype), (M.to(dtype), b.to(dtype))


def _affine_ref(args):
    M, b = args
    eye = torch.eye(M.shape[-1], dtype=M.dtype)
    return torch.linalg.solve(eye - M, b)


CASES: dict[str, Any] = {
    "prox_grad_lasso": Case(
        lambda **kw: ProximalGradient(lsq, lasso, **kw), _lasso_data, _lasso_ref, 2
    ),
    "proj_grad_nnls": Case(
        lambda **kw: ProjectedGradient(lsq, nonneg, **kw),
        _ls_data(2), _constrained_ls_ref("nonneg"), 2,
    ),
    "proj_grad_simplex": Case(
        lambda **kw: ProjectedGradient(lsq, simplex, **kw),
        _ls_data(3), _constrained_ls_ref("simplex"), 2,
    ),
    "gradient_descent_ridge": Case(
        lambda **kw: GradientDescent(ridge, **kw), _ridge_data, _ridge_ref, 1
    ),
    "mirror_descent_entropy": Case(
        lambda **kw: MirrorDescent(ent_obj, **kw), _ent_data, _ent_ref, 1
    ),
    "newton_logreg": Case(lambda **kw: Newton(logreg, **kw), _logreg_data, _logreg_ref, 0),
    "lbfgs_logreg": Case(lambda **kw: LBFGS(logreg, **kw), _logreg_data, _logreg_ref, 0),
    "interior_point_qcqp": Case(
        lambda **kw: ConvexInteriorPoint(qcqp_obj, qcqp_ineq, **kw),
        _qcqp_data, _qcqp_ref, 0, primal=lambda p: p[0],
    ),
    "fixed_point_affine": Case(
        lambda **kw: FixedPointIteration(affine_T, **kw), _affine_data, _affine_ref, 1
    ),
    "anderson_affine": Case(
        lambda **kw: AndersonAcceleration(affine_T, **kw), _affine_data, _affine_ref, 1
    ),
}
