"""Matrix-free Krylov solvers: conjugate gradient, normal-equation CG, GMRES, BiCGSTAB.

All four share the protocol of :mod:`optlayer.linalg._common`::

    x = solve(matvec, b, *, init=None, ridge=None, tol=None, maxiter=None,
              on_failure="warn")

solving ``(A + ridge I) x = b`` for every batch item of ``b`` (shape
``(*batch, n)``, or a tuple/list/dict of ``(*batch, n_i)`` tensors).
Convergence means a relative residual ``||A x - b|| / ||b|| <= tol``
(default :func:`optlayer.defaults.tol` of the dtype). Items that converge are
frozen by masked updates while the others continue; the loop stops when all
have converged (one host check per iteration), so the code has no
data-dependent control flow per batch item and runs under ``torch.func.vmap``,
``jacrev`` and ``jacfwd``. Items still above ``tol`` at ``maxiter`` give an
:class:`optlayer.OptimizationWarning` naming the worst residual
(``on_failure="raise"`` raises :class:`optlayer.SolverError` instead;
``"ignore"`` returns silently) — never a silent zero.

The iterations are differentiable torch code, so gradients through a solve
(e.g. second derivatives of an implicit layer) are those of the unrolled
Krylov iterations, accurate to the tolerance of the solve.
"""

from __future__ import annotations

import torch

from optlayer import defaults
from optlayer.linalg._common import (
    Packed,
    any_true,
    as_matvec,
    check_common,
    default_maxiter,
    physical,
    report,
    resolve_tol,
    safe_div,
)

__all__ = ["solve_cg", "solve_normal_cg", "solve_gmres", "solve_bicgstab"]


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.conj() * y).sum(-1) if x.is_complex() else (x * y).sum(-1)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def _setup(matvec, b, init, ridge, tol, maxiter, on_failure, what):
    check_common(maxiter, on_failure, what)
    packed = Packed(b, what)
    op = as_matvec(matvec, packed, ridge, what)
    bv = packed.pack(b)
    x0 = torch.zeros_like(bv) if init is None else packed.pack(init).to(bv)
    if x0.shape != bv.shape:
        raise ValueError(f"{what}: init has shape {tuple(x0.shape)}, b has {tuple(bv.shape)}")
    tol = resolve_tol(tol, bv.dtype, what)
    maxiter = default_maxiter(packed.n) if maxiter is None else maxiter
    return packed, op, bv, x0, tol, maxiter


