"""Forward solvers of a :class:`~optlayer.compiler.program.Program` for small batched problems.

The layer's forward only has to *find* the solution; gradients come from the
method's optimality map afterwards (``method=`` keeps its meaning). So the
forward uses Newton steps on the fixed-point residual ``F(z) = T(z) - z`` of
the method's own map ``T`` wherever they pay:

* :func:`fbn_solve` -- quadratic ``f`` with polyhedral sets / prox-able terms, or a
  prox without a closed-form Jacobian (``proj_grad``, ``prox_grad``): forward-backward
  Newton, semismooth Newton
  steps ``(J_prox M - I) d = -F`` with a line search on the forward-backward
  envelope (globally convergent; exact in one step on the right active pieces
  of a polyhedral set or prox).
* :func:`normal_newton_solve` -- a strictly convex quadratic ``f`` with a curved set or
  prox, or a non-quadratic ``f`` with a closed-form model
  (:func:`optlayer.compiler.smooth.objective_model`), and a prox with a closed-form
  Jacobian: semismooth Newton on the normal map ``y - prox(y) + eta grad f(prox(y))``
  (Armijo on its norm); what it leaves, :func:`fbn_solve` (quadratic ``f``) or
  :func:`prox_grad_solve` finishes.
* :func:`prox_grad_solve` -- other ``proj_grad`` / ``prox_grad`` problems:
  Newton steps ``z <- z - (dT/dz - I)^{-1} F(z)`` from the start, kept where they
  cut ``||F||`` by ``defaults.FP_NEWTON_DECREASE``; where they do not, FISTA
  (backtracking, adaptive restart) goes on and Newton is tried again later.
* :func:`mirror_solve` -- ``mirror_descent``: exponentiated gradient with the
  same Newton steps on the mirror-descent map, whose step comes from the
  curvature of ``f`` relative to the entropy at the start.
* :func:`newton_solve` -- ``stationary``: damped Newton with Armijo (one step
  for a quadratic ``f``).

Cost model: at the sizes of a layer (``N`` up to a few hundred, batch tens)
every torch call costs microseconds of overhead, so the loops minimise calls:
``grad f`` by plain autograd (``torch.func`` transforms cost several times
more per call here), Jacobians by one evaluation on ``N`` stacked copies of
the batch (:func:`jacobian`; :func:`value_and_jacobian` adds the value), and
for quadratic ``f`` matrix products with a
precomputed ``(Q, p)`` and the step from ``lambda_max(Q)``.
:func:`block_solve` is the matching dense solve of the implicit backward.
"""

from __future__ import annotations

import math

import torch

from optlayer import defaults
from optlayer.compiler.quadratic import bmv, lambda_max
from optlayer.linalg._common import functorch_active
from optlayer.status import Status

__all__ = ["SolveResult", "block_solve", "jacobian", "value_and_jacobian", "replicate",
           "fbn_solve", "prox_grad_solve", "normal_newton_solve", "md_value_and_jacobian",
           "mirror_solve", "newton_solve", "status_of", "relative_residual"]


class SolveResult:
    """Forward result: ``z (B, N)``, ``status`` int8 ``(B,)``, ``iterations`` (int),
    ``residual (B,)``, the step ``(B,)`` of the fixed-point map at the solution and,
    when the last Newton evaluation gave it, ``jacobian``: ``dT/dx (B, N, N)`` at the
    last iterate ``x`` with ``z = T(x)``, or for the stationary Newton solve with an
    objective model the Hessian ``∇²f (B, N, N)`` at ``z`` (else None); ``exact``: the
    Jacobian ``dT/dz`` is at ``z`` itself (no check needed)."""

    def __init__(self, z, status, iterations, residual, step, jacobian=None, exact=False):
        self.z, self.status, self.iterations = z, status, iterations
        self.residual, self.step, self.jacobian = residual, step, jacobian
        self.exact = exact


def _norm(t):
    """``‖t‖`` over the last dim (``Tensor.norm`` is a Python wrapper of this kernel)."""
    return torch.linalg.vector_norm(t, dim=-1)


def replicate(t, k: int):
    """``k`` stacked copies of a batched tensor (or a tuple/dict of them) along dim 0."""
    if t is None:
        return None
    if isinstance(t, dict):
        return {n: replicate(v, k) for n, v in t.items()}
    if isinstance(t, (tuple, list)):
        return type(t)(replicate(v, k) for v in t)
    return t.repeat(k, *([1] * (t.dim() - 1)))


def jacobian(G, z: torch.Tensor) -> torch.Tensor:
    """Per-item Jacobian ``J[b] = dG(z)[b] / dz[b]`` of a row-wise map ``G: (B, N) -> (B, N)``.

    ``G`` is evaluated once on ``N`` stacked copies of ``z`` (batch ``N B``; ``G``
    must replicate its own batched data with :func:`replicate`) and one
    backward pass with the basis vectors as cotangents returns every row.

    Args:
        G: ``G(Z, k)``, ``Z (k B, N)`` holding ``k`` copies of the batch.
        z: the point, ``(B, N)``.

    Returns:
        ``(B, N, N)``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
        >>> J = jacobian(lambda Z, k: Z @ A.T + Z ** 2, torch.tensor([[1.0, 2.0]]))
        >>> J[0]
        tensor([[4., 1.],
                [0., 7.]])
    """
    B, N = z.shape
    with torch.enable_grad():
        Z = z.detach().repeat(N, 1).requires_grad_(True)
        out = G(Z, N)
        E = torch.eye(N, dtype=z.dtype, device=z.device).repeat_interleave(B, dim=0)
        (rows,) = torch.autograd.grad(out, Z, E, allow_unused=True)
    if rows is None:
        return torch.zeros(B, N, N, dtype=z.dtype, device=z.device)
    return rows.reshape(N, B, N).transpose(0, 1)


def _replicas(P):
    """``k -> replicate(P, k)``, computed once per ``k`` (the Jacobians of one solve all
    use the same ``k = N``)."""
    cache: dict = {}

    def get(k):
        if k not in cache:
            cache[k] = replicate(P, k)
        return cache[k]

    return get


def status_of(res, tol, z):
    """Status per item from the final residual: OPTIMAL within 10 tol, OPTIMAL_INACCURATE
    within 1e3 tol, else MAX_ITER; NUMERICAL_ERROR where anything is non-finite."""
    s = torch.full(res.shape, int(Status.MAX_ITER), dtype=torch.int8, device=res.device)
    s = torch.where(res <= tol * 1e3, torch.full_like(s, int(Status.OPTIMAL_INACCURATE)), s)
    s = torch.where(res <= tol * 10, torch.zeros_like(s), s)
    return torch.where(torch.isfinite(z).all(-1) & torch.isfinite(res), s,
                       torch.full_like(s, int(Status.NUMERICAL_ERROR)))


