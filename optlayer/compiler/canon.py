"""KKT canonicalisation: a rewritten problem -> QP data, or smooth functions for a convex
interior point.

Both forms start from the :class:`~optlayer.compiler.epigraph.Rewrite` of the
problem (every constraint a block of rows ``g <= 0`` / ``g == 0``, non-smooth
atoms replaced by epigraph variables).

**QP** (:func:`canonicalize_qp`). For a quadratic objective
``f(z) = 1/2 z'Qz + p'z + c`` and affine rows ``g(z) = Gz - h <= 0``,
``a(z) = Az - b == 0`` (all torch functions of the parameters), the data are the
coefficients of the rows and of the objective's quadratic forms
(:mod:`optlayer.compiler.coefficients`: one pass over the IR, differentiable in the
parameters). Where those do not cover an expression (or
``defaults.READOFF_COEFFICIENTS`` is off) the data are recovered exactly from
evaluations of the lowered IR:

* ``p = grad f(0)``, ``Q[:, j] = grad f(e_j) - grad f(0)``;
* ``h = -g(0)``, ``G[:, j] = g(e_j) - g(0)`` (same for ``A, b``).

The ``N + 1`` points are evaluated in one batched call on stacked copies of the
parameters, whose result keeps the autograd graph to the parameters, so the QP
solver's differentiable backward reaches them; where the copies would exceed
``defaults.READOFF_MAX_ELEMENTS`` the points run in chunks, each checkpointed
(:class:`_ReadOff`: memory bounded by a chunk, the copies made again in the backward).

**General smooth convex** (:func:`solve_convex`). ``f``, ``g`` (every
inequality row, cone rows in their smooth form ``sum_squares(u) - s^2``) and
the affine equality rows ``h`` are lowered to batched torch functions of
``(z, params)``. The forward pass is
:class:`optlayer.solvers.ConvexInteriorPoint` (no graph; ``A, b`` of the
equalities read off as above), or, for a quadratic objective under one quadratic
row, Newton on that row's multiplier
(:func:`optlayer.solvers.secular.solve_one_quadratic_row`); gradients come from
``custom_root`` on the KKT map of :func:`optlayer.conditions.kkt`,
``F(z, nu, lam) = (grad f + dg' lam + dh' nu, h(z), lam * g(z))``,
differentiated in the parameters (valid under strict complementarity).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from optlayer import defaults
from optlayer.compiler.param_affine import AffineData
from optlayer.compiler.program import Program
from optlayer.compiler.quadratic import degree
from optlayer.compiler.smooth import (
    Rows,
    bare_row,
    chunk_points,
    objective_model,
    repeat,
    smooth_model,
    smooth_parts,
    spec_parts,
    taylor,
)
from optlayer.linalg._common import functorch_active
from optlayer.solvers.convex_models import outside_inference_mode
from optlayer.status import Status
from optlayer.tree import tree_map

__all__ = ["canonicalize_qp", "row_functions", "solve_convex"]


class _ReadOff:
    """Evaluations at every item's ``N + 1`` read-off points (``0``, then the unit vectors
    ``e_j``) on stacked copies of the parameters ``P``: all points at once where the
    copies hold at most ``defaults.READOFF_MAX_ELEMENTS`` parameter elements (made once
    per call, shared by the functions read off), else in chunks of as many points as
    fit (``P`` itself for one point: no copy), each checkpointed where the parameters
    need gradients (its copies are made again in the backward instead of kept: the
    graph of all of them is what the chunks bound)."""

    def __init__(self, P, B, N, dtype, device) -> None:
        self.P, self.B, self.N = P, B, N
        self.dtype, self.device = dtype, device
        self.chunks = None   # the points and copies, made at the first call

    def chunk_sizes(self) -> list:
        """The number of points in each chunk."""
        if self.chunks is None:
            self._points()
        return [k for _, k in self.chunks]

    def _points(self):
        B, N, P = self.B, self.N, self.P
        k = chunk_points(P, N + 1)
        basis = torch.cat([torch.zeros(1, N, dtype=self.dtype, device=self.device),
                           torch.eye(N, dtype=self.dtype, device=self.device)])
        self.chunks = []
        for start in range(0, N + 1, k):
            pts = basis[start:start + k]
            kk = pts.shape[0]
            self.chunks.append((pts.unsqueeze(0).expand(B, kk, N).reshape(B * kk, N), kk))
        self.whole = repeat(P, N + 1) if len(self.chunks) == 1 else None

    def __call__(self, fn):
        """``fn(Z, PP)`` (``(B * k, ...)`` values) at the points, as ``(B, N + 1, -1)``."""
        B = self.B
        if self.chunks is None:
            self._points()
        if self.whole is not None:
            return fn(self.chunks[0][0], self.whole).reshape(B, self.N + 1, -1)
        names = list(self.P)

        def chunk(Z, k, *vals):
            PP = dict(zip(names, vals, strict=True))
            return fn(Z, PP if k == 1 else repeat(PP, k)).reshape(B, k, -1)

        # (not under a torch.func transform, whose levels checkpoint's recomputation lacks)
        graph = torch.is_grad_enabled() and any(t.requires_grad for t in self.P.values()) \
            and not functorch_active()
        vals = self.P.values()
        return torch.cat([checkpoint(chunk, Z, k, *vals, use_reentrant=False) if graph
                          else chunk(Z, k, *vals) for Z, k in self.chunks], 1)


def _affine(values, B, N):
    v = values.reshape(B, N + 1, -1)
    return v[:, 1:, :].transpose(1, 2) - v[:, :1, :].transpose(1, 2), v[:, 0, :]


def row_functions(program: Program):
    """``(g, h)``: the inequality and equality rows as functions ``(z, P) -> (B, rows)``
    (falsy when there are no such rows)."""
    return Rows(program, program.plan.ineq), Rows(program, program.plan.eq)


def _affine_data(rows: Rows, read: _ReadOff):
    """``(M, m0, sizes)`` with ``rows(z) = M z - m0``: from the rows' coefficients
    (:class:`~optlayer.compiler.coefficients.AffineMaps`) where their atoms have tangent
    rules, else read off at the ``N + 1`` points."""
    if not rows:
        return None, None, []
    cJ = rows.coefficients(read.P, read.B, torch.zeros((), dtype=read.dtype,
                                                        device=read.device))
    if cJ is not None:
        return cJ[1], -cJ[0], [int(math.prod(e.shape)) for e in rows.exprs]
    sizes = []

    def values(Z, PP):
        vals = rows.blocks(Z, PP)
        sizes[:] = [v.shape[-1] for v in vals]
        return torch.cat(vals, dim=-1)

    M, m0 = _affine(read(values), read.B, read.N)
    return M, -m0, sizes


def canonicalize_qp(program: Program, P, B: int, dtype, device):
    """The QP data of a KKT-classified problem at parameters ``P`` (batch ``B``): one
    matrix product where they are affine in the parameters
    (:class:`~optlayer.compiler.param_affine.AffineData`), else from the coefficients
    of the objective and the rows, or read off at points.

    Returns:
        ``(Q, p, G, h, A, b, ineq_sizes, eq_sizes)``; ``G, h`` / ``A, b`` are
        None when there are no such constraints; the sizes give the rows of
        each constraint in order (for the duals).
    """
    affine = _cached(program, "param_affine",
                     lambda: AffineData(program, functools.partial(_qp_data, program)))
    if affine.ok:
        return affine(P, B, dtype, device)
    return _qp_data(program, P, B, dtype, device)


def _qp_data(program: Program, P, B: int, dtype, device):
    """:func:`canonicalize_qp` by the coefficients or the read-off."""
    N = program.layout.size
    graph = any(t.requires_grad for t in P.values())

    def grad(Z, PP):
        with torch.enable_grad():
            Zr = Z.clone().requires_grad_(True)
            return torch.autograd.grad(program.f(Zr, PP).sum(), Zr, create_graph=graph)[0]

    read = _ReadOff(P, B, N, dtype, device)
    model = program.quadratic_model()
    if defaults.READOFF_COEFFICIENTS and model.ok:
        Q, p = model(P, B, torch.zeros((), dtype=dtype, device=device))
    else:
        Q, p = _affine(read(grad), B, N)
        Q = 0.5 * (Q + Q.transpose(-1, -2))
    gfun, hfun = _cached(program, "rows", lambda: row_functions(program))
    G, h, isz = _affine_data(gfun, read)
    A, b, esz = _affine_data(hfun, read)
    return Q, p, G, h, A, b, isz, esz


class ConvexSolution:
    """Result of :func:`solve_convex`: ``z (B, N)`` (differentiable), the duals of the
    rows ``ineq_dual (B, r)`` / ``eq_dual (B, q)`` (cone rows of labelled
    constraints rescaled to the user's constraint), row sizes per block, and the
    solver's ``status``, ``iterations`` and ``residual``."""

    def __init__(self, z, ineq_dual, eq_dual, ineq_sizes, eq_sizes, status, iterations,
                 residual):
        self.z, self.ineq_dual, self.eq_dual = z, ineq_dual, eq_dual
        self.ineq_sizes, self.eq_sizes = ineq_sizes, eq_sizes
        self.status, self.iterations, self.residual = status, iterations, residual


def solve_convex(program: Program, P, *, tol: float, maxiter: int | None) -> ConvexSolution:
    """Solve a KKT-classified smooth convex problem at parameters ``P`` (each ``(B, ...)``).

    Forward: :class:`~optlayer.solvers.ConvexInteriorPoint` without a graph,
    from the least-norm solution of the equalities (``z = 0`` without them) with
    the epigraph variables strictly inside their rows; its phase I finds a
    strictly feasible point or certifies infeasibility. Backward:
    ``custom_root`` on :func:`optlayer.conditions.kkt` of ``(f, h, g)``, with a
    dense LU per batch item.

    Args:
        program: the :class:`Program` of the rewritten problem.
        P: parameter tensors, expanded to one batch dim ``B``.
        tol, maxiter: interior point settings.

    Returns:
        :class:`ConvexSolution`.
    """
    from optlayer.conditions import kkt

    t0 = next(iter(P.values()))
    B, N = t0.shape[0], program.layout.size
    dtype, device = t0.dtype, t0.device
    gfun, hfun = _cached(program, "rows", lambda: row_functions(program))
    Pd = {k: v.detach() for k, v in P.items()}
    if dtype != torch.float64:
        # the forward runs in float64 to float64's tolerance, as solve_qp does: in
        # float32 its roundoff floor left ~1% of the items OPTIMAL_INACCURATE, and
        # a KKT error of float32's tol leaves solutions up to 3e-4 from float64's
        wide = {k: v.double() for k, v in Pd.items()}
        z, nu, lam, st = _forward(program, wide, B, N, torch.float64, device, gfun, hfun,
                                  min(tol, defaults.tol(torch.float64)), maxiter,
                                  _setup(program, wide, B, N, torch.float64, device, hfun))
        z, nu, lam = (None if t is None else t.to(dtype) for t in (z, nu, lam))
        eq, esz, models = _setup(program, Pd, B, N, dtype, device, hfun)
    else:
        eq, esz, models = _setup(program, Pd, B, N, dtype, device, hfun)
        z, nu, lam, st = _forward(program, Pd, B, N, dtype, device, gfun, hfun, tol, maxiter,
                                  (eq, esz, models))
    F = kkt(program.f, hfun if hfun else None, gfun if gfun else None)
    sol = (z, nu if hfun else None, lam if gfun else None)
    error = _kkt_error(F, sol, Pd, gfun, _model_residuals(program, models, sol, Pd, eq))
    status = _final_status(st.status, error, tol)
    isz = list(_structure(program, Pd, N, False)["sizes"]) if gfun else []
    if any(t.requires_grad for t in P.values()):
        keep = tuple(s for s in sol if s is not None)
        key = ("root", B, tuple(s is None for s in sol), tuple(s.shape[-1] for s in keep))
        root = _cached(program, key, lambda: _implicit_root(program, F, sol))
        z = root(keep, P, _Call(models, sol, Pd, eq))[0]
    ineq_dual = _scaled(program, gfun, lam.detach(), z.detach(), Pd, isz) if gfun else None
    return ConvexSolution(z, ineq_dual, nu.detach() if hfun else None, isz, esz, status,
                          int(st.iter_num.max()) if st.iter_num.numel() else 0, error)


class _Call:
    """What the backward solve of one :func:`solve_convex` call needs besides the map: the
    derivative models, the solution ``(z, nu, lam)``, the parameters and the equalities.
    Not a tensor, so it rides through :func:`optlayer.custom_root` as a plain argument
    (the implicit map ignores it) and belongs to its own call."""

    def __init__(self, models, sol, P, eq) -> None:
        self.models, self.sol, self.P, self.eq = models, sol, P, eq


def _identity(init, P, call):
    return init


def _implicit_root(program, F, sol):
    """The implicit function of :func:`solve_convex` for solutions shaped like ``sol``
    (None where a block is absent), built once per program and shape (so
    :func:`optlayer.custom_root`'s eager check of the map runs once, not per call):
    ``root(keep, P, call)`` returns ``keep`` (the present blocks of the solution) with
    implicit derivatives in ``P`` through ``F`` (:func:`optlayer.conditions.kkt`)."""
    from optlayer.implicit import custom_root
    from optlayer.solvers._base import block_diagonal_solve

    absent = tuple(s is None for s in sol)
    # the fallback solve reads shapes only: a template on the meta device holds no data
    template = tuple(torch.empty(s.shape, dtype=s.dtype, device="meta")
                     for s in sol if s is not None)

    def optimality(x, Pa, call):
        full, it = [], iter(x)
        for gone in absent:
            full.append(None if gone else next(it))
        return tuple(r for r in F(tuple(full), Pa, Pa, Pa) if r is not None)

    solve = _kkt_solve(program, block_diagonal_solve(template))
    return custom_root(optimality, solve=solve)(_identity)


def _setup(program, Pd, B, N, dtype, device, hfun):
    """``(eq, esz, models)`` of :func:`solve_convex` at the parameters ``Pd``: the
    equalities as ``(A, b)`` (None without them) with their row sizes, and the
    derivative models (empty under ``torch.func`` transforms)."""
    eq, esz = None, []
    if hfun:
        A, b, esz = _affine_data(hfun, _ReadOff(Pd, B, N, dtype, device))
        eq = (A, b)
    models = {} if functorch_active() else _models(program, Pd, B, N, dtype, device)
    return eq, esz, models


def _forward(program, Pd, B, N, dtype, device, gfun, hfun, tol, maxiter, setup):
    """The forward solve of :func:`solve_convex` (``setup`` from :func:`_setup` at ``Pd``):
    ``(z, nu, lam, state)`` (``state`` with ``status`` and ``iter_num`` per item). A
    quadratic objective under one quadratic row goes to Newton on the row's multiplier
    (:func:`~optlayer.solvers.secular.solve_one_quadratic_row`); the items it does not
    certify, and every other problem, to the convex interior point."""
    one = _one_row_data(setup) if one_quadratic_row(program) else None
    if one is None:
        return _interior_point(program, Pd, B, N, dtype, device, gfun, hfun, tol, maxiter,
                               setup)
    from optlayer.solvers.secular import solve_one_quadratic_row

    sol = solve_one_quadratic_row(*one, tol=tol, maxiter=maxiter or
                                  defaults.MAXITER["newton"])
    ok = sol.status == int(Status.OPTIMAL)
    state = _OneRowState(sol.status, sol.iterations)
    z, nu, lam = sol.x, sol.x.new_zeros(B, 0), sol.lam
    if not bool(ok.all()):   # (an infeasible row, an indefinite Q, ...)
        # the interior point runs on the whole batch (its models are the batch's; rare),
        # and only the declined items take its results
        z1, _, lam1, st1 = _interior_point(program, Pd, B, N, dtype, device, gfun, hfun,
                                             tol, maxiter, setup)
        z, lam = torch.where(ok.unsqueeze(-1), z, z1), torch.where(ok.unsqueeze(-1), lam, lam1)
        state = _OneRowState(torch.where(ok, state.status, st1.status),
                             torch.where(ok, state.iter_num, st1.iter_num))
    return z, nu, lam, state


class _OneRowState(NamedTuple):
    status: torch.Tensor
    iter_num: torch.Tensor


def one_quadratic_row(program) -> bool:
    """Whether the problem is a quadratic objective (not linear) under one scalar quadratic
    row and nothing else, which :func:`_forward` solves by Newton on the row's
    multiplier."""
    plan = program.plan
    if plan.eq or len(plan.ineq) != 1:
        return False
    row = plan.ineq[0].expr
    return row.shape == () and degree(row) == 2 and bool(plan.smooth) and max(
        degree(e) for _, e in plan.smooth) == 2


def _one_row_data(setup):
    """``(Q, p, P, q, c)`` of ``min ½z'Qz + p'z s.t. ½z'Pz + q'z + c <= 0`` from the models
    of a :func:`one_quadratic_row` problem; None where they are not these (under
    ``torch.func`` transforms there are none)."""
    from optlayer.solvers.convex_models import QuadraticObjective, QuadraticRows

    _, _, models = setup
    if "objective_model" not in models or "ineq_model" not in models:
        return None
    obj, rows = models["objective_model"](None), models["ineq_model"](None)
    parts = getattr(rows, "parts", ())
    if not (isinstance(obj, QuadraticObjective) and obj.Q is not None and len(parts) == 1
            and isinstance(parts[0], QuadraticRows) and rows.sizes == [1]):
        return None
    row = parts[0]
    B, N = obj.p.shape
    return (obj.Q.expand(B, N, N), obj.p, row.Q[:, 0].expand(B, N, N),
            row.p[:, 0].expand(B, N), row.c[:, 0].expand(B))


def _interior_point(program, Pd, B, N, dtype, device, gfun, hfun, tol, maxiter, setup):
    """The convex interior point run of :func:`_forward`."""
    from optlayer.solvers import ConvexInteriorPoint

    eq, _, models = setup
    z0 = None
    if eq is not None:
        A, b = eq
        # start on the equalities (least-norm point): then phase I runs whenever the
        # inequalities are not strictly feasible there, and certifies infeasibility
        z0 = (torch.linalg.pinv(A) @ b.unsqueeze(-1)).squeeze(-1)
    z0 = _start(program, Pd, B, N, dtype, device, z0)
    z0, no_domain = _inside_domains(program, Pd, B, N, dtype, device, z0, eq, tol)
    phase_one = None
    if any(r.phase_one is not None for r in program.plan.ineq):
        phase_one = _cached(program, "phase_one",
                            lambda: Rows(program, program.plan.ineq, phase_one=True))
    # the iterations keep the rows in the models' stacking order (no permutation per
    # evaluation); the multipliers are put back in the rows' order once, at the end
    order, ip_models = None, dict(models)
    if "ineq_model" in models:
        rows = models["ineq_model"](None)
        order = rows.order
        ip_models["ineq_model"] = lambda _p: rows.unordered()
    ip = ConvexInteriorPoint(program.f, gfun if gfun else None, tol=tol, maxiter=maxiter,
                             implicit_diff=False, on_failure="ignore",
                             phase_one_fun=phase_one, maxls=defaults.CONVEX_KKT_MAXLS,
                             **ip_models)
    if functorch_active():
        out = ip.run(z0, Pd, eq, Pd)
    else:
        # in inference mode (no version counters or view tracking: at these sizes, where
        # the count of tensor operations sets the time, a tenth less), the results cloned
        # out of it; autograd models and the phase I data step out of it themselves
        with torch.inference_mode():
            out = ip.run(z0, Pd, eq, Pd)
        out = tree_map(torch.Tensor.clone, out)
    z, nu, lam = out.params
    if order is not None:
        lam = lam.index_select(-1, order)
    state = out.state
    if no_domain is not None:
        state = state._replace(status=torch.where(no_domain, int(Status.INFEASIBLE),
                                                  state.status).to(state.status.dtype))
    return z, nu, lam, state


def _inside_domains(program, P, B, N, dtype, device, z, eq, tol):
    """``(z, infeasible)``: ``z``, or, for the items where it is not strictly inside the
    affine rows that atom domains imply (``x > 0`` for ``log(x)``, ``x >= 0`` for
    ``sqrt(x)`` or ``x ^ 1.5``), a point that is: on the boundary or outside, a row or its
    derivatives are infinite or NaN, and neither phase I nor the main iteration can start
    (``z = 0`` is on it for ``log(x)``). The point maximises the margin ``t <= 1`` of these
    rows, ``Dz + t <= d``, less ``DOMAIN_START_WEIGHT / 2 |z - z0|^2`` (so it stays near
    ``z``), on the equalities: a QP of one more variable. Where the rows have no interior
    (``t <= 0``) ``z`` is kept, and the interior point reports the items it cannot solve;
    ``infeasible`` (None when no QP ran) marks those where no point of the domains
    satisfies the equalities (``t < -sqrt(tol)``): the problem is infeasible there."""
    rows = _cached(program, "domain", lambda: Rows(program, [
        r for r in program.plan.ineq if r.domain and degree(r.expr) <= 1]))
    if not rows:
        return z, None
    out = ~(rows(z, P) < 0).all(-1)
    if not bool(out.any()):
        return z, None
    from optlayer.solvers.qp import solve_qp

    D, d, _ = _affine_data(rows, _ReadOff(P, B, N, dtype, device))
    k = D.shape[1]
    w = defaults.DOMAIN_START_WEIGHT
    Q = torch.diag_embed(torch.cat([z.new_full((N,), w), z.new_zeros(1)])).expand(B, -1, -1)
    q = torch.cat([-w * z, z.new_full((B, 1), -1.0)], -1)
    G = torch.cat([torch.cat([D, D.new_ones(B, k, 1)], -1),
                   torch.cat([D.new_zeros(B, 1, N), D.new_ones(B, 1, 1)], -1)], 1)
    h = torch.cat([d, d.new_ones(B, 1)], -1)
    A = b = None
    if eq is not None:
        A = torch.cat([eq[0], eq[0].new_zeros(B, eq[0].shape[1], 1)], -1)
        b = eq[1]
    sol = solve_qp(Q, q, G, h, A, b, on_failure="ignore")
    solved = out & (sol.status == int(Status.OPTIMAL))
    inside = solved & (sol.x[:, -1] > 0)
    moved = _start(program, P, B, N, dtype, device, sol.x[:, :N])
    return (torch.where(inside.unsqueeze(-1), moved, z),
            solved & (sol.x[:, -1] < -math.sqrt(tol)))


def _kkt_error(F, sol, P, gfun, residuals=None):
    """``max(|grad L|, |h|, -lam'g, max(g)+, max(-lam)+)`` per item at the returned point
    (stationarity, equalities, gap, primal and dual feasibility; inf where not finite).
    ``residuals``: ``(stat, eq, comp, g)`` already computed (from the models), else
    from ``F`` and ``gfun``."""
    with torch.no_grad():
        if residuals is None:
            stat, eq, comp = F(sol, P, P, P)
            g = gfun(sol[0], P) if comp is not None else None
        else:
            stat, eq, comp, g = residuals
        err = torch.linalg.vector_norm(stat, dim=-1)
        if eq is not None:
            err = torch.maximum(err, torch.linalg.vector_norm(eq, dim=-1))
        if comp is not None:
            lam = sol[2]
            err = torch.maximum(err, -comp.sum(-1))
            err = torch.maximum(err, g.clamp_min(0).amax(-1))
            err = torch.maximum(err, (-lam).clamp_min(0).amax(-1))
    return torch.where(torch.isfinite(err), err, torch.inf)


def _model_residuals(program, models, sol, P, eq):
    """The KKT residuals ``(grad f + Dg' lam + A' nu, Az - b, lam * g, g)`` at ``sol`` from
    the derivative models (the same functions as ``F``, without autograd), or None."""
    if not models or "ineq_model" not in models:
        return None
    from optlayer.solvers.convex_models import AutogradObjective

    z, nu, lam = sol
    obj = models["objective_model"](None) if "objective_model" in models else \
        AutogradObjective(program.f, P)
    g, v = models["ineq_model"](None).first(z, lam)
    stat = obj.grad(z) + v
    res = None
    if nu is not None:
        A, b = eq
        stat = stat + (A.mT * nu.unsqueeze(-2)).sum(-1)
        res = (A * z.unsqueeze(-2)).sum(-1) - b
    return stat, res, lam * g, g


def _cached(program, key, build):
    """``build()`` once per program (row tapes: the IR walk is not redone per call)."""
    cache = program.derived
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _final_status(status, error, tol):
    """Status from the KKT error recomputed at the returned point (as ``solve_qp`` does):
    an item that stopped with MAX_ITER or NUMERICAL_ERROR (a line search that found no
    decrease) is OPTIMAL when that error is within ``10 tol`` and OPTIMAL_INACCURATE
    within ``1e3 tol``, the convention of the first-order solvers of :class:`Program`.
    The interior point's error is absolute: at the roundoff floor of ``lam * g(z)``
    (float32; multipliers ~1e4 in float64) it stalls just above ``tol``. INFEASIBLE and
    NONFINITE_INPUT are kept."""
    stuck = (status == int(Status.MAX_ITER)) | (status == int(Status.NUMERICAL_ERROR))
    status = torch.where(stuck & (error <= 10 * tol), int(Status.OPTIMAL), status)
    status = torch.where(stuck & (error > 10 * tol) & (error <= 1e3 * tol),
                         int(Status.OPTIMAL_INACCURATE), status)
    return status.to(torch.int8)


def _start(program, P, B, N, dtype, device, z=None):
    """``z`` (default 0) for the user's variables; each epigraph variable one unit inside its
    rows (``tight +- 1``, evaluated in creation order, so nested atoms see their arguments)."""
    z = torch.zeros(B, N, dtype=dtype, device=device) if z is None else z
    lay = program.layout
    for var, tight, sign in program.plan.start:
        val = tight.evaluate(program.env(z, P))
        shape = lay.shapes[var.name]
        val = val.reshape(-1, *shape).expand(B, *shape) + sign
        z = z.clone()
        z[:, lay.slices[var.name]] = val.reshape(B, -1)
    return z


def _scaled(program, gfun, lam, z, P, sizes):
    """Multipliers of cone rows of labelled constraints, rescaled to ``norm2(u) <= s``."""
    if not any(r.scale is not None for r in gfun.rows):
        return lam
    env = program.env(z, P)
    parts, start = [], 0
    for r, k in zip(gfun.rows, sizes, strict=True):
        d = lam[:, start:start + k]
        if r.scale is not None:
            num, den = r.scale
            cache: dict = {}
            d = d * num.evaluate(env, cache).reshape(z.shape[0], -1)
            if den is not None:
                d = d / den.evaluate(env, cache).reshape(z.shape[0], -1)
        parts.append(d)
        start += k
    return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------- models
class _FunctionRows:
    """Row model (:mod:`optlayer.solvers.convex_models`) of non-quadratic rows: ``first`` is
    one backward pass; ``second`` evaluates the rows on ``n + r`` copies of each item
    (weights ``λ`` on the first ``n``, ``e_i`` on the last ``r``) so that one backward
    pass gives ``∇(λᵀg)`` and ``Dg`` and one more the Hessian of ``λᵀg`` (no loop over
    rows or columns). The parameter copies are made once where they hold at most
    ``defaults.READOFF_MAX_ELEMENTS`` elements, else for each evaluation, in chunks of
    points under that bound (the memory stays bounded, the copying is repeated)."""

    def __init__(self, rows: Rows, P, B, N, r) -> None:
        self.rows, self.P, self.B, self.N, self.r = rows, P, B, N, r
        self.size = chunk_points(P, N + r)
        self.PP = repeat(P, N + r) if self.size == N + r else None
        like = next(iter(P.values()))
        opts = {"dtype": like.dtype, "device": like.device}
        self.E = torch.cat([torch.eye(N, **opts), torch.zeros(r, N, **opts)]).expand(B, -1, -1)
        self.eye_r = torch.eye(r, **opts).expand(B, r, r)

    def values(self, x):
        return self.rows(x, self.P)

    @outside_inference_mode
    def first(self, x, lam):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            g = self.rows(z, self.P)
            (v,) = torch.autograd.grad(g, z, grad_outputs=lam, materialize_grads=True)
        return g.detach(), v

    def _points(self, x, W, start, k):
        """Values, gradients of ``W``-weighted rows and the second pass (None for affine
        rows) at points ``start ... start + k - 1`` of every item, as ``(B, k, ...)``."""
        B, N, r = self.B, self.N, self.r
        if self.PP is not None:
            PP = self.PP
        else:
            PP = self.P if k == 1 else repeat(self.P, k)
        with torch.enable_grad():
            Z = x.detach().repeat_interleave(k, 0).requires_grad_(True)
            g = self.rows(Z, PP)
            (gr,) = torch.autograd.grad((W[:, start:start + k].reshape(-1, r) * g).sum(), Z,
                                        create_graph=True, materialize_grads=True)
            H = None
            if gr.requires_grad:
                E = self.E[:, start:start + k].reshape(-1, N)
                (H,) = torch.autograd.grad((gr * E).sum(), Z, materialize_grads=True)
                H = H.reshape(B, k, N)
        return g.detach().reshape(B, k, r), gr.detach().reshape(B, k, N), H

    @outside_inference_mode
    def second(self, x, lam):
        B, N, r = self.B, self.N, self.r
        W = torch.cat([lam.unsqueeze(1).expand(B, N, r), self.eye_r], 1)
        parts = [self._points(x, W, start, min(self.size, N + r - start))
                 for start in range(0, N + r, self.size)]
        g = parts[0][0][:, 0, :]
        gr = torch.cat([p[1] for p in parts], 1) if len(parts) > 1 else parts[0][1]
        H = None
        if parts[0][2] is not None:
            H = torch.cat([p[2] for p in parts], 1) if len(parts) > 1 else parts[0][2]
            H = H[:, :N, :]
        return g, gr[:, N:, :], H


def _models(program: Program, P, B, N, dtype, device) -> dict:
    """Models for :class:`ConvexInteriorPoint`: a quadratic objective as ``(Q, p)``, affine
    rows as ``(G, h)``, quadratic rows as ``(Q_i, p_i, c_i)``, cone rows as the affine data
    of ``(u, s)`` (all read off once per call, exactly: from their coefficients,
    :meth:`~optlayer.compiler.smooth.Rows.coefficients`, or by :func:`taylor`), other rows
    by autograd on their own tape. An objective with smooth-atom terms gets its
    closed-form model (:func:`optlayer.compiler.smooth.objective_model`) where every term
    has one, else autograd. The split of the rows is cached per program."""
    from optlayer.solvers.convex_models import QuadraticObjective

    out = {}
    st = _structure(program, P, N, False)
    quad = None
    model = program.quadratic_model()
    rows = next((fn for kind, fn, _, _ in st["blocks"] if kind == 2), None)
    like = torch.zeros((), dtype=dtype, device=device)
    qrows = None if rows is None or not st["quadratic"] or not model.ok else \
        rows.coefficients(P, B, like, second=True)
    if st["quadratic"] and model.ok and defaults.READOFF_COEFFICIENTS and (
            rows is None or qrows is not None):
        Q, p = model(P, B, like)
        qobj = QuadraticObjective(Q.detach(), p.detach())
        out["objective_model"] = lambda _p: qobj
        quad = None if qrows is None else tuple(t.detach() for t in qrows)
    elif st["quadratic"]:
        # the objective and the quadratic rows (at most one block) in one second-order pass
        k = 1 + (0 if rows is None else next(k for kind, _, k, _ in st["blocks"] if kind == 2))

        def f(z, PP):
            fz = program.f(z, PP).unsqueeze(-1)
            return fz if rows is None else torch.cat([fz, rows(z, PP)], -1)

        c, p, Q = taylor(f, P, B, N, k, dtype, device, second=True)
        qobj = QuadraticObjective(Q[:, 0], p[:, 0])
        out["objective_model"] = lambda _p: qobj
        if rows is not None:
            quad = (c[:, 1:], p[:, 1:], Q[:, 1:])
    else:
        model = objective_model(program, P)
        if model is not None:
            out["objective_model"] = lambda _p: model
    if program.plan.ineq:
        main = _stacked(st, P, B, N, dtype, device, quad)
        out["ineq_model"] = lambda _p: main
        if any(r.phase_one is not None for r in program.plan.ineq):
            # built only when phase I runs
            def phase_one(_p):  # read off by autograd, out of the loop's inference mode
                with torch.inference_mode(False):
                    return _stacked(_structure(program, P, N, True), P, B, N, dtype, device)

            out["phase_one_model"] = phase_one
    return out


def _structure(program, P, N, phase_one):
    """How the rows split into model kinds (cached per program): ``blocks`` of
    ``(kind, function, outputs, spec)`` in stacking order (1 affine, 2 quadratic, 3 the
    cone row ``sum_squares(u) / s - s`` of affine ``u, s`` (function of ``(u, s)``), 5 the
    phase I cone row ``norm2(u) - s`` (function of ``(u, s)``), 6 a smooth atom of an
    affine argument (function of its :func:`spec_parts`, ``spec`` its :class:`SmoothSpec`), 4
    other) and
    ``order`` (stacked position of each original row, None when the same)."""
    cache = program.derived
    key = ("structure", phase_one)
    if key in cache:
        return cache[key]
    rows = program.plan.ineq
    exprs = [r.phase_one if phase_one and r.phase_one is not None else r.expr for r in rows]
    kinds, smooth = [], {}
    for i, e in enumerate(exprs):
        d = degree(e)
        kind = 1 if d <= 1 else 2 if d <= 2 else 3 if _cone_parts(e) \
            else 5 if _norm_parts(e) else 4
        if kind == 4:
            smooth[i] = smooth_parts(e)
            kind = 4 if smooth[i] is None else 6
        kinds.append(kind)
    like = next(iter(P.values()))
    z1 = torch.zeros(1, N, dtype=like.dtype, device=like.device)
    P1 = {k: v[:1] for k, v in P.items()}
    sizes = Rows(program, rows, phase_one).sizes(z1, P1) if rows else []
    blocks, pos, offset = [], {}, 0
    for kind in (1, 2, 3, 5, 6, 4):
        members = [i for i, k in enumerate(kinds) if k == kind]
        if kind in (3, 5):  # one block per cone row
            for i in members:
                u, sden = (_cone_parts if kind == 3 else _norm_parts)(exprs[i])
                fn = Rows(program, [bare_row(u), bare_row(sden)])
                blocks.append((kind, fn, fn.sizes(z1, P1)[0] + 1, None))
                pos[i] = [offset]
                offset += 1
        elif kind == 6:  # one block per smooth-atom row: its spec_parts as functions
            for i in members:
                spec = smooth[i]
                fn = Rows(program, [bare_row(e) for e in spec_parts(spec)])
                split = tuple(fn.sizes(z1, P1))
                spec = spec._replace(rows=sizes[i], split=split, rest_varies=(
                    spec.rest is not None and degree(spec.rest) > 0))
                blocks.append((kind, fn, sum(split), spec))
                pos[i] = list(range(offset, offset + sizes[i]))
                offset += sizes[i]
        elif members:
            k = sum(sizes[i] for i in members)
            blocks.append((kind, Rows(program, [rows[i] for i in members], phase_one), k,
                           None))
            for i in members:
                pos[i] = list(range(offset, offset + sizes[i]))
                offset += sizes[i]
    order = [j for i in range(len(rows)) for j in pos[i]]
    # the blocks read off to first order, as one function (one autograd pass per call)
    first = [e for kind, fn, _, _ in blocks if kind in _FIRST_ORDER for e in fn.exprs]
    st = {"quadratic": all(degree(e) <= 2 for _, e in program.plan.smooth),
          "blocks": blocks, "order": None if order == list(range(offset)) else order,
          "sizes": sizes, "first": Rows(program, [bare_row(e) for e in first])}
    cache[key] = st
    return st


# block kinds read off to first order (affine functions of z): affine, cone, phase I cone
# and smooth-atom rows
_FIRST_ORDER = (1, 3, 5, 6)


def _stacked(st, P, B, N, dtype, device, quad=None):
    """The :class:`~optlayer.solvers.convex_models.StackedRows` of the blocks of ``st`` at
    ``P``; ``quad``: the quadratic block's ``(c, J, Q)`` when already read off."""
    from optlayer.solvers.convex_models import (
        AffineRows,
        NormRows,
        QuadOverLinRows,
        QuadraticRows,
        StackedRows,
    )

    blocks = st["blocks"]
    first = None
    if st["first"]:
        ks = [k for kind, _, k, _ in blocks if kind in _FIRST_ORDER]
        cJ = st["first"].coefficients(P, B, torch.zeros((), dtype=dtype, device=device))
        c, J = (t.detach() for t in cJ) if cJ is not None else \
            taylor(st["first"], P, B, N, sum(ks), dtype, device, second=False)[:2]
        first = zip(torch.split(c, ks, -1), torch.split(J, ks, -2), strict=True)
    parts, sizes = [], []
    for kind, fn, k, spec in blocks:
        if kind in _FIRST_ORDER:
            c, J = next(first)
        if kind == 1:
            parts.append(AffineRows(J, -c))
        elif kind == 2:
            if quad is None:
                quad = fn.coefficients(P, B, torch.zeros((), dtype=dtype, device=device),
                                       second=True)
                quad = taylor(fn, P, B, N, k, dtype, device, second=True) if quad is None \
                    else tuple(t.detach() for t in quad)
            c, J, Q = quad
            parts.append(QuadraticRows(Q, J, c))
        elif kind in (3, 5):
            model = QuadOverLinRows if kind == 3 else NormRows
            parts.append(model(J[:, :-1], c[:, :-1], J[:, -1], c[:, -1]))
        elif kind == 6:
            parts.append(smooth_model(spec, c, J, B))
        else:
            parts.append(_FunctionRows(fn, P, B, N, k))
        sizes.append(1 if kind in (3, 5) else spec.rows if kind == 6 else k)
    order = st["order"]
    if order is not None:
        order = torch.tensor(order, device=device)
    return StackedRows(parts, sizes, order)


def _cone_parts(e):
    """``(u, s)`` when ``e`` is ``sum_squares(u) / s - s`` with ``u`` affine and ``s`` an affine
    scalar (:func:`optlayer.compiler.epigraph.soc_row`), else None."""
    from optlayer.ir import Apply

    def name(node):
        return node.atom.name if isinstance(node, Apply) else None

    if name(e) != "sub" or name(e.args[0]) != "div":
        return None
    quot, s = e.args
    if name(quot.args[0]) != "sum_squares" or quot.args[1] is not s:
        return None
    u = quot.args[0].args[0]
    if degree(u) > 1 or degree(s) > 1 or math.prod(s.shape) != 1:
        return None
    return u, s


def _norm_parts(e):
    """``(u, s)`` when ``e`` is ``norm2(u) - s`` (the phase I form of a cone row) with ``u``
    affine and ``s`` an affine scalar, else None."""
    from optlayer.ir import Apply

    if not (isinstance(e, Apply) and e.atom.name == "sub"):
        return None
    nrm, s = e.args
    if not (isinstance(nrm, Apply) and nrm.atom.name == "norm2"):
        return None
    u = nrm.args[0]
    if degree(u) > 1 or degree(s) > 1 or math.prod(s.shape) != 1:
        return None
    return u, s


def _kkt_solve(program, fallback):
    """The backward solve of :func:`solve_convex` from the derivative models: the KKT
    Jacobian ``∂F/∂(z, nu, lam) = [[H, A', Dg'], [A, 0, 0], [lam Dg, 0, diag(g)]]``
    (``H`` the Hessian of the Lagrangian) built once, densely per item, instead of
    ``N`` linearisations of ``F``, from the :class:`_Call` of the solve in progress
    (:func:`optlayer.implicit.solve_point`). Used in a plain first-order backward; under
    a graph (double backward) or a torch.func transform, or without models,
    ``fallback`` (matvecs of ``F``)."""
    from optlayer.implicit import solve_point
    from optlayer.linalg import solve_lu
    from optlayer.solvers.convex_models import AutogradObjective

    def matrix(call):
        models, sol, P, eq = call.models, call.sol, call.P, call.eq
        z, nu, lam = sol
        B, n = z.shape
        obj = models["objective_model"](None) if "objective_model" in models else \
            AutogradObjective(program.f, P)
        _, H = obj.grad_hess(z)
        H = z.new_zeros(B, n, n) if H is None else H.expand(B, n, n)
        top, mid, bot = [H], [], []
        if lam is not None:
            g, J, Hg = models["ineq_model"](None).second(z, lam)
            top[0] = H if Hg is None else H + Hg
        if nu is not None:
            A = eq[0].expand(B, *eq[0].shape[-2:])
            q = A.shape[-2]
            top.append(A.mT)
            mid = [A, z.new_zeros(B, q, q)]
            if lam is not None:
                mid.append(z.new_zeros(B, q, lam.shape[-1]))
        if lam is not None:
            r = lam.shape[-1]
            top.append(J.mT)
            bot = [lam.unsqueeze(-1) * J]
            if nu is not None:
                bot.append(z.new_zeros(B, r, nu.shape[-1]))
            bot.append(torch.diag_embed(g))
        rows = [torch.cat(blk, -1) for blk in (top, mid, bot) if blk]
        return torch.cat(rows, -2)

    def solve(matvec, b, **options):
        point = solve_point()
        call = point[1][-1] if point is not None else None
        if not isinstance(call, _Call) or not call.models or torch.is_grad_enabled() \
                or functorch_active() or b.ndim != 1:
            return fallback(matvec, b, **options)
        sizes = [t.shape[-1] for t in call.sol if t is not None]
        B = call.sol[0].shape[0]
        parts = torch.split(b, [B * k for k in sizes])
        bb = torch.cat([p.reshape(B, k) for p, k in zip(parts, sizes, strict=True)], -1)
        u = solve_lu(matrix(call).mT, bb, **options)
        return torch.cat([p.reshape(-1) for p in torch.split(u, sizes, dim=-1)])

    return solve
