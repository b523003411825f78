"""Euclidean and KL projections onto convex sets, batched and differentiable.

Every entry projects over the trailing dimension(s) of its input (the last one
for vectors, the last two for matrices) and broadcasts over any leading batch
dimensions. Set parameters (``radius``, ``value``, ``a``, ``b``, ...) may be
Python numbers or tensors that broadcast against the batch. dtype and device
follow the inputs.

Euclidean projections solve ``argmin_{z in C} 0.5 * ||z - x||^2``; the KL ones
(``kl_*``) solve ``argmin_{z in C} KL(z, exp(x))``.

Closed forms are differentiated by autograd, with each formula written so its
derivative is the exact (generalised) Jacobian of the projection and finite
at kinks. The iterative entries (``polyhedron``, ``transport``, ``birkhoff``,
``kl_transport``, ``kl_birkhoff``) solve to tolerance without a graph and are
differentiated by implicit differentiation of their optimality conditions
(:func:`optlayer.implicit.custom_root`), never by unrolling.

Example:
    >>> import torch
    >>> from optlayer import projections
    >>> projections.simplex(torch.tensor([0.5, 1.5, -1.0]))
    tensor([0., 1., 0.])
"""

from __future__ import annotations

import torch

from optlayer.linalg._common import physical

__all__ = [
    "nonneg",
    "box",
    "hypercube",
    "hyperplane",
    "halfspace",
    "affine_set",
    "simplex",
    "sparse_simplex",
    "l1_ball",
    "l1_sphere",
    "l2_ball",
    "l2_sphere",
    "linf_ball",
    "box_section",
    "soc",
    "psd",
    "kl_simplex",
]


def _as(value, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor of ``like``'s dtype and device (numbers broadcast)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _safe_norm(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """Euclidean norm whose gradient at zero is zero instead of NaN."""
    sq = (x * x).sum(dim=dim, keepdim=keepdim)
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), 0.0)


# --------------------------------------------------------------------------
# Orthants, boxes, half-spaces and affine sets
# --------------------------------------------------------------------------


def nonneg(x: torch.Tensor) -> torch.Tensor:
    """Projection onto the nonnegative orthant: ``max(x, 0)``.

    Example:
        >>> nonneg(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """
    return torch.relu(x)


def box(x: torch.Tensor, lower, upper) -> torch.Tensor:
    """Projection onto ``{z : lower <= z <= upper}``: ``min(max(x, lower), upper)``.

    Args:
        x: points, shape ``(..., n)``.
        lower, upper: bounds broadcasting against ``x`` (``lower <= upper``).
    """
    return torch.minimum(torch.maximum(x, _as(lower, x)), _as(upper, x))


def hypercube(x: torch.Tensor, scale=1.0) -> torch.Tensor:
    """Projection onto ``[0, scale]^n``."""
    return box(x, 0.0, scale)


def linf_ball(x: torch.Tensor, radius=1.0) -> torch.Tensor:
    """Projection onto ``{z : ||z||_inf <= radius}``: clipping to ``[-radius, radius]``."""
    r = _as(radius, x)
    if r.dim() > 0:
        r = r.unsqueeze(-1)
    return box(x, -r, r)


def hyperplane(x: torch.Tensor, a: torch.Tensor, b) -> torch.Tensor:
    """Projection onto ``{z : <a, z> = b}``: ``x - (<a, x> - b) / ||a||^2 * a``.

    Args:
        x: shape ``(..., n)``.
        a: normal vector, shape ``(..., n)``, nonzero.
        b: offset, scalar or shape ``(...)``.
    """
    gap = (a * x).sum(-1) - _as(b, x)
    return x - (gap / (a * a).sum(-1)).unsqueeze(-1) * a


def halfspace(x: torch.Tensor, a: torch.Tensor, b) -> torch.Tensor:
    """Projection onto ``{z : <a, z> <= b}``: ``x - max(<a, x> - b, 0) / ||a||^2 * a``."""
    gap = torch.relu((a * x).sum(-1) - _as(b, x))
    return x - (gap / (a * a).sum(-1)).unsqueeze(-1) * a