def relative_residual(r, *terms):
    """``r / (1 + max_i ||terms_i||)`` per item: a residual relative to the terms it is a
    sum of, as :func:`optlayer.solvers.solve_qp` judges its KKT residuals (docs/qp.md).

    The first-order and Newton loops measure the gradient mapping ``G = (x - T(x)) /
    step = grad f(x) + u`` (``u`` from the prox or projection; ``G = grad f`` for
    ``stationary``) against its terms ``grad f(x)`` (``Qx`` and ``p`` apart for a
    quadratic ``f``) and ``u``, not against ``||x||``: on a problem that is unbounded
    below the iterates run off to infinity while ``G`` stays away from zero, and a
    residual relative to ``1 + ||x||`` would call them converged.

    Args:
        r: ``(B,)`` the residual's norm.
        terms: ``(B, N)`` tensors.
    """
    scale = _norm(terms[0])
    for t in terms[1:]:
        scale = torch.maximum(scale, _norm(t))
    return r / (1 + scale)


def value_and_jacobian(T, x, step):
    """``T(x)`` and the per-item Jacobian ``dT/dx (B, N, N)`` from one evaluation of ``T``
    on ``N + 1`` stacked copies of the batch (the first ``N`` give the rows as in
    :func:`jacobian`, the last one the value).

    Args:
        T: ``T(Z, step, k)`` on ``k`` stacked copies of the batch.
        x, step: the point ``(B, N)`` and step ``(B,)``.
    """
    B, N = x.shape
    with torch.enable_grad():
        Z = x.detach().repeat(N + 1, 1).requires_grad_(True)
        out = T(Z, step.repeat(N + 1), N + 1)
        # copy j < N takes the cotangent e_j (row j of the Jacobian), copy N none
        E = torch.eye(N + 1, N, dtype=x.dtype, device=x.device).repeat_interleave(B, dim=0)
        (rows,) = torch.autograd.grad(out, Z, E, allow_unused=True)
    Tx = out[N * B:].detach()
    if rows is None:
        return Tx, x.new_zeros(B, N, N)
    return Tx, rows[:N * B].reshape(N, B, N).transpose(0, 1)


class _Newton:
    """Newton steps on ``F = T(., step) - .`` with ``T(x)`` and ``dT/dx`` cached at the
    current point: a trial costs one :func:`value_and_jacobian` at the trial point, whose
    value and Jacobian serve the next trial (and the layer's backward) when it is kept."""

    def __init__(self, T, vj=None):
        # vj(x, step) -> (T(x), dT/dx): in closed form where given, else stacked autograd
        self.T = T
        self.vj = vj if vj is not None else (lambda x, step: value_and_jacobian(T, x, step))
        self.at = None  # (x, step, Tx, J) of the last evaluation

    def values(self, x, step):
        a = self.at
        if a is None or a[0] is not x or a[1] is not step:
            Tx, J = self.vj(x, step)
            self.at = a = (x, step, Tx, J)
        return a[2], a[3]

    def trial(self, x, step, pending):
        """One Newton step at ``x``, kept where it cuts ``||F||`` by ``FP_NEWTON_DECREASE``.

        Returns:
            ``(x_new, kept (B,), ||F|| (B,))``, ``||F||`` at the returned point.
        """
        N = x.shape[1]
        Tx, J = self.values(x, step)
        Fx = Tx - x
        eye = torch.eye(N, dtype=x.dtype, device=x.device)
        d, info = torch.linalg.solve_ex(J - eye, -Fx)
        xt = x + d
        Tt, Jt = self.vj(xt, step)
        Ft = Tt - xt
        nF, nFt = _norm(Fx), _norm(Ft)
        ok = pending & (info == 0) & torch.isfinite(nFt) & torch.isfinite(xt).all(-1) \
            & (nFt <= defaults.FP_NEWTON_DECREASE * nF)
        x_new = torch.where(ok[:, None], xt, x)
        self.at = (x_new, step, torch.where(ok[:, None], Tt, Tx),
                   torch.where(ok[:, None, None], Jt, J))
        return x_new, ok, torch.where(ok, nFt, nF)

    def finish(self, x, step):
        """``(T(x), dT/dx or None)``: the cached pair when it is at ``x`` and ``step``."""
        a = self.at
        if a is not None and a[0] is x and a[1] is step:
            return a[2], a[3]
        return self.T(x, step, 1), None


def _retry(ok, pending, it: int, gap: int) -> tuple[int, int]:
    """When to try Newton next: at once where every pending item kept its Newton step,
    else after ``gap`` first-order iterations; the gap doubles after a trial where no
    pending item gained (so items where Newton does not pay cost O(log) wasted trials)."""
    if bool((ok | ~pending).all()):
        return it, defaults.FP_NEWTON_EVERY
    return it + gap, gap if bool(ok.any()) else 2 * gap


