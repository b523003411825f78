"""Dense linear solvers: LU, Cholesky and least squares (pseudo-inverse).

Same protocol as the Krylov solvers (``solve(matvec, b, *, ridge=None, ...)``,
see :mod:`optlayer.linalg._common`): the operator is materialised from
``matvec`` with one ``torch.func.vmap`` over the ``n`` basis vectors (or taken
as given when ``matvec`` is a tensor), then factorised by torch.linalg. They
are exact up to rounding, differentiable to any order, and vmappable, so they
are the right choice for small and medium systems (up to a few thousand
unknowns) and for second-order differentiation. ``init``, ``tol`` and
``maxiter`` are accepted for protocol compatibility; ``tol`` is the relative
residual above which a result is reported (default ``sqrt(eps)`` of the dtype,
since a direct solve of a well-posed system lands near ``eps``).

A failed factorisation, a non-finite result or a relative residual
``||A x - b|| / ||b||`` above ``tol`` (the signature of a singular or
ill-conditioned matrix) gives an :class:`optlayer.OptimizationWarning` naming
the residual (``on_failure="raise"`` raises :class:`optlayer.SolverError`).

Note on torch 2.13: :func:`solve_lu` factorises with ``lu_factor_ex`` and
finishes with two triangular solves instead of calling ``torch.linalg.solve``
or ``lu_solve``: forward-mode AD through those under an enclosing ``vmap`` is
silently wrong (``vmap(hessian(...))`` of an implicit layer), and ``jacrev``
through ``lu_solve`` has been seen to fail in MKL at n≈200.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD

from optlayer.linalg._common import (
    Packed,
    as_matvec,
    check_common,
    functorch_active,
    lu_factor,
    materialize,
    physical,
    report,
)
from optlayer.status import Status

__all__ = ["solve_lu", "solve_cholesky", "solve_lstsq", "dense_operator"]


def dense_operator(matvec, b, *, ridge=None) -> torch.Tensor:
    """The matrix ``A + ridge I`` of shape ``(*batch, n, n)`` of ``matvec`` (for a pytree
    ``b``, the blocks in the order of its flattened leaves).

    Example:
        >>> import torch
        >>> dense_operator(lambda v: 2 * v, torch.zeros(2))
        tensor([[2., 0.],
                [0., 2.]])
    """
    packed = Packed(b, "dense_operator")
    return _matrix(matvec, packed, ridge, "dense_operator")


def _matrix(matvec, packed: Packed, ridge, what: str) -> torch.Tensor:
    if isinstance(matvec, torch.Tensor):
        as_matvec(matvec, packed, None, what)  # shape check
        A = matvec.to(dtype=packed.dtype)
        if ridge is not None:
            A = A + ridge * torch.eye(packed.n, dtype=A.dtype, device=A.device)
        return A
    return materialize(as_matvec(matvec, packed, ridge, what), packed)


def _tol(tol, dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps) if tol is None else float(tol)


def _residual(A: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r = torch.linalg.vector_norm((A @ x.unsqueeze(-1)).squeeze(-1) - b, dim=-1)
    bn = torch.linalg.vector_norm(b, dim=-1)
    return torch.where(bn > 0, r / torch.where(bn > 0, bn, 1), r)


def _differentiated(*ts: torch.Tensor) -> bool:
    """Whether a result computed from ``ts`` may be differentiated: a graph is being
    recorded for one of them, one carries a forward-mode tangent, or a ``torch.func``
    transform is active."""
    if functorch_active():
        return True
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return True
    return any(fwAD.unpack_dual(t).tangent is not None for t in ts)


def _lu_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ b`` by LU with partial pivoting, as ``lu_factor_ex`` + ``lu_unpack`` + two
    triangular solves.

    Not ``torch.linalg.solve``/``lu_solve``: in torch 2.13 (CPU) forward-mode AD
    through those under an enclosing ``vmap`` silently returns wrong numbers
    (so ``vmap(hessian(...))`` of an implicit layer was wrong), and ``jacrev``
    through ``lu_solve`` can fail with "Pivots given to lu_solve must all be
    greater or equal to 1". Triangular solves batch and differentiate correctly
    (``tests/implicit/test_review_vmap_hessian.py``). A zero pivot gives
    Inf/NaN, which the residual check reports. Where nothing differentiates the
    solve (no graph, no forward-mode tangent, no ``torch.func`` transform: the
    backward pass of the layers) ``lu_solve`` on the factors does it in one call
    (no unpacking, no permutation product).
    """
    LU, piv, _info = lu_factor(A)
    if not _differentiated(A, b):
        return torch.linalg.lu_solve(LU, piv, b.unsqueeze(-1)).squeeze(-1)
    P, L, U = torch.lu_unpack(LU, piv)
    y = torch.linalg.solve_triangular(
        L, (P.mT @ b.unsqueeze(-1)), upper=False, unitriangular=True
    )
    return torch.linalg.solve_triangular(U, y, upper=True).squeeze(-1)


