"""The unguarded interior point loop for small QPs without equality constraints (private;
also run on problems whose equalities :mod:`_qp_elim` eliminated).

For the small problems of :mod:`_qp_dense` an iteration costs what its number of
tensor operations costs. That module's loop carries, at every iteration, what
hard items need: Farkas certificates, a watch on diverging or stalling items,
guarded steps against a cycling gap, retries of failed factorizations. Most
batches need none of it, so :func:`run_fast` runs first: Mehrotra's
predictor-corrector on the reduced system (``ds`` and ``dz`` eliminated, one
Cholesky factorization of ``Q + G'WG`` with ``W = z / s`` per iteration, as
``_qp_dense._ReducedNewton``), with the same start, error, centring, step rule
and polish as ``_qp_dense.run_dense``, and nothing else: about 60 tensor
operations an iteration instead of 100 to 150.

It stops when every item has converged (its error, or its polished point,
within ``tol``), when the worst running item's error has not halved in
``IPM_STALL_ITERS`` iterations, or at ``maxiter``; an item whose factorization
fails stops at once. The statuses come from the residuals of the returned point
(``_qp_dense._finish``); the caller (:func:`optlayer.solvers.qp._run_kernel`)
solves every item that is not OPTIMAL again with the guarded kernel, in the
iterations left, so infeasible, unbounded and hard items get the same verdicts
as before, later.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optlayer import defaults
from optlayer.solvers import _qp_dense as dense
from optlayer.solvers import _qp_ipm as ipm

__all__ = ["applies", "run_fast"]


def applies(n: int, m: int, me: int) -> bool:
    """Whether :func:`run_fast` runs first: inequality constraints and no equalities."""
    return defaults.IPM_FAST_LOOP and m > 0 and me == 0


def _start(d: ipm.Data, Qr: Tensor, keep: float):
    """CVXOPT's start, as ``run_dense``'s: ``x`` minimising ``1/2 x'Qx + p'x +
    1/2 |Gx - h|^2``, ``s = h - Gx`` and ``z = -s``, each shifted inside."""
    B, m = d.G.shape[0], d.G.shape[1]
    H = torch.baddbmm(Qr, d.Gt, d.G)
    H.diagonal(dim1=1, dim2=2).mul_(keep)
    L, _ = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(torch.baddbmm(-d.p, d.Gt, d.h), L)
    s = torch.baddbmm(d.h, d.G, x, alpha=-1.0)
    w = torch.cat([s, -s], dim=1).view(B, 2, m)
    low = -w.amin(dim=2, keepdim=True)
    w = w + torch.where(low >= 0, 1.0 + low, 0.0)
    return x, w.view(B, 2 * m, 1)


def _solve(nt, rc: Tensor):
    """``(dx, [ds; dz])`` of the Newton system at ``nt = (G, G', L, W, s, z, rx, rz)``
    (``L`` the Cholesky factor of ``Q + G'WG``) with complementarity rows ``rc``:
    ``t = (rc - z rz) / s``, ``(Q + G'WG) dx = rx - G't``, ``ds = rz - G dx``,
    ``dz = t + W G dx``."""
    G, Gt, L, W, s, z, rx, rz = nt
    t = torch.addcmul(rc, z, rz, value=-1.0).div_(s)
    dx = torch.cholesky_solve(torch.baddbmm(rx, Gt, t, alpha=-1.0), L)
    Gdx = torch.bmm(G, dx)
    return dx, torch.cat([rz - Gdx, torch.addcmul(t, W, Gdx)], dim=1)


def run_fast(d: ipm.Data, *, active: Tensor, tol: float, maxiter: int,
             want_factor: bool) -> ipm.Result:
    """Mehrotra's predictor-corrector without safeguards (see the module doc) on the
    stacked data ``d`` (``m > 0``, no equality constraints)."""
    Q, p, G, Gt, h = d.Q, d.p, d.G, d.Gt, d.h
    B, n, _ = Q.shape
    m = G.shape[1]
    Qr = Q.clone()
    Qr.diagonal(dim1=1, dim2=2).add_(d.reg_abs.view(B, 1))
    keep = 1.0 + d.reg_rel            # relative regularization of the diagonal
    x, w = _start(d, Qr, keep)        # w = [s; z]
    # the row scales of _qp_dense._error: 1 / (1 + |p|) on the dual rows, 1 / (1 + |h|)
    scale = torch.cat([(1.0 / (1.0 + ipm.amax(t))).view(B, 1, 1).expand(B, k, 1)
                       for t, k in ((p, n), (h, m))], dim=1)
    c0 = torch.cat([p, -h], dim=1)
    running = active.clone()
    iters = torch.zeros(B, dtype=torch.int64, device=Q.device)
    polish_at, pol = defaults.IPM_POLISH_BELOW, None
    best, since = float("inf"), 0
    for it in range(maxiter + 1):
        s, z = w[:, :m], w[:, m:]
        prod = ipm.matvec(d.KA, x, d.KAt)                      # [Qx; Gx]
        r = prod + c0                     # [rx; rz] = [Qx + p + G'z; Gx - h + s], in place
        rx, rz = r.split_with_sizes((n, m), dim=1)
        rx.baddbmm_(Gt, z)
        rz.add_(s)
        sz = s * z
        mu = sz.sum(dim=(1, 2), keepdim=True)
        obj = (x * torch.add(p, prod[:, :n], alpha=0.5)).sum(dim=(1, 2))
        if d.obj0 is not None:
            obj = obj + d.obj0
        err = torch.maximum(ipm.amax(r * scale), mu.view(B) / obj.abs().clamp(min=1.0))
        running = running & (err > tol)        # NaN errors stop too
        worst = float(torch.where(running, err, -1.0).amax())
        if it == maxiter or worst < 0:
            break
        if worst < 0.5 * best:
            best, since = worst, 0
        else:
            since += 1
            if since >= defaults.IPM_STALL_ITERS:   # for the guarded kernel
                break
        if worst <= polish_at:     # as in run_dense: finish on the active set where it passes
            polish_at = worst * 1e-2
            pol = dense._repolish(d, torch.cat([x, w], dim=1), n, m, 0, pol, tol)
            pol = dense._correct(d, pol, running, tol)
            running = running & ~(pol.err <= tol)
            if not bool(running.any()):
                break
        W = z / s
        H = torch.baddbmm(Qr, Gt, G * W)
        H.diagonal(dim1=1, dim2=2).mul_(keep)
        L, info = torch.linalg.cholesky_ex(H)
        nt = (G, Gt, L, W, s, z, rx, rz)
        dx, dw = _solve(nt, sz)                                     # predictor: w - a dw
        a = dense._step_to_boundary(w, dw, 1.0)
        nxt = torch.addcmul(w, a, dw, value=-1.0)
        mu_aff = (nxt[:, :m] * nxt[:, m:]).sum(dim=(1, 2), keepdim=True)
        # Mehrotra's centering sigma = (mu_aff / mu)^3, target floored a decade below tol
        target = (mu_aff / mu).clamp(0.0, 1.0).pow(3).mul(mu / m).clamp(min=0.1 * tol / m)
        dx, dw = _solve(nt, torch.addcmul(sz, dw[:, :m], dw[:, m:]).sub_(target))  # corrector
        a = dense._step_to_boundary(w, dw, ipm.boundary_fraction(err).view(-1, 1, 1))
        running = running & (info == 0)        # a failed factorization: to the guarded kernel
        step = running.view(B, 1, 1)
        x = torch.where(step, torch.addcmul(x, a, dx, value=-1.0), x)
        w = torch.where(step, torch.addcmul(w, a, dw, value=-1.0), w)
        iters += running

    v = torch.cat([x, w], dim=1)
    pol = dense._correct(d, dense._repolish(d, v, n, m, 0, pol, tol), running, tol)
    none = torch.zeros_like(running)
    return dense._finish(d, dense._split(v, n, m, 0), pol, err, active, running, none, none,
                         iters, tol, want_factor)