def fbn_solve(prog, P, z, tol, maxiter, qp, *, cold=False) -> SolveResult:
    """Forward-backward Newton for ``min 1/2 z'Qz + p'z + g(z)`` (``g``: set indicators and
    prox-able terms of the plan), globalised on the forward-backward envelope.

    With ``eta < 1 / lambda_max(Q)``, ``T(x) = prox_{eta g}(x - eta (Qx + p))``,
    ``F = T(x) - x`` and ``M = I - eta Q`` (positive definite), the envelope

        phi(x) = f(x) + <grad f(x), F> + ||F||^2 / (2 eta) + g(T(x))

    is continuously differentiable with ``grad phi = -M F / eta``, its minimisers
    are the problem's, and the semismooth Newton direction ``(Jp M - I) d = -F``
    (``Jp`` the prox Jacobian at ``x - eta grad f``) is a descent direction
    (Patrinos, Stella & Bemporad 2014; Stella, Themelis & Patrinos 2017). Each
    iteration backtracks on ``phi`` (Armijo) along ``d``, or along ``F`` (the
    plain proximal-gradient step, also a descent direction) where the Newton
    system fails. For polyhedral ``g`` the full step is exact once the active
    pieces are right, so a handful of iterations reach rounding level.

    Returns:
        :class:`SolveResult` with ``z = T(x)`` and the step ``eta``.
    """
    Q, p = qp
    B, N = z.shape
    dt, dev = z.dtype, z.device
    eps = torch.finfo(dt).eps
    L = lambda_max(Q)
    eta = defaults.FBN_STEP_FRACTION / L
    eye = torch.eye(N, dtype=dt, device=dev)
    M = eye - eta[:, None, None] * Q
    prox, penalty, prox_jac = prog.prox_fn(P), prog.penalty_fn(P), prog.prox_jacobian_fn(P)
    reps = _replicas(P)
    # the line search's pick among the stacked trial steps that pass (below)
    least_phi = prog.polyhedral and bool(prog.plan.prox)

    def make_at(Q, p, eta, prox, penalty):
        eta_c, half_eta, p2, pn = eta[:, None], (0.5 / eta)[:, None], 2 * p, _norm(p)

        def at(x):
            """The state ``[x | y | T(x) | F | phi | res | scale]`` packed in one
            ``(B, 4N + 3)`` tensor: ``res = |F| / scale`` is the relative residual of
            ``G = -F / eta`` against its terms ``Qx``, ``p`` and the prox's part
            ``(y - T(x)) / eta``, times ``eta`` (:func:`relative_residual`'s scale)."""
            Qx = bmv(Q, x)
            g = Qx + p
            y = torch.addcmul(x, eta_c, g, value=-1.0)
            Tx = prox(y, eta)
            F = Tx - x
            # f(x) = x'(Qx + 2p) / 2 (up to its constant), <g, F> + |F|^2 / (2 eta)
            phi = torch.add(torch.linalg.vecdot(F, torch.addcmul(g, half_eta, F)),
                            torch.linalg.vecdot(x, Qx + p2), alpha=0.5) + penalty(Tx)
            scale = eta + torch.maximum(eta * torch.maximum(_norm(Qx), pn), _norm(Tx - y))
            return torch.cat([x, y, Tx, F, torch.stack([phi, _norm(F) / scale, scale], -1)],
                             dim=-1)

        return at

    at = make_at(Q, p, eta, prox, penalty)
    # the first K trial steps 1, 1/2, ..., 2^(1-K) of the line search in one evaluation on
    # K stacked copies of the batch (built at the first step that is not a full one)
    K = defaults.FBN_LS_BATCH
    taus = 0.5 ** torch.arange(K, dtype=dt, device=dev)
    at_k = None

    def pick(mask, a, b):  # per item: state a where mask, else b
        return torch.where(mask[:, None], a, b)

    if cold and not prog.plan.prox:
        # a cold start with sets only: from the minimiser of f on the affine hull of the
        # sets (-Q^-1 p without simplices) where Q is definite (often inside, or its
        # projection on the right pieces); with l1 / group terms the given start (zero)
        # is the better guess (sparse solutions)
        Lc, cinfo = torch.linalg.cholesky_ex(Q)
        z0 = -torch.cholesky_solve(p.unsqueeze(-1), Lc)
        hull = prog.simplex_rows(P)
        if hull is not None:  # x = z0 - Q^-1 A'y with A x = b
            A, b = hull
            QiA = torch.cholesky_solve(A.mT.expand(B, N, -1), Lc)
            Ls, sinfo = torch.linalg.cholesky_ex(A @ QiA)
            cinfo = cinfo | sinfo
            z0 = z0 - QiA @ torch.cholesky_solve((A @ z0).sub_(b.unsqueeze(-1)), Ls)
        z0 = z0.squeeze(-1)
        z = torch.where(((cinfo == 0) & torch.isfinite(z0).all(-1))[:, None], z0, z)
    PHI = 4 * N   # the column of phi in the state
    armijo = -1e-4 / eta   # c * slope = armijo * <MF, d>
    cur = at(z)
    it = 0
    rows = torch.arange(B, device=dev)
    # an item with no minimiser never converges: the ray of its steps is tested at
    # iteration FBN_UNBOUNDED_CHECK, at twice that, ..., and at maxiter
    unbounded = torch.zeros(B, dtype=torch.bool, device=dev)
    check, twice = defaults.FBN_UNBOUNDED_CHECK, None
    while True:
        x, y, Tx, F, tail = cur.split_with_sizes((N, N, N, N, 3), dim=1)
        phi, res, scale = tail.unbind(1)
        done = res <= tol if twice is None else (res <= tol) | unbounded
        every = bool(done.all())
        stop = it >= maxiter or every
        if stop or it == check:
            check *= 2
            # the items not converged, and those called converged whose point ran so far
            # out that their steps fell below its roundoff (a ray's end, not a minimiser)
            test = Tx.abs().amax(-1) > scale * (tol / eps)
            test = test if every else test | ~done
            test = test if twice is None else test & ~unbounded
            if bool(test.any()):
                if twice is None:   # the prox and penalty on two stacked copies
                    twice = (prog.prox_fn(P, 2), prog.penalty_fn(P, 2))
                unbounded = unbounded | (test & _recedes(Q, p, Tx, F, L, *twice))
                done = done | unbounded
                stop = stop or bool(done.all())
        if stop:
            break
        it += 1
        if prox_jac is not None:
            Jp = prox_jac(y, Tx, eta)
        else:
            Jp = jacobian(lambda Y, k: prog.prox(Y, replicate(eta, k), reps(k)), y)
        d, info = torch.linalg.solve_ex(torch.baddbmm(eye, Jp, M, alpha=-1), F)
        # the slope of phi along d is -<MF, d> / eta: a descent direction where <MF, d> > 0
        MF = bmv(M, F)
        dot = (MF * d).sum(-1)
        newton = (info == 0) & (dot > 0)  # a NaN product fails the comparison
        d = torch.where(newton[:, None], d, F)  # no host sync: the line search has one
        dot = torch.where(newton, dot, (MF * F).sum(-1))
        # Armijo on the envelope: phi(x + tau d) <= phi + c tau slope (+ a roundoff margin)
        bound, cslope = phi + 16 * eps * phi.abs(), dot * armijo
        first_ls = at_k is None
        if first_ls:
            trial = at(x + d)
            ok = trial[:, PHI] <= bound + cslope
            accepted = done | ok
            if bool(accepted.all()):  # the usual case: full steps
                cur = trial if not bool(done.any()) else pick(done, cur, trial)
                continue
            cur = pick(ok & ~done, trial, cur)  # x, d, bound stay those of this iteration
            at_k = make_at(Q.repeat(K, 1, 1), p.repeat(K, 1), eta.repeat(K),
                           prog.prox_fn(P, K), prog.penalty_fn(P, K))
        # K trial steps in one evaluation: 1, ..., 2^(1-K) (after a rejected full step
        # in this iteration: 1/2, ..., 2^-K)
        tk = taus * 0.5 if first_ls else taus
        trials = at_k((x + tk[:, None, None] * d).reshape(K * B, N)).reshape(K, B, -1)
        okk = ~accepted & (trials[:, :, PHI] <= bound + tk[:, None] * cslope) if first_ls \
            else trials[:, :, PHI] <= bound + tk[:, None] * cslope
        # the step that passes: with piecewise affine prox terms (l1, linf) and polyhedral
        # sets the one of least phi, else the largest. Iterations summed over seeds 0-19
        # at batch 32, least phi against largest: lasso 107 / 134, elastic_net 86 / 100
        # (0.82-0.86x and 0.90-0.92x the time, seeds 0-2); with sets alone it does not pay
        # (svm_dual by proj_grad 114 / 107, constrained_ls and water_filling even), nor
        # with a curved prox (group_lasso 193 / 163)
        first = torch.where(okk, trials[:, :, PHI], math.inf).argmin(0) if least_phi \
            else okk.to(torch.uint8).argmax(0)
        ok = okk.any(0)
        trial = trials[first, rows]
        if not first_ls:
            accepted = done
        new = pick(ok & ~accepted, trial, cur)
        accepted = accepted | ok
        if bool(accepted.all()):
            cur = new
            continue
        tau = torch.where(accepted, 1.0, 0.5 ** (K + 1 if first_ls else K)).to(dt)
        for _ in range(defaults.FBN_MAXLS - 1):
            trial = at(x + tau[:, None] * d)
            ok = ~accepted & (trial[:, PHI] <= bound + tau * cslope)
            new = pick(ok, trial, new)
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            tau = torch.where(accepted, tau, 0.5 * tau)
        if not bool(accepted.all()):  # keep the proximal-gradient point (phi decreases)
            new = pick(~accepted, at(Tx), new)
        cur = new
    Tx = cur[:, 2 * N:3 * N].contiguous()
    res = cur[:, PHI + 1]
    status = torch.where(unbounded, int(Status.UNBOUNDED), status_of(res, tol, Tx))
    return SolveResult(Tx, status.to(torch.int8), it, res, eta)