def solve_lu(matvec, b, *, init=None, ridge=None, tol=None, maxiter=None, on_failure="warn"):
    """Solve ``(A + ridge I) x = b`` by LU with partial pivoting (``lu_factor_ex``, then
    two triangular solves; see :func:`_lu_solve` for why not ``torch.linalg.solve``).

    Args:
        matvec: linear map ``x -> A x`` (same structure as ``b``), or a tensor ``A``.
        b: right-hand side, ``(*batch, n)`` or a pytree of ``(*batch, n_i)``.
        init, maxiter: ignored (protocol compatibility).
        ridge: optional scalar added to the diagonal.
        tol: relative residual above which the result is reported (default sqrt(eps)).
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"``.

    Returns:
        ``x`` with the structure of ``b``.

    Raises:
        OptTypeError: bad ``matvec`` or ``b``.
        SolverError: singular system with ``on_failure="raise"``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=torch.float64)
        >>> solve_lu(lambda v: A @ v, torch.tensor([3.0, 2.0], dtype=torch.float64))
        tensor([1., 1.], dtype=torch.float64)
    """
    what = "solve_lu"
    check_common(maxiter, on_failure, what)
    packed = Packed(b, what)
    bv = packed.pack(b)
    A = _matrix(matvec, packed, ridge, what)
    x = _lu_solve(A, bv)
    report(what, _residual(A, x, bv), _tol(tol, bv.dtype), on_failure,
           failure=Status.NUMERICAL_ERROR)
    return packed.unpack(x)


def solve_cholesky(
    matvec, b, *, init=None, ridge=None, tol=None, maxiter=None, on_failure="warn"
):
    """Solve ``(A + ridge I) x = b`` for symmetric positive definite ``A`` by Cholesky.

    Reads only the lower triangle, so it checks symmetry (relative asymmetry
    above ``tol``) and positive definiteness (the factorisation's ``info``) and
    reports either failure. Arguments as :func:`solve_lu`.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> solve_cholesky(A, torch.tensor([5.0, 4.0], dtype=torch.float64))
        tensor([1., 1.], dtype=torch.float64)
    """
    what = "solve_cholesky"
    check_common(maxiter, on_failure, what)
    packed = Packed(b, what)
    bv = packed.pack(b)
    A = _matrix(matvec, packed, ridge, what)
    tol_ = _tol(tol, bv.dtype)
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(bv.unsqueeze(-1), L).squeeze(-1)
    if on_failure != "ignore":
        # One report per call: asymmetry first (Cholesky read only one triangle,
        # so the result solves a different system), else the residual check.
        Ap = physical(A).detach()
        asym = torch.linalg.matrix_norm(Ap - Ap.mT) / torch.linalg.matrix_norm(Ap).clamp_min(
            torch.finfo(Ap.dtype).tiny
        )
        if bool((asym > tol_).any()):
            report(
                what + " (the matrix is not symmetric: use solve_lu or solve_gmres); the "
                "'residual' below is the relative asymmetry ||A - Aᵀ|| / ||A||",
                asym, tol_, on_failure, failure=Status.NUMERICAL_ERROR,
            )
            return packed.unpack(x)
        if bool((physical(info) != 0).any()):
            what += " (the matrix is not positive definite: use solve_lu or solve_gmres)"
    report(what, _residual(A, x, bv), tol_, on_failure, failure=Status.NUMERICAL_ERROR)
    return packed.unpack(x)


def solve_lstsq(
    matvec, b, *, init=None, ridge=None, tol=None, maxiter=None, on_failure="warn"
):
    """Minimum-norm least-squares solution of ``(A + ridge I) x ≈ b`` (``pinv(A) @ b``).

    For singular or rank-deficient systems (where :func:`solve_lu` reports a
    failure) this returns the minimum-norm minimiser of ``||A x - b||``; the
    residual is *not* required to vanish, so only a non-finite result is
    reported. Arguments as :func:`solve_lu` (``tol`` is unused).

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
        >>> x = solve_lstsq(A, torch.tensor([2.0, 2.0], dtype=torch.float64))
        >>> [round(float(v), 8) for v in x]
        [1.0, 1.0]
    """
    what = "solve_lstsq"
    check_common(maxiter, on_failure, what)
    packed = Packed(b, what)
    bv = packed.pack(b)
    A = _matrix(matvec, packed, ridge, what)
    x = (torch.linalg.pinv(A) @ bv.unsqueeze(-1)).squeeze(-1)
    finite = torch.isfinite(x).all(-1)
    flag = torch.where(finite, 0.0, math.inf)  # only a non-finite result is a failure
    report(what, flag, 1.0, on_failure, failure=Status.NUMERICAL_ERROR)
    return packed.unpack(x)