def affine_set(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Projection onto ``{z : A z = b}``: ``x - A^T (A A^T)^{-1} (A x - b)``.

    Args:
        x: shape ``(..., n)``.
        A: shape ``(..., m, n)`` with full row rank ``m <= n``.
        b: shape ``(..., m)``.

    The system with ``A A^T`` is solved by a Cholesky factorization.
    """
    resid = (A @ x.unsqueeze(-1)).squeeze(-1) - b
    gram = A @ A.transpose(-1, -2)
    chol = torch.linalg.cholesky(gram)
    lam = torch.cholesky_solve(resid.unsqueeze(-1), chol)
    return x - (A.transpose(-1, -2) @ lam).squeeze(-1)


# --------------------------------------------------------------------------
# Simplex family
# --------------------------------------------------------------------------


def _simplex_support(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the support of the simplex projection (no gradient).

    With ``u`` sorted decreasingly, the support is the first ``rho`` entries
    where ``rho = max{j : u_j - (sum_{i<=j} u_i - value) / j > 0}``; an entry
    ``x_i`` is in the support iff ``x_i > tau``.
    """
    with torch.no_grad():
        u, _ = torch.sort(x, dim=-1, descending=True)
        css = torch.cumsum(u, dim=-1) - value.unsqueeze(-1)
        ks = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        cond = u - css / ks > 0
        rho = cond.sum(-1, keepdim=True).clamp_min(1)
        tau = torch.gather(css, -1, rho - 1) / rho.to(x.dtype)
        return x > tau


def _tau_on_support(x: torch.Tensor, weight: torch.Tensor, support: torch.Tensor, value):
    """``tau`` solving ``sum_{i in S} (x_i - tau) = value`` on a fixed support ``S``.

    Written with the support as a constant mask, so that autograd gives the
    exact Jacobian of the projection: ``dz/dx = diag(s) - s s^T / |S|``.
    """
    s = support.to(x.dtype)
    count = s.sum(-1).clamp_min(1.0)
    return (((x * s).sum(-1) - value) / count).unsqueeze(-1), s * weight


def simplex(x: torch.Tensor, value=1.0) -> torch.Tensor:
    """Projection onto ``{z >= 0 : sum(z) = value}`` (``value > 0``), a.k.a. sparsemax.

    ``z = max(x - tau, 0)`` with ``tau`` such that ``sum(z) = value``, found by
    sorting (O(n log n)); the Jacobian is ``diag(s) - s s^T / |S|`` on the
    support ``S`` (``s`` its indicator), and ``dz/dvalue = s / |S|``.

    Example:
        >>> simplex(torch.tensor([0.2, 0.4]))
        tensor([0.4000, 0.6000])
    """
    v = _as(value, x).expand(x.shape[:-1])
    support = _simplex_support(x, v)
    tau, s = _tau_on_support(x, 1.0, support, v)
    return (x - tau) * s


def sparse_simplex(x: torch.Tensor, value=1.0, k: int = 1) -> torch.Tensor:
    """Projection onto ``{z >= 0 : sum(z) = value, ||z||_0 <= k}``.

    The set is not convex; the projection keeps the ``k`` largest entries and
    projects them onto the simplex (Kyrillidis et al. 2013), which is exact.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"sparse_simplex: k must be a positive integer; got {k!r}")
    k = min(k, x.shape[-1])
    top, idx = torch.topk(x, k, dim=-1)
    proj = simplex(top, value)
    return torch.zeros_like(x).scatter(-1, idx, proj)


def l1_ball(x: torch.Tensor, radius=1.0) -> torch.Tensor:
    """Projection onto ``{z : ||z||_1 <= radius}``.

    ``x`` itself when inside, else ``sign(x) * simplex(|x|, radius)``.
    """
    r = _as(radius, x).expand(x.shape[:-1])
    inside = (x.abs().sum(-1) <= r).unsqueeze(-1)
    return torch.where(inside, x, torch.sign(x) * simplex(x.abs(), r))


def l1_sphere(x: torch.Tensor, radius=1.0) -> torch.Tensor:
    """Projection onto ``{z : ||z||_1 = radius}``: ``sign(x) * simplex(|x|, radius)``.

    The set is not convex; at points with ties the projection is one of the
    nearest points. At ``x = 0`` it returns ``radius * e_1``-like points chosen
    by the simplex projection of zeros (all coordinates ``radius / n``).
    """
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return sign * simplex(x.abs(), radius)


def l2_ball(x: torch.Tensor, radius=1.0) -> torch.Tensor:
    """Projection onto ``{z : ||z||_2 <= radius}``: ``x * min(1, radius / ||x||)``."""
    r = _as(radius, x)
    norm = _safe_norm(x, keepdim=True)
    if r.dim() > 0:
        r = r.unsqueeze(-1)
    scale = torch.where(norm > r, r / torch.where(norm > r, norm, 1.0), 1.0)
    return x * scale


def l2_sphere(x: torch.Tensor, radius=1.0) -> torch.Tensor:
    """Projection onto ``{z : ||z||_2 = radius}``: ``radius * x / ||x||``.

    At ``x = 0`` every point of the sphere is nearest; ``radius * e_1`` is
    returned (with zero gradient).
    """
    r = _as(radius, x)
    if r.dim() > 0:
        r = r.unsqueeze(-1)
    norm = _safe_norm(x, keepdim=True)
    e1 = torch.zeros_like(x)
    e1[..., 0] = 1.0
    return r * torch.where(norm > 0, x / torch.where(norm > 0, norm, 1.0), e1)


def box_section(x: torch.Tensor, alpha, lower, upper, value) -> torch.Tensor:
    """Projection onto ``{z : lower <= z <= upper, <alpha, z> = value}`` (``alpha > 0``).

    ``z = clip(x - tau * alpha, lower, upper)`` where the scalar ``tau`` solves
    ``<alpha, z(tau)> = value`` (decreasing in ``tau``). ``tau`` is bracketed
    and found by bisection without a graph, then recomputed in closed form on
    the set ``F`` of free coordinates,
    ``tau = (sum_F alpha_i x_i + sum_{i not in F} alpha_i c_i - value) / sum_F alpha_i^2``
    (``c_i`` the bound coordinate ``i`` sits at), which makes the autograd
    Jacobian exact in every argument.

    Raises:
        ValueError: if ``alpha`` has a non-positive entry.
    """
    alpha = _as(alpha, x).expand_as(x)
    lo = _as(lower, x).expand_as(x)
    hi = _as(upper, x).expand_as(x)
    v = _as(value, x).expand(x.shape[:-1])
    with torch.no_grad():
        if bool((physical(alpha) <= 0).any()):
            raise ValueError("box_section: every entry of alpha must be positive")
        # Every coordinate is at its upper bound for t <= t_lo and at its
        # lower bound for t >= t_hi.
        t_hi = ((x - lo) / alpha).amax(-1)
        t_lo = ((x - hi) / alpha).amin(-1)
        for _ in range(_bisection_steps(x.dtype)):
            mid = 0.5 * (t_lo + t_hi)
            z = torch.minimum(torch.maximum(x - mid.unsqueeze(-1) * alpha, lo), hi)
            too_big = (alpha * z).sum(-1) > v
            t_lo = torch.where(too_big, mid, t_lo)
            t_hi = torch.where(too_big, t_hi, mid)
        tau0 = 0.5 * (t_lo + t_hi)
        raw = x - tau0.unsqueeze(-1) * alpha
        free = (raw > lo) & (raw < hi)
        at_lower = raw <= lo
    bound = torch.where(at_lower, lo, hi)
    f = free.to(x.dtype)
    num = (alpha * x * f).sum(-1) + (alpha * bound * (1 - f)).sum(-1) - v
    den = (alpha * alpha * f).sum(-1)
    has_free = den > 0
    tau = torch.where(has_free, num / torch.where(has_free, den, 1.0), tau0)
    return torch.where(free, x - tau.unsqueeze(-1) * alpha, bound)


def _bisection_steps(dtype: torch.dtype) -> int:
    return 120 if dtype == torch.float64 else 60


def kl_simplex(x: torch.Tensor, value=1.0) -> torch.Tensor:
    """KL projection of ``exp(x)`` onto ``{z >= 0 : sum(z) = value}``: ``value * softmax(x)``."""
    v = _as(value, x)
    if v.dim() > 0:
        v = v.unsqueeze(-1)
    return v * torch.softmax(x, dim=-1)


# --------------------------------------------------------------------------
# Cones
# --------------------------------------------------------------------------


def soc(x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection onto the second-order cone ``{(z, s) : ||z||_2 <= s}``.

    Returns ``(x, t)`` when inside, ``(0, 0)`` when ``||x|| <= -t``, and
    ``((||x|| + t) / 2) * (x / ||x||, 1)`` otherwise.

    Args:
        x: shape ``(..., n)``.
        t: shape ``(...)``.

    Returns:
        The pair ``(z, s)``.
    """
    t = _as(t, x).expand(x.shape[:-1])
    norm = _safe_norm(x)
    inside = norm <= t
    polar = norm <= -t
    coef = 0.5 * (norm + t)
    unit = x / torch.where(norm > 0, norm, 1.0).unsqueeze(-1)
    outside = torch.where(polar.unsqueeze(-1), torch.zeros_like(x), coef.unsqueeze(-1) * unit)
    z = torch.where(inside.unsqueeze(-1), x, outside)
    s = torch.where(inside, t, torch.where(polar, torch.zeros_like(t), coef))
    return z, s


class _PSDProjection(torch.autograd.Function):
    """Projection onto the PSD cone with a backward that is finite everywhere.

    Forward: ``S = V diag(max(w, 0)) V^T`` for the eigendecomposition of the
    symmetric part. Backward (Daleckii-Krein): ``V (Gamma o (V^T G V)) V^T``
    with ``Gamma_ij = (f(w_i) - f(w_j)) / (w_i - w_j)`` and ``f'(w_i)`` on
    (near-)ties, ``f = max(., 0)``; it never divides by an eigenvalue gap.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(sym):
        w, v = torch.linalg.eigh(sym)
        return (v * torch.relu(w).unsqueeze(-2)) @ v.transpose(-1, -2), w, v

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, w, v = output
        ctx.save_for_backward(w, v)
        ctx.mark_non_differentiable(w, v)

    @staticmethod
    def backward(ctx, grad, _gw, _gv):
        w, v = ctx.saved_tensors
        return _psd_pushforward(w, v, grad, transpose=True)

    @staticmethod
    def jvp(ctx, tangent):
        w, v = ctx.saved_tensors
        return _psd_pushforward(w, v, tangent, transpose=False), None, None


def _psd_pushforward(w, v, g, transpose):
    fw = torch.relu(w)
    dw = w.unsqueeze(-1) - w.unsqueeze(-2)
    df = fw.unsqueeze(-1) - fw.unsqueeze(-2)
    scale = w.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
    tie = dw.abs() <= 1e3 * torch.finfo(w.dtype).eps * scale
    deriv = (w > 0).to(w.dtype)
    avg = 0.5 * (deriv.unsqueeze(-1) + deriv.unsqueeze(-2))
    gamma = torch.where(tie, avg, df / torch.where(tie, 1.0, dw))
    g = 0.5 * (g + g.transpose(-1, -2))
    inner = v.transpose(-1, -2) @ g @ v
    return v @ (gamma * inner) @ v.transpose(-1, -2)


def psd(S: torch.Tensor) -> torch.Tensor:
    """Projection onto the positive semidefinite cone (Frobenius norm).

    The symmetric part ``(S + S^T) / 2`` is projected by clipping its negative
    eigenvalues to zero. Gradients are finite also at repeated eigenvalues.

    Args:
        S: square matrices, shape ``(..., n, n)``.
    """
    if S.dim() < 2 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"psd: expected square matrices (..., n, n); got shape {tuple(S.shape)}")
    out, _, _ = _PSDProjection.apply(0.5 * (S + S.transpose(-1, -2)))
    return out