def _recedes(Q, p, x, F, L, prox2, penalty2):
    """Items whose objective ``1/2 z'Qz + p'z + g(z)`` decreases without bound along a ray
    ``x + t d`` (``x`` a point of the sets), for ``d`` along the last step ``F`` or along
    ``x`` (on a problem with no minimiser the steps line up with such a ray, and the
    iterates run off along it), to tolerance:

    * ``Q d ≈ 0``: ``|Q d| <= sqrt(eps) lambda_max(Q)`` (``L``), so ``f`` is affine on it;
    * ``d`` in the recession cone of the sets: ``x + T d`` is its own projection (the prox
      at step 0; ``prox2`` and ``penalty2`` take two stacked copies of the batch) for
      ``T = 1e6 (1 + |x|_inf)``, to ``1e-6 T``;
    * the slope ``(Qx + p)'d + g(d)`` is below ``-sqrt(eps)`` times its terms (the prox
      terms are weighted norms, their own recession functions: ``g(x + t d) <= g(x) +
      t g(d)``).

    Then the objective falls at least linearly along the ray: a certificate of
    unboundedness (exact for ``Q d = 0``). No optimal point passes, whatever ``d``: there
    the slope along every direction of the recession cone is at least 0."""
    eps, tiny = torch.finfo(x.dtype).eps, torch.finfo(x.dtype).tiny
    B, N = x.shape
    D = torch.stack([F, x])                     # both directions, (2, B, N)
    nD = _norm(D)
    d = D / nD.clamp_min(tiny).unsqueeze(-1)
    flat = _norm(bmv(Q, d)) <= eps ** 0.5 * L   # (Q broadcast over the two)
    T = 1e6 * (1 + x.abs().amax(-1))
    y = x + T[:, None] * d
    Tt = T.repeat(2)
    inside = (prox2(y.reshape(2 * B, N), torch.zeros_like(Tt)) - y.reshape(2 * B, N)) \
        .abs().amax(-1) <= 1e-6 * Tt
    g = bmv(Q, x) + p
    pen = penalty2(d.reshape(2 * B, N)).reshape(2, B)
    slope = (g * d).sum(-1) + pen
    ok = (nD > 0) & flat & inside.reshape(2, B) & \
        (slope < -eps ** 0.5 * (_norm(g) + pen.abs()))
    return ok[0] | ok[1]