def _rel(r_norm: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    return torch.where(b_norm > 0, r_norm / torch.where(b_norm > 0, b_norm, 1), r_norm)


def _finish(what, packed, op, bv, x, tol, on_failure, iters):
    rel = _rel(_norm(bv - op(x)), _norm(bv))
    report(what, rel, tol, on_failure, iters=iters)
    return packed.unpack(x)


def solve_cg(matvec, b, *, init=None, ridge=None, tol=None, maxiter=None, on_failure="warn"):
    """Conjugate gradient for symmetric positive (semi-)definite ``A``.

    Solves ``(A + ridge I) x = b``; see the module docstring for the protocol.

    Args:
        matvec: linear map ``x -> A x`` (same structure as ``b``), or a tensor ``A``.
        b: right-hand side, ``(*batch, n)`` or a pytree of ``(*batch, n_i)``.
        init: initial guess shaped like ``b`` (default zeros).
        ridge: optional scalar added to the diagonal.
        tol: relative residual tolerance (default per dtype).
        maxiter: iteration cap (default ``min(1000, 10 n)``).
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"``.

    Returns:
        ``x`` with the structure of ``b``.

    Raises:
        OptTypeError: bad ``matvec`` or ``b``.
        SolverError: non-convergence with ``on_failure="raise"``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x = solve_cg(lambda v: A @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> torch.allclose(A @ x, torch.tensor([1.0, 2.0], dtype=torch.float64))
        True
    """
    what = "solve_cg"
    packed, op, bv, x, tol, maxiter = _setup(
        matvec, b, init, ridge, tol, maxiter, on_failure, what
    )
    thresh = (tol * _norm(bv)) ** 2
    r = bv - op(x)
    p = r
    rs = _dot(r, r).real
    active = rs > thresh
    # One system in the whole physical batch: the loop stops when it converges,
    # so the masked (frozen-item) updates are unnecessary -- a cheaper iteration.
    masked = physical(active).numel() > 1
    it = 0
    while it < maxiter and any_true(active):
        it += 1
        Ap = op(p)
        if masked:
            alpha = torch.where(active, safe_div(rs, _dot(p, Ap).real), torch.zeros_like(rs))
        else:
            alpha = rs / _dot(p, Ap).real
        x = x + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * Ap
        rs_new = _dot(r, r).real
        if masked:
            beta = safe_div(rs_new, rs)
            p = torch.where(active.unsqueeze(-1), r + beta.unsqueeze(-1) * p, p)
            rs = torch.where(active, rs_new, rs)
            active = active & (rs > thresh)
        else:
            p = r + (rs_new / rs).unsqueeze(-1) * p
            rs = rs_new
            active = rs > thresh
    return _finish(what, packed, op, bv, x, tol, on_failure, it)


def solve_normal_cg(
    matvec, b, *, init=None, ridge=None, tol=None, maxiter=None, on_failure="warn"
):
    """Solve ``A x = b`` by conjugate gradient on the normal equations ``Aᵀ A x = Aᵀ b``.

    Works for any nonsingular ``A`` (for a least-squares solution of a
    singular one, too) at the cost of squaring the condition number.
    ``Aᵀ`` is obtained by transposing ``matvec`` with ``torch.func.vjp`` (a
    linear map is its own linearization), so ``matvec`` must be torch code.
    ``ridge`` is added to ``A`` (not to ``Aᵀ A``). Arguments and returns as
    :func:`solve_cg`; convergence is judged on the residual of ``A x = b``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
        >>> x = solve_normal_cg(lambda v: A @ v, torch.tensor([5.0, 3.0], dtype=torch.float64))
        >>> [round(float(v), 8) for v in x]
        [3.0, 1.0]
    """
    what = "solve_normal_cg"
    packed, op, bv, x, tol, maxiter = _setup(
        matvec, b, init, ridge, tol, maxiter, on_failure, what
    )
    _, op_t = torch.func.vjp(op, torch.zeros_like(bv))

    def rop(u):
        return op_t(u.conj() if u.is_complex() else u)[0]

    # CG on Aᵀ A x = Aᵀ b, tracking the residual of A x = b by recurrence too
    b_norm = _norm(bv)
    res = bv - op(x)  # residual of the original system
    r = rop(res)  # residual of the normal equations
    p = r
    rs = _dot(r, r).real
    active = (_norm(res) > tol * b_norm) & (rs > 0)
    it = 0
    while it < maxiter and any_true(active):
        it += 1
        Ap = op(p)
        AtAp = rop(Ap)
        alpha = torch.where(active, safe_div(rs, _dot(Ap, Ap).real), torch.zeros_like(rs))
        x = x + alpha.unsqueeze(-1) * p
        res = res - alpha.unsqueeze(-1) * Ap
        r = r - alpha.unsqueeze(-1) * AtAp
        rs_new = _dot(r, r).real
        beta = safe_div(rs_new, rs)
        p = torch.where(active.unsqueeze(-1), r + beta.unsqueeze(-1) * p, p)
        rs = torch.where(active, rs_new, rs)
        active = active & (_norm(res) > tol * b_norm) & (rs > 0)
    return _finish(what, packed, op, bv, x, tol, on_failure, it)


def solve_gmres(
    matvec,
    b,
    *,
    init=None,
    ridge=None,
    tol=None,
    maxiter=None,
    restart=None,
    on_failure="warn",
):
    """Restarted GMRES for general (nonsymmetric, indefinite) nonsingular ``A``.

    Each cycle builds an Arnoldi basis of ``restart`` vectors (modified
    Gram-Schmidt, default ``min(defaults.GMRES_RESTART, n)``) and minimises the
    residual over it with a small least-squares solve (pseudo-inverse of the
    Hessenberg matrix, robust to a lucky breakdown). ``maxiter`` counts
    matrix-vector products. Arguments and returns as :func:`solve_cg`.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=torch.float64)
        >>> x = solve_gmres(A, torch.tensor([3.0, 2.0], dtype=torch.float64))
        >>> [round(float(v), 8) for v in x]
        [1.0, 1.0]
    """
    what = "solve_gmres"
    packed, op, bv, x, tol, maxiter = _setup(
        matvec, b, init, ridge, tol, maxiter, on_failure, what
    )
    if restart is not None and (not isinstance(restart, int) or restart < 1):
        raise ValueError(f"{what}: restart must be a positive integer; got {restart!r}")
    m = min(restart or defaults.GMRES_RESTART, packed.n)
    b_norm = _norm(bv)
    r = bv - op(x)
    beta = _norm(r)
    active = beta > tol * b_norm
    it = 0
    while it < maxiter and any_true(active):
        basis = [safe_div(r, beta.unsqueeze(-1))]
        cols = []
        for j in range(m):
            w = op(basis[j])
            hs = []
            for i in range(j + 1):
                h = _dot(basis[i], w)
                w = w - h.unsqueeze(-1) * basis[i]
                hs.append(h)
            hn = _norm(w)
            hs.append(hn)
            cols.append(torch.stack(hs + [torch.zeros_like(hn)] * (m - 1 - j), dim=-1))
            basis.append(safe_div(w, hn.unsqueeze(-1)))
        it += m
        H = torch.stack(cols, dim=-1)  # (*batch, m + 1, m)
        g = torch.zeros(H.shape[:-1], dtype=H.dtype, device=H.device)
        g = torch.cat([beta.unsqueeze(-1).to(H.dtype), g[..., 1:]], dim=-1)
        y = (torch.linalg.pinv(H) @ g.unsqueeze(-1)).squeeze(-1)  # (*batch, m)
        V = torch.stack(basis[:m], dim=-1)  # (*batch, n, m)
        dx = (V @ y.unsqueeze(-1)).squeeze(-1)
        x = torch.where(active.unsqueeze(-1), x + dx, x)
        r = bv - op(x)
        beta = _norm(r)
        active = active & (beta > tol * b_norm)
    return _finish(what, packed, op, bv, x, tol, on_failure, it)


def solve_bicgstab(
    matvec, b, *, init=None, ridge=None, tol=None, maxiter=None, on_failure="warn"
):
    """BiCGSTAB for general nonsingular ``A`` (short recurrences, two matvecs per step).

    A breakdown (a zero inner product) freezes the affected item; if it is
    still above ``tol`` at the end it is reported like any non-convergence.
    Arguments and returns as :func:`solve_cg`.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=torch.float64)
        >>> x = solve_bicgstab(A, torch.tensor([3.0, 2.0], dtype=torch.float64))
        >>> [round(float(v), 8) for v in x]
        [1.0, 1.0]
    """
    what = "solve_bicgstab"
    packed, op, bv, x, tol, maxiter = _setup(
        matvec, b, init, ridge, tol, maxiter, on_failure, what
    )
    b_norm = _norm(bv)
    r = bv - op(x)
    rhat = r
    ones = torch.ones_like(b_norm, dtype=bv.dtype)
    rho, alpha, omega = ones, ones, ones
    v = torch.zeros_like(bv)
    p = torch.zeros_like(bv)
    active = _norm(r) > tol * b_norm
    it = 0
    while it < maxiter and any_true(active):
        it += 1
        rho_new = _dot(rhat, r)
        beta = safe_div(rho_new, rho) * safe_div(alpha, omega)
        p_new = r + beta.unsqueeze(-1) * (p - omega.unsqueeze(-1) * v)
        v_new = op(p_new)
        alpha_new = safe_div(rho_new, _dot(rhat, v_new))
        s = r - alpha_new.unsqueeze(-1) * v_new
        t = op(s)
        omega_new = safe_div(_dot(t, s), _dot(t, t))
        x_new = x + alpha_new.unsqueeze(-1) * p_new + omega_new.unsqueeze(-1) * s
        r_new = s - omega_new.unsqueeze(-1) * t
        a = active.unsqueeze(-1)
        x = torch.where(a, x_new, x)
        r = torch.where(a, r_new, r)
        p = torch.where(a, p_new, p)
        v = torch.where(a, v_new, v)
        rho = torch.where(active, rho_new, rho)
        alpha = torch.where(active, alpha_new, alpha)
        omega = torch.where(active, omega_new, omega)
        # stop an item on convergence or on breakdown (omega or rho exactly 0)
        active = active & (_norm(r) > tol * b_norm) & (omega != 0) & (rho != 0)
    return _finish(what, packed, op, bv, x, tol, on_failure, it)
