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


def _start(d: ipm.Data, Qr: Tensor, keep: float) -> Tensor:
    """CVXOPT's start, as ``run_dense``'s: ``x`` minimising ``1/2 x'Qx + p'x +
    1/2 |Gx - h|^2``, ``s = h - Gx`` and ``z = -s``, each shifted inside; returned as
    one column ``[x; s; z]``."""
    B, m = d.G.shape[0], d.G.shape[1]
    H = torch.baddbmm(Qr, d.Gt, d.G)
    H.diagonal(dim1=1, dim2=2).mul_(keep)
    L, _ = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(torch.baddbmm(-d.p, d.Gt, d.h), L)
    s = torch.baddbmm(d.h, d.G, x, alpha=-1.0)
    w = torch.cat([s, -s], dim=1).view(B, 2, m)
    low = -w.amin(dim=2, keepdim=True)
    w = w + torch.where(low >= 0, 1.0 + low, 0.0)
    return torch.cat([x, w.view(B, 2 * m, 1)], dim=1)


def _direction(G: Tensor, Gt: Tensor, L: Tensor, W: Tensor, rx: Tensor, rz: Tensor,
               t: Tensor) -> Tensor:
    """``[dx; ds; dz]`` of the Newton system at ``W = z / s`` (``L`` the Cholesky factor
    of ``Q + G'WG``) for ``t = (rc - z rz) / s``, ``rc`` the complementarity rows:
    ``(Q + G'WG) dx = rx - G't``, ``ds = rz - G dx``, ``dz = t + W G dx``."""
    dx = torch.cholesky_solve(torch.baddbmm(rx, Gt, t, alpha=-1.0), L)
    Gdx = torch.bmm(G, dx)
    return torch.cat([dx, rz - Gdx, torch.addcmul(t, W, Gdx)], dim=1)


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
    v = _start(d, Qr, keep)           # [x; s; z]
    # the row scales of _qp_dense._error: 1 / (1 + |p|) on the dual rows, 1 / (1 + |h|)
    scale = torch.cat([(1.0 / (1.0 + ipm.amax(t))).view(B, 1, 1).expand(B, k, 1)
                       for t, k in ((p, n), (h, m))], dim=1)
    c0 = torch.cat([p, -h], dim=1)
    floor = -0.1 * tol / m            # minus the least centring target
    running = active.clone()
    steps = []                        # the items that stepped, per iteration
    polish_at, pol = defaults.IPM_POLISH_BELOW, None
    base = dense.bases(d)             # of the polishes' matrices (every run ends with one)
    best, since = float("inf"), 0
    finished = False                  # every item done in the polish, at the last iterate
    for it in range(maxiter + 1):
        x, s, z = v.split_with_sizes((n, m, m), dim=1)
        prod = ipm.matvec(d.KA, x, d.KAt)                      # [Qx; Gx]
        r = prod + c0                     # [rx; rz] = [Qx + p + G'z; Gx - h + s], in place
        rx, rz = r.split_with_sizes((n, m), dim=1)
        rx.baddbmm_(Gt, z)
        rz.add_(s)
        sz = s * z
        mu = sz.sum(dim=(1, 2), keepdim=True)
        if it == 0 and maxiter > 0:
            # the start is no solution and no point to polish (its error is that of a
            # least-squares point shifted inside, 1 to 100 on the examples): its first step
            # takes the far-off fraction to the boundary without computing its error
            fraction = ipm._STEP_FRACTION
        else:
            obj = torch.bmm(x.transpose(1, 2), torch.add(p, prod[:, :n], alpha=0.5))
            if d.obj0 is not None:
                obj = obj + d.obj0.view(B, 1, 1)
            err = torch.maximum(ipm.amax(r * scale).view(B, 1, 1),
                                mu / obj.abs().clamp_(min=1.0))
            running = running & (err.view(B) > tol)          # NaN errors stop too
            worst = float(torch.where(running, err.view(B), -1.0).amax())
            if it == maxiter or worst < 0:
                break
            if worst < 0.5 * best:
                best, since = worst, 0
            else:
                since += 1
                if since >= defaults.IPM_STALL_ITERS:   # for the guarded kernel
                    break
            fraction = ipm.boundary_fraction(err)
        if it and worst <= polish_at:   # as in run_dense: finish on the active set where it passes
            polish_at = worst * 1e-2
            pol = dense._correct(d, dense._repolish(d, v, n, m, 0, pol, tol, base), running,
                                 tol, base)
            running = running & ~(pol.err <= tol)
            if not bool(running.any()):
                finished = True
                break
        W = z / s
        H = torch.baddbmm(Qr, Gt, G * W)
        H.diagonal(dim1=1, dim2=2).mul_(keep)
        L, info = torch.linalg.cholesky_ex(H)
        w = v[:, n:]
        t = torch.addcmul(z, W, rz, value=-1.0)       # predictor: rc = s z, v - a dv
        dv = _direction(G, Gt, L, W, rx, rz, t)
        dw = dv[:, n:]
        a = dense._step_to_boundary(w, dw, 1.0)
        mu_aff = torch.addcmul(w, a, dw, value=-1.0).view(B, 2, m, 1).prod(dim=1) \
            .sum(dim=1, keepdim=True)
        # Mehrotra's centering sigma = (mu_aff / mu)^3, target floored a decade below tol;
        # the corrector's rc = s z + ds dz - target, so t grows by (ds dz - target) / s
        ntarget = mu_aff.div_(mu).clamp_(0.0, 1.0).pow_(3).mul_(mu).mul_(-1.0 / m) \
            .clamp_(max=floor)
        dv = _direction(G, Gt, L, W, rx, rz,
                        torch.addcdiv(t, torch.addcmul(ntarget, dw[:, :m], dw[:, m:]), s))
        a = dense._step_to_boundary(w, dv[:, n:], fraction)
        step = running & (info == 0)        # a failed factorization: to the guarded kernel
        running = step
        v = torch.where(step.view(B, 1, 1), torch.addcmul(v, a, dv, value=-1.0), v)
        steps.append(step)

    iters = torch.stack(steps).sum(dim=0) if steps else \
        torch.zeros(B, dtype=torch.int64, device=Q.device)
    if not finished:     # (else pol is the polish of this v, corrected: nothing to redo)
        pol = dense._correct(d, dense._repolish(d, v, n, m, 0, pol, tol, base), running, tol,
                             base)
    none = torch.zeros_like(running)
    return dense._finish(d, dense._split(v, n, m, 0), pol, err.view(B), active, running, none,
                         none, iters, tol, want_factor)