def prox_grad_solve(prog, P, z, tol, maxiter, qp=None, model=None) -> SolveResult:
    """Accelerated proximal gradient (FISTA, adaptive restart) with Newton steps on
    ``T(z) = prox(z - eta grad f(z))`` (up to ``defaults.FP_NEWTON_MAX_SIZE`` unknowns);
    ``qp = (Q, p)`` for a quadratic ``f`` (exact step ``1 / lambda_max(Q)``, no
    backtracking; :func:`fbn_solve` is the better choice there up to that size), else
    backtracking on ``f``. With ``model`` (an
    :class:`~optlayer.compiler.smooth.ObjectiveModel` of ``f``) ``f`` and ``grad f``
    come from it, and where the prox has a closed-form Jacobian so does the Newton
    steps' ``dT/dz = J_prox (I - eta H)``; else from stacked autograd on ``T``.

    Args:
        prog: the Program (``prox``, ``f``, ``value_and_grad``, ``fixed_point``).
        P: parameters (detached), each ``(B, ...)``.
        z: initial point ``(B, N)``.
        tol, maxiter: stopping tolerance on the relative residual, iteration cap.
        qp: ``(Q, p)`` or None.
    """
    B, N = z.shape
    dt, dev = z.dtype, z.device
    eps = torch.finfo(dt).eps
    reps, qreps = _replicas(P), _replicas(qp)
    newton_ok = N <= defaults.FP_NEWTON_MAX_SIZE
    if qp is not None:
        Q, p = qp
        L = lambda_max(Q)
    else:
        L = torch.ones(B, dtype=dt, device=dev)

    proxf = prog.prox_fn(P)

    last_grad = [None]   # grad f at the value copy of the last stacked evaluation of T

    def T(zz, step, k):
        if k == 1:  # no graph needed: the specialised prox
            return proxf(zz - step[:, None] * prog.grad(zz, P, qp), step)
        # grad f kept for the residual of a Newton trial
        qk = None if qp is None else qreps(k)
        g = prog.grad(zz, reps(k), qk)
        last_grad[0] = g[(k - 1) * B:].detach()
        return prog.fixed_point(zz, reps(k), step, qk, g=g)

    jac = None if model is None or not newton_ok else prog.prox_jacobian_fn(P)

    def closed_form(x, step):   # (T(x), dT/dx) from the model and the prox's Jacobian
        _, g, H = model.value_grad_hess(x)
        y = torch.addcmul(x, step[:, None], g, value=-1.0)
        Tx = proxf(y, step)
        last_grad[0] = g
        Jp = jac(y, Tx, step)
        return Tx, Jp - step[:, None, None] * torch.bmm(Jp, H.expand_as(Jp))

    def residual(x, Tx, st, gx=None):
        # G = (x - T(x)) / step against its terms grad f(x) (Qx and p apart) and the prox's
        if gx is None:
            gx = bmv(Q, x) + p if qp is not None else \
                prog.grad(x, P, qp) if model is None else model.value_grad(x)[1]
        G = (x - Tx) / st[:, None]
        terms = (gx - p, p) if qp is not None else (gx,)
        return relative_residual(_norm(G), *terms, G - gx)

    step = 1 / L
    x = proxf(z, step)
    newton = _Newton(T, None if jac is None else closed_form)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    it, newton_at, gap = 0, defaults.FP_NEWTON_START, defaults.FP_NEWTON_EVERY
    y, t = x, torch.ones(B, dtype=dt, device=dev)
    safe = None    # the last y where grad f was finite (non-quadratic f)
    # a quadratic f: the items not converged at iteration FBN_UNBOUNDED_CHECK, twice it,
    # ..., and at maxiter are tested for a ray of no lower bound (as in fbn_solve)
    unbounded = torch.zeros(B, dtype=torch.bool, device=dev)
    check, twice = defaults.FBN_UNBOUNDED_CHECK, None
    while it < maxiter and not bool(done.all()):
        if it >= newton_at and newton_ok:
            it += 1
            pending = ~done
            x, ok, _ = newton.trial(x, step, pending)
            # grad f at the trial point: right where it was kept (ok), the only items
            # this residual can stop
            res = residual(x, newton.values(x, step)[0], step, last_grad[0])
            done = done | (ok & (res <= tol))
            y = torch.where(ok[:, None], x, y)
            t = torch.where(ok, torch.ones_like(t), t)
            if bool(done.all()):
                break
            # every pending item kept its step: Newton again at once, else
            # first-order iterations first (see _retry)
            newton_at, gap = _retry(ok, pending, it, gap)
            continue
        it += 1
        if qp is not None:
            gy = torch.matmul(Q, y.unsqueeze(-1)).squeeze(-1) + p
            xn = proxf(y - gy / L[:, None], 1 / L)
            d = xn - y
        else:
            fy, gy = prog.value_and_grad(y, P) if model is None else model.value_grad(y)
            off = ~torch.isfinite(gy).all(-1)
            if bool(off.any()):
                x, y, t, L, fy, gy = _back_off(prog, P, proxf, off, safe, x, y, t, L)
            safe = y
            for _ in range(60):
                xn = proxf(y - gy / L[:, None], 1 / L)
                d = xn - y
                fxn = prog.f(xn, P) if model is None else model.value(xn)
                bound = fy + (gy * d).sum(-1) + 0.5 * L * (d * d).sum(-1)
                ok = fxn <= bound + 16 * eps * fy.abs()
                if bool(ok.all()):
                    break
                L = torch.where(ok, L, 2 * L)
            step = 1 / L
        res = residual(y, xn, 1 / L, gy)     # at y, where xn is the prox-gradient point
        # gradient-based adaptive restart (O'Donoghue & Candes): no function values
        restart = ((y - xn) * (xn - x)).sum(-1) > 0
        tn = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
        yn = xn + ((t - 1) / tn)[:, None] * (xn - x)
        yn = torch.where(restart[:, None], xn, yn)
        tn = torch.where(restart, torch.ones_like(tn), tn)
        keep = done[:, None]
        testing = qp is not None and (it == check or it >= maxiter)
        last_step = xn - x if testing else None
        x, y = torch.where(keep, x, xn), torch.where(keep, y, yn)
        t = torch.where(done, t, tn)
        # a non-finite residual cannot recover (NUMERICAL_ERROR): stop the item at once
        done = done | (res <= tol) | ~torch.isfinite(res)
        if testing:
            check *= 2
            if not bool(done.all()):
                if twice is None:
                    twice = (prog.prox_fn(P, 2), prog.penalty_fn(P, 2))
                unbounded = unbounded | (~done & _recedes(Q, p, xn, last_step, L, *twice))
                done = done | unbounded
        if bool(done.all()):
            break
    Tx, J = newton.finish(x, step)
    res = residual(x, Tx, step)
    status = torch.where(unbounded, int(Status.UNBOUNDED), status_of(res, tol, Tx))
    return SolveResult(Tx, status.to(torch.int8), it, res, step, J)


def normal_newton_solve(prog, P, z, tol, maxiter, model, jac, qp=None) -> SolveResult:
    """Semismooth Newton on the normal map of ``min f(x) + g(x)`` (``g``: the plan's sets
    and prox-able terms) for an ``f`` with a closed-form derivative model, or a strictly
    convex quadratic ``f``, and a prox with a closed-form Jacobian.

    With ``x = prox_{eta g}(y)``, the normal map ``N(y) = y - x + eta grad f(x)`` (Robinson)
    vanishes exactly where ``x`` solves the problem (then ``y = x - eta grad f(x)``, so
    ``x = T(x)``). Its generalized Jacobian ``I - Jp + eta H Jp`` (``Jp`` the prox's at
    ``y``, ``H = grad^2 f(x)``) is nonsingular for convex ``f`` wherever ``H`` is definite
    on the range of ``Jp``, and the full Newton step is kept where it cuts ``|N|`` (Armijo
    on ``|N|^2``), else halved. Unlike forward-backward Newton on ``T(x) - x`` the
    unknown is ``y``, where a curved prox (a group near its threshold) is smooth on each
    side: on the square-root lasso, 5-7 iterations at batch 32 where FISTA with Newton
    steps takes 11. ``eta = c / lambda_max(H)`` at the start, ``c`` from
    ``defaults.NORMAL_NEWTON_STEP`` (a quadratic ``f``, ``qp = (Q, p)``, or a model).

    Args:
        model: ``f``'s closed-form model (:func:`optlayer.compiler.smooth.objective_model`),
            or None with ``qp``.
        jac: the prox's closed-form Jacobian (:meth:`Program.prox_jacobian_fn`).

    Items whose line search fails, or that are still running after
    ``defaults.NORMAL_NEWTON_MAXITER`` iterations, go from their last point to
    :func:`fbn_solve` (a quadratic ``f``: globally convergent, and it certifies
    unbounded items) or :func:`prox_grad_solve` (FISTA with backtracking), in the
    iterations left.

    It runs only where every item's curvature at the start is finite and not ~0 and, for
    a quadratic ``f``, ``Q`` is definite (no item lacks a minimiser); else the solver
    that finishes runs from the start.

    Returns:
        :class:`SolveResult` with ``z = x = prox(y)``, the step ``eta`` and ``dT/dx`` at
        ``z`` itself (``exact``); where another solver finished some items, its points,
        statuses and steps there, and no Jacobian.
    """
    B, N = z.shape
    dt, dev = z.dtype, z.device
    proxf = prog.prox_fn(P)
    eye = torch.eye(N, dtype=dt, device=dev)
    x = z
    if model is None:
        from optlayer.solvers.convex_models import QuadraticObjective

        model = QuadraticObjective(*qp)
    g, H = model.grad_hess(x)
    # only where every item has a finite curvature, not ~0 (a start on the boundary of an
    # atom's domain; a linear f), and a quadratic f is strictly convex (no item without a
    # minimiser): else forward-backward Newton (it certifies those) or FISTA
    usable = bool(torch.isfinite(H).all())
    if usable:
        lam = torch.linalg.eigvalsh(H)[..., -1]
        flat = lam <= torch.finfo(dt).eps ** 0.5 * (1 + H.abs().amax(dim=(-2, -1)))
        if qp is not None:
            flat = flat | (torch.linalg.cholesky_ex(H).info != 0)
        usable = not bool(flat.any())
    if not usable:
        with torch.inference_mode(False):
            return _finish(prog, P, z.clone(), tol, maxiter, qp, model)
    eta = defaults.NORMAL_NEWTON_STEP[qp is not None] / lam
    eta_c = eta[:, None]

    def y_of(x, g):   # the gradient step x - eta grad f(x)
        return torch.addcmul(x, eta_c, g, value=-1.0)

    def at(y):   # x = prox(y), grad f(x), its Hessian and the normal map at y
        x = proxf(y, eta)
        g, H = model.grad_hess(x)
        return x, g, H, torch.addcmul(y - x, eta_c, g)

    def residual(x, g):
        # G = (x - T(x)) / eta with T(x) = prox(x - eta g)
        Tx = proxf(y_of(x, g), eta)
        G = (x - Tx) / eta_c
        return Tx, relative_residual(_norm(G), g, G - g)

    y = y_of(x, g)     # x = prox(y) where x is already T(x)

    # |x - T(x)| <= |N| (the prox is nonexpansive and T(x) = prox(y - N)), so the residual
    # of G = (x - T(x)) / eta is at most |N| / (eta (1 + |grad f|)): below tol there, no
    # need to compute it until the end
    tol_eta = tol * eta

    x, g, H, Nr = at(y)
    nN = _norm(Nr)
    done = nN <= tol_eta * (1 + _norm(g))
    failed = torch.zeros_like(done)
    it = 0
    cap = min(maxiter, defaults.NORMAL_NEWTON_MAXITER)
    while it < cap:
        stop = done | failed
        if bool(stop.all()):
            break
        it += 1
        Jp = jac(y, x, eta)
        d, info = torch.linalg.solve_ex(torch.baddbmm(eye - Jp, eta[:, None, None] * H, Jp),
                                        Nr)
        yt = y - torch.where(stop[:, None], 0.0, d)    # the others stay put
        new = (yt, *at(yt))
        nt = _norm(new[-1])
        ok = (nt <= (1 - 1e-4) * nN).logical_and_(info == 0)
        if not bool((ok | stop).all()):   # halve the step where the full one fails
            new = _halve(at, (y, x, g, H, Nr, nN), new + (nt,), d, ok | stop, info == 0)
            failed = failed | ~new[1]
            new = new[0]
        else:
            new = new + (nt,)
        y, x, g, H, Nr, nN = new
        done = done | (nN <= tol_eta * (1 + _norm(g)))
    Tx, res = residual(x, g)
    done = done | (res <= tol)
    if bool(done.all()):
        # x itself (a prox's output: in the sets, with the prox's exact zeros), its
        # residual and dT/dx there: Jp at x - eta g(x) times (I - eta H(x))
        Jp = jac(y_of(x, g), Tx, eta)
        J = Jp - eta[:, None, None] * torch.bmm(Jp, H)
        return SolveResult(x, status_of(res, tol, x), it, res, eta, J, exact=True)
    with torch.inference_mode(False):   # (its line search may take autograd)
        rest = _finish(prog, P, x.clone(), tol, max(maxiter - it, 1), qp, model)
    z = torch.where(done[:, None], x, rest.z)
    # the backward's step must be the one its point's residual was measured with
    return SolveResult(z, torch.where(done, status_of(res, tol, x), rest.status),
                       it + rest.iterations, torch.where(done, res, rest.residual),
                       torch.where(done, eta, rest.step), None)


def _finish(prog, P, x, tol, maxiter, qp, model) -> SolveResult:
    """What :func:`normal_newton_solve` leaves: forward-backward Newton for a quadratic
    ``f`` (``qp``; it certifies items with no minimiser), else FISTA with Newton steps on
    the model."""
    if qp is not None:
        return fbn_solve(prog, P, x, tol, maxiter, qp)
    return prox_grad_solve(prog, P, x, tol, maxiter, None, model)


def _halve(at, cur, full, d, accepted, solved):
    """The normal-map line search past a rejected full step: ``tau = 1/2, 1/4, ...`` along
    ``d`` for the items not ``accepted``, up to ``defaults.NORMAL_NEWTON_MAXLS`` trials, each
    kept where it cuts ``|N|`` (Armijo on ``|N|^2``). Returns the new state ``(y, x, g, H,
    N, |N|)`` (``cur`` where no step was kept; ``full`` where the full step was) and the
    items that kept one (or needed none)."""
    def pick(mask, a, b):
        return tuple(torch.where(mask.view(-1, *([1] * (u.dim() - 1))), v, u)
                     for u, v in zip(b, a, strict=True))

    y, nN = cur[0], cur[-1]
    new = pick(accepted, full, cur)
    tau = torch.full_like(nN, 0.5)
    for _ in range(defaults.NORMAL_NEWTON_MAXLS - 1):
        yt = torch.addcmul(y, tau[:, None], d, value=-1.0)
        trial = (yt, *at(yt))
        nt = _norm(trial[-1])
        ok = ~accepted & solved & (nt <= (1 - 1e-4 * tau) * nN)
        new = pick(ok, trial + (nt,), new)
        accepted = accepted | ok
        if bool(accepted.all()):
            break
        tau = torch.where(accepted, tau, 0.5 * tau)
    return new, accepted


def _back_off(prog, P, proxf, off, safe, x, y, t, L):
    """The items ``off``, whose ``y`` lies where ``grad f`` is not finite (a step onto
    the boundary of an entropy term, where its value is finite), go back to ``safe``
    (the last ``y`` with a finite gradient; the projected cold start of
    :meth:`Program.init` before there is one: a warm start on the boundary) with half
    the step and the momentum restarted. Returns ``(x, y, t, L, f(y), grad f(y))``."""
    if safe is None:
        safe = proxf(prog.init(P, x.shape[0], x.dtype, x.device), 1 / L)
    col = off[:, None]
    x, y = torch.where(col, safe, x), torch.where(col, safe, y)
    t = torch.where(off, torch.ones_like(t), t)
    L = torch.where(off, 2 * L, L)
    fy, gy = prog.value_and_grad(y, P)
    return x, y, t, L, fy, gy


def md_value_and_jacobian(md, z, g, H, step):
    """The mirror-descent step on one vector simplex variable and its Jacobian from the
    gradient ``g`` and Hessian ``H`` of ``f`` at ``z``: with ``y = T(z) = v softmax(log z
    - step g)``, ``dT/dz = (diag(y) - y y' / v)(diag(1 / z) - step H)`` (``1 / z`` zero
    where ``log`` is clamped at the smallest normal number).

    Args:
        md: :meth:`~optlayer.compiler.program.Program.md_fn` of the parameters.
        z, g: ``(B, N)``; ``H``: ``(B, N, N)``; ``step``: ``(B,)``.

    Returns:
        ``(T(z), dT/dz)``.
    """
    tiny = torch.finfo(z.dtype).tiny
    y = md(torch.log(z.clamp_min(tiny)), g, step)
    S = torch.diag_embed(y) - y[:, :, None] * (y / y.sum(-1, keepdim=True))[:, None, :]
    inv = torch.where(z > tiny, z.clamp_min(tiny).reciprocal(), 0.0)
    return y, S * inv[:, None, :] - step[:, None, None] * (S @ H)


def mirror_solve(prog, P, z, tol, maxiter) -> SolveResult:
    """Exponentiated gradient with backtracking (relative smoothness in KL) and Newton
    steps on the mirror-descent map ``T(z) = normalize(z exp(-eta grad f(z)))``.

    The first step is ``eta = 1 / lambda_max(Z^1/2 H Z^1/2)`` at the initial point
    (``H`` the Hessian of ``f``, ``Z = diag(z)``: the curvature of ``f`` relative to the
    entropy there), capped at ``defaults.MD_STEP_MAX``; for ``f = <c, z> + tau
    sum z log z`` it is ``1 / tau``, where ``T`` is constant and one Newton step is exact.
    """
    B, N = z.shape
    dt = z.dtype
    tiny, eps = torch.finfo(dt).tiny, torch.finfo(dt).eps

    reps = _replicas(P)
    md = prog.md_fn(P)

    def T(zz, s, k):
        if k == 1:  # no graph needed: the specialised step
            return md(torch.log(zz.clamp_min(tiny)), prog.grad(zz, P), s)
        return prog.fixed_point(zz, reps(k), s)

    # zero entries (a warm start on the boundary) never move under T: start from
    # the point renormalized with every entry at least sqrt(eps) of the largest
    floor = eps ** 0.5 * z.abs().amax(-1, keepdim=True).clamp_min(tiny)
    z = md(torch.log(z.clamp_min(floor)), torch.zeros_like(z), torch.zeros_like(z[:, 0]))
    newton_ok = N <= defaults.FP_NEWTON_MAX_SIZE
    newton = _Newton(T)
    if newton_ok:
        g, H = value_and_jacobian(lambda Z, s, k: prog.grad(Z, reps(k)), z, z.new_ones(B))
        r = z.clamp_min(0).sqrt()
        R = r[:, :, None] * (0.5 * (H + H.transpose(-1, -2))) * r[:, None, :]
        # zero entries (a warm start) give 0 * inf: no curvature there
        R = torch.where(torch.isfinite(R), R, 0.0)
        lam = torch.linalg.eigvalsh(R)[:, -1]
        step = 1 / lam.clamp_min(1 / defaults.MD_STEP_MAX)
        step = torch.where(torch.isfinite(step), step, torch.ones_like(step))
        if len(prog.layout.names) == 1 and len(prog.layout.shapes[prog.layout.names[0]]) == 1:
            # one vector variable: T(z) and dT/dz at the start from the same g and H
            newton.at = (z, step, *md_value_and_jacobian(md, z, g, H, step))
    else:
        step = torch.ones(B, dtype=dt, device=z.device)
    done = torch.zeros(B, dtype=torch.bool, device=z.device)
    it, newton_at, gap = 0, defaults.FP_NEWTON_START, defaults.FP_NEWTON_EVERY
    fg = None
    while it < maxiter:
        if it >= newton_at and newton_ok:
            it += 1
            pending = ~done
            z, ok, nF = newton.trial(z, step, pending)
            # relative to 1 + ||z||: the iterates stay on the simplex (bounded), so they
            # cannot run off as those of relative_residual's unbounded problems do
            res = nF / (step * (1 + _norm(z)))
            done = done | (ok & (res <= tol))
            if bool(done.all()):
                break
            newton_at, gap = _retry(ok, pending, it, gap)
            fg = None
            continue
        it += 1
        fz, g = prog.value_and_grad(z, P) if fg is None else fg
        logz = torch.log(z.clamp_min(tiny))
        bound = fz + 16 * eps * fz.abs() - (g * z).sum(-1)
        for _ in range(60):
            zn = md(logz, g, step)
            fn = prog.f(zn, P)
            # f(z+) <= f(z) + <g, z+ - z> + KL(z+, z) / step (relative smoothness)
            ok = fn <= bound + (zn * (g + (torch.log(zn.clamp_min(tiny)) - logz) / step[:, None])
                                ).sum(-1)
            if bool(ok.all()):
                break
            step = torch.where(ok, step, 0.5 * step)
        res = _norm(zn - z) / (step * (1 + _norm(zn)))
        z = torch.where(done[:, None], z, zn)
        done = done | (res <= tol)
        if bool(done.all()):
            break
        fg = None
    Tz, J = newton.finish(z, step)
    res = _norm(Tz - z) / (step * (1 + _norm(z)))
    return SolveResult(Tz, status_of(res, tol, Tz), it, res, step, J)


def newton_solve(prog, P, z, tol, maxiter, qp=None, model=None) -> SolveResult:
    """Damped Newton with Armijo backtracking for smooth unconstrained problems; the
    Hessian is ``Q`` for a quadratic ``f`` (one step), the closed form of ``model`` (an
    :class:`~optlayer.compiler.smooth.ObjectiveModel` of ``f``, which then also gives
    ``f`` and its gradient), else :func:`jacobian` of ``grad f``.
    Converged when ``||grad f|| <= tol (1 + max(||Hz||, ||grad f - Hz||))``
    (:func:`relative_residual`: ``grad f = Qz + p`` for a quadratic ``f``; otherwise the
    terms of its linearisation, with the Hessian ``H`` of the step that led to ``z``; an
    absolute test before the first one). With ``model`` the result carries the Hessian
    at the returned point as its ``jacobian`` (the backward's system)."""
    B, N = z.shape
    dt, dev = z.dtype, z.device
    eye = torch.eye(N, dtype=dt, device=dev)
    eps = torch.finfo(dt).eps
    reps = _replicas(P)
    Hz = None        # with a model: the Hessian at z

    def residual(z, g, H):
        if H is None:
            return _norm(g)
        Hz = bmv(H, z)
        return relative_residual(_norm(g), Hz, g - Hz)

    it, best, stalled = 0, None, 0
    if qp is not None:
        H, f0, g = qp[0], None, bmv(qp[0], z) + qp[1]
    elif model is not None:
        H, (f0, g, Hz) = None, model.value_grad_hess(z)
    else:
        H, (f0, g) = None, prog.value_and_grad(z, P)
    res = residual(z, g, H)
    while it < maxiter:
        done = res <= tol
        if bool(done.all()):
            break
        # Newton converges quadratically; no progress for 3 steps near the solution =
        # roundoff floor (far from it, damped steps across the pieces of a piecewise
        # smooth gradient, e.g. huber, may take a while)
        worst = float(torch.where(done, 0, res).max())
        stalled = stalled + 1 if best is not None and worst > 0.5 * best else 0
        best = worst if best is None else min(best, worst)
        if stalled >= 3 and worst <= tol ** 0.5:
            break
        it += 1
        if model is not None:
            H = Hz
        elif qp is None:
            H = jacobian(lambda Z, k: prog.grad(Z, reps(k)), z)
            H = 0.5 * (H + H.transpose(-1, -2))
        Lc, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):
            shift = H.diagonal(dim1=-2, dim2=-1).abs().amax(-1) * 1e-8 + 1e-12
            Lc, info = torch.linalg.cholesky_ex(H + shift[:, None, None] * eye)
        d = -torch.cholesky_solve(g.unsqueeze(-1), Lc).squeeze(-1)
        if qp is not None:
            # quadratic f: the full step (also with the shift) decreases f by at least
            # half its slope, so Armijo holds at t = 1
            z = torch.where(done[:, None], z, z + d)
            g = bmv(qp[0], z) + qp[1]
            res = residual(z, g, H)
            continue
        t = torch.ones(B, dtype=dt, device=dev)
        slope = (g * d).sum(-1)
        for _ in range(30):
            zt = z + t[:, None] * d
            fz = prog.f(zt, P) if model is None else model.value(zt)
            # Armijo, with a roundoff margin (near the solution f changes below ulps)
            ok = (fz <= f0 + 1e-4 * t * slope + 16 * eps * f0.abs()) \
                | ~torch.isfinite(f0) | (slope >= 0)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        z = torch.where(done[:, None], z, z + t[:, None] * d)
        if model is None:
            f0, g = prog.value_and_grad(z, P)
        else:
            f0, g, Hz = model.value_grad_hess(z)
        res = residual(z, g, H)
    return SolveResult(z, status_of(res, tol, z), it, res, torch.ones_like(res), Hz)


def block_solve(B: int, N: int, blocks=None):
    """A linear solve for ``custom_root`` / ``custom_fixed_point`` on a ``(B, N)`` solution.

    The system is block diagonal (one ``N x N`` block per item).

    * In a plain first-order backward, ``blocks(x, args, kwargs)`` (when given) is
      called with the point of this solve (:func:`optlayer.implicit.solve_point`:
      the call's own saved solution and arguments, so another call's forward cannot
      interfere) and returns ``(J, verify)``: the Jacobian ``J (B, N, N)`` of the
      optimality map (closed form, or :func:`jacobian` in one stacked evaluation),
      or None. The system matrix is ``J'``; with ``verify`` (a ``J`` evaluated near,
      not at, the solution) the solve uses ``J'`` or ``J``, whichever agrees with
      one product of ``matvec`` with a fixed vector of distinct weights, if any.
    * Otherwise (or when the check fails), for small ``N`` the blocks are
      materialised with ``N`` products (column ``j`` of every block at once, from
      the basis vector ``e_j`` in every item; differentiable, so second-order
      derivatives stay exact), and for larger ``N`` by the dense solve of
      :mod:`optlayer.linalg` on the regrouped blocks.
    In every case one batched LU solves all blocks.
    """
    from optlayer.implicit import solve_point
    from optlayer.linalg import solve_lu

    def solve(matvec, b, **options):
        if b.ndim != 1 or b.shape[0] != B * N:  # pragma: no cover - not our layout
            return solve_lu(matvec, b, **options)
        A = None
        point = solve_point() if blocks is not None else None
        if point is not None and not torch.is_grad_enabled() and not functorch_active():
            J, verify = blocks(*point)
            if J is not None and J.dtype == b.dtype and not verify:
                A = J.transpose(-1, -2)
            elif J is not None and J.dtype == b.dtype:
                # one product with a vector of distinct weights (not a basis vector: a
                # matrix that shares a column with the right one must not pass)
                w = torch.arange(1, N + 1, dtype=b.dtype, device=b.device).sqrt()
                Aw = matvec(w.expand(B, N).reshape(-1)).reshape(B, N)
                tol = 100 * torch.finfo(b.dtype).eps ** 0.5 * (Aw.abs().amax() + w[-1])
                for cand in (J.transpose(-1, -2), J):
                    if bool(((cand @ w - Aw).abs() <= tol).all()):
                        A = cand
                        break
        if A is None and N > defaults.IMPLICIT_LOOP_MAX:
            x = solve_lu(lambda V: matvec(V.reshape(-1)).reshape(B, N), b.reshape(B, N),
                         **options)
            return x.reshape(-1)
        if A is None:
            eye = torch.eye(N, dtype=b.dtype, device=b.device)
            cols = [matvec(eye[j].expand(B, N).reshape(-1)).reshape(B, N) for j in range(N)]
            A = torch.stack(cols, dim=-1)
        return solve_lu(A, b.reshape(B, N), **options).reshape(-1)

    return solve
