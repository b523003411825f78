"""Batched, differentiable quadratic programs: a primal-dual interior point method.

Solves, for every item of a batch at once::

    minimize    1/2 x'Qx + p'x
    subject to  Gx <= h          (dual z >= 0, slack s = h - Gx >= 0)
                Ax  = b          (dual y)

with Q symmetric positive semidefinite (zero for LPs); either constraint block
may be absent. Small batches are first solved by active-set methods
(``_qp_active``: the primal-dual active-set rule, then Goldfarb and Idnani's
dual method where the rule cycles) where ``Q`` is positive definite; they end
on the exact solution of the KKT system of their working set, and the items
they leave go to the interior point. The interior point is
Mehrotra's predictor-corrector with one
of three kernels chosen by a work estimate (``_qp_dense.kernel_for``): the
loop on the full Newton system with its direction by LU (small batches of
small problems) or by the Cholesky factorization of the reduced
(normal-equation) system, or the reduced kernel (``_qp_ipm``) for large
batches, which eliminates equality constraints of full row rank first
(``_qp_elim``). Items that converge are frozen while the others continue, and the
final point is polished by an exact solve on its active set; items a
Cholesky-based kernel leaves without a verdict are solved again with LU
(:func:`_run`). Infeasibility and
unboundedness are reported only when a Farkas certificate passes an explicit
check, and OPTIMAL only when the KKT residuals recomputed from the data at the
returned point are below ``tol``.

The backward pass differentiates the KKT conditions (OptNet; Blondel et al.,
Table 1, KKT map) and reuses the factorization of the active-set KKT system at
the returned point, computed once at the end of the forward pass; it does no
factorization of its own.

Which derivative is returned: the backward pass takes the active set
``J = {i : z_i > s_i}`` at the returned point and differentiates the KKT
system of that active set (constraints in J held as equalities, the others
dropped, their multipliers' derivatives zero). Wherever strict
complementarity holds this is the derivative of the solution map. At a weakly
active constraint (``z_i = s_i = 0``) the map has only one-sided derivatives;
the one returned treats the constraint as active or inactive according to
``z_i > s_i`` at the final iterate (for a point of the active-set method:
according to its final working set) -- finite, never NaN, and one of the
one-sided derivatives. Where the active-set system is singular (degenerate
LPs, dependent active constraints) a tiny diagonal regularization picks a
solution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from optlayer import defaults
from optlayer.errors import BindingError, report_status
from optlayer.solvers import _qp_active as active_set
from optlayer.solvers import _qp_dense as dense
from optlayer.solvers import _qp_elim as elim
from optlayer.solvers import _qp_fast as fast
from optlayer.solvers import _qp_ipm as ipm
from optlayer.solvers import _qp_schur as schur
from optlayer.solvers._base import OptStep
from optlayer.status import Status, check_on_failure, failed_mask

__all__ = ["QPSolution", "KKTSolution", "QPState", "OptStep", "solve_qp", "InteriorPointQP"]


class QPSolution(NamedTuple):
    """Result of :func:`solve_qp`; every field has the batch shape in front.

    Attributes:
        x: primal solution, ``(..., n)``.
        eq_dual: multipliers ``y`` of ``Ax = b``, ``(..., me)`` (None without A).
        ineq_dual: multipliers ``z >= 0`` of ``Gx <= h``, ``(..., m)`` (None without G).
        slack: ``s = h - Gx >= 0``, ``(..., m)`` (None without G).
        status: :class:`~optlayer.status.Status` codes, ``torch.int8``.
        iter_num: iterations taken per item (of the interior point, or of the
            active-set methods where they returned the point).
        error: ``max(primal_residual, dual_residual, gap)`` per item.
        primal_residual: ``max(|Ax - b|, |Gx + s - h|)``, normalized.
        dual_residual: ``|Qx + p + G'z + A'y|_inf``, normalized.
        gap: ``s'z / max(1, |objective|)``.
    """

    x: Tensor
    eq_dual: Tensor | None
    ineq_dual: Tensor | None
    slack: Tensor | None
    status: Tensor
    iter_num: Tensor
    error: Tensor
    primal_residual: Tensor
    dual_residual: Tensor
    gap: Tensor


class KKTSolution(NamedTuple):
    """Primal and dual variables, as in JAXopt's QP solvers."""

    primal: Tensor
    dual_eq: Tensor | None
    dual_ineq: Tensor | None


class QPState(NamedTuple):
    """State of :class:`InteriorPointQP`; starts with ``iter_num, error, status``."""

    iter_num: Tensor
    error: Tensor
    status: Tensor
    slack: Tensor | None
    primal_residual: Tensor
    dual_residual: Tensor
    gap: Tensor


# --------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------

_NAMES = ("Q", "p", "G", "h", "A", "b")


def _check_inputs(Q, p, G, h, A, b):
    given = dict(zip(_NAMES, (Q, p, G, h, A, b), strict=True))
    for name, t in given.items():
        if t is not None and not isinstance(t, Tensor):
            raise BindingError(
                f"solve_qp: {name} must be a torch.Tensor, got {type(t).__name__}",
                parameter=name, hint=f"wrap it: torch.as_tensor({name}, dtype=torch.float64)")
    for a, c in (("G", "h"), ("A", "b")):
        if (given[a] is None) != (given[c] is None):
            have, miss = (a, c) if given[c] is None else (c, a)
            raise BindingError(f"solve_qp: {have} is given but {miss} is not",
                               parameter=miss, hint=f"pass both {a} and {c}, or neither")
    tensors = {k: t for k, t in given.items() if t is not None}
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise BindingError(f"solve_qp: {name} has dtype {t.dtype}; a floating dtype is needed",
                               parameter=name, hint=f"use {name}.double() or {name}.float()")
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise BindingError(
            "solve_qp: inputs are on different devices: "
            + ", ".join(f"{k} on {t.device}" for k, t in tensors.items()),
            hint="move every tensor to one device with .to(device)")
    if p.dim() < 1:
        raise BindingError("solve_qp: p must have shape (..., n)", parameter="p")
    n = p.shape[-1]
    if Q.dim() < 2 or Q.shape[-2:] != (n, n):
        raise BindingError(f"solve_qp: Q has shape {tuple(Q.shape)} but p has n = {n}; "
                           f"Q must be (..., {n}, {n})", parameter="Q")
    batch = [Q.shape[:-2], p.shape[:-1]]
    for mat, vec in (("G", "h"), ("A", "b")):
        M, v = given[mat], given[vec]
        if M is None:
            continue
        if M.dim() < 2 or M.shape[-1] != n:
            raise BindingError(f"solve_qp: {mat} has shape {tuple(M.shape)}; it must be "
                               f"(..., rows, {n}) to match p", parameter=mat)
        if v.dim() < 1 or v.shape[-1] != M.shape[-2]:
            raise BindingError(f"solve_qp: {vec} has shape {tuple(v.shape)} but {mat} has "
                               f"{M.shape[-2]} rows; {vec} must be (..., {M.shape[-2]})",
                               parameter=vec)
        batch += [M.shape[:-2], v.shape[:-1]]
    try:   # (broadcast_shapes is slow Python: skipped when the shapes agree)
        bshape = batch[0] if all(s == batch[0] for s in batch) else \
            torch.broadcast_shapes(*batch)
    except RuntimeError:
        raise BindingError(
            "solve_qp: batch shapes do not broadcast: "
            + ", ".join(f"{k} {tuple(t.shape)}" for k, t in tensors.items()),
            hint="give every parameter the same leading batch shape, or none") from None
    dtype = tensors["Q"].dtype
    for t in tensors.values():
        dtype = torch.promote_types(dtype, t.dtype)
    return bshape, n, dtype


@torch.no_grad()
def _finite_items(ts: list[Tensor], B: int) -> tuple[Tensor, bool]:
    """``(finite, every)``: ``finite`` ``(B,)`` is True where every entry of the
    item is finite, ``every`` whether all items are. A finite sum
    of an item's entries proves them all finite (an inf or NaN term makes the sum
    inf or NaN), so the entrywise test runs only when some sum is not finite
    (non-finite data, or finite data whose sum overflows)."""
    total = ts[0].sum(dim=tuple(range(1, ts[0].dim())))
    for t in ts[1:]:
        total = total + t.sum(dim=tuple(range(1, t.dim())))
    finite = (total - total) == 0      # False for inf and NaN (isfinite in fewer operations)
    if bool(finite.all()):
        return finite, True
    finite = torch.isfinite(torch.cat([t.reshape(B, -1) for t in ts], dim=1)).all(dim=1)
    return finite, bool(finite.all())


def _warm_args(x, z, bshape, n: int, m: int, B: int, dtype) -> tuple[Tensor, Tensor]:
    """``(x (B, n), z (B, m))`` of ``solve_qp``'s ``warm_start``, detached and checked."""
    for name, t, k in (("x", x, n), ("z", z, m)):
        if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[-1] != k:
            got = type(t).__name__ if not isinstance(t, Tensor) else tuple(t.shape)
            raise BindingError(f"solve_qp: warm_start {name} must be a tensor (..., {k}); "
                               f"got {got}", parameter="warm_start",
                               hint="pass the x and ineq_dual of an earlier solve")
        try:
            torch.broadcast_shapes(t.shape[:-1], tuple(bshape))
        except RuntimeError:
            raise BindingError(f"solve_qp: warm_start {name} has batch shape "
                               f"{tuple(t.shape[:-1])}, the data {tuple(bshape)}",
                               parameter="warm_start") from None
    return tuple(_flat(t.detach(), bshape, 1, B, dtype) for t in (x, z))


def _flat(t: Tensor | None, bshape, core: int, B: int, dtype) -> Tensor | None:
    if t is None:
        return None
    if t.dtype != dtype:
        t = t.to(dtype)
    shape = t.shape[t.dim() - core:]
    if t.shape[:t.dim() - core] == (B,) and len(bshape) == 1:
        return t
    return t.expand(*bshape, *shape).reshape(B, *shape)


# --------------------------------------------------------------------------
# the differentiable solve
# --------------------------------------------------------------------------

def _eliminates(n: int, m: int, me: int, B: int) -> bool:
    """Whether the equality constraints are eliminated first (:mod:`_qp_elim`): where
    :func:`_qp_dense.kernel_for` picks the reduced kernel and elimination applies."""
    return dense.kernel_for(n, m, me, B) == "reduced" and elim.applies(n, me)


def _run(d: ipm.Data, finite: Tensor, tol: float, maxiter: int,
         want: bool, warm: tuple | None = None) -> tuple[ipm.Result, ipm.Data]:
    """Solve with the active-set methods where they apply (:mod:`_qp_active`: small
    batches, positive definite ``Q``), the interior point taking the items they
    leave; else with the kernel :func:`_qp_dense.kernel_for` picks, equality constraints of full
    row rank eliminated where it says so. Returns the result and the data the
    kernel ran on (``d`` stacked and, for the Cholesky kernels, augmented), or
    ``d`` itself where the equalities were eliminated (then it may be unstacked:
    the original problem is read only by :func:`_qp_elim.restore` and the backward).
    With ``warm = (x, z)`` (a previous solution), the active set ``{z > h - Gx}`` is
    polished first (:func:`_warm`); the interior point takes the items it leaves."""
    B, n, _ = d.Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    if warm is not None and m:
        ds = ipm.stack(d)
        return _left_to_interior(
            _warm(ds, warm, finite, tol, want), finite, lambda idx: _interior(
                ipm.take(ds, idx), torch.ones_like(idx, dtype=torch.bool), tol, maxiter, want,
                full=True)[0]), ds
    if active_set.applies(n, m, me, B):
        ds = ipm.stack(d)
        res = active_set.run_active(ds, active=finite, tol=tol, maxiter=maxiter,
                                    want_factor=want)
        if res is not None:
            return _left_to_interior(res, finite, lambda idx: _interior(
                ipm.take(ds, idx), torch.ones_like(idx, dtype=torch.bool), tol, maxiter, want,
                full=True)[0]), ds
    if _eliminates(n, m, me, B):
        e = elim.eliminate(d, finite)
        if e is not None:
            res = _run_kernel(e.data, "reduced", finite, tol, maxiter, want)
            return elim.restore(d, e, res, tol, want), d
    return _interior(ipm.stack(d), finite, tol, maxiter, want)


def _warm(d: ipm.Data, warm: tuple, finite: Tensor, tol: float, want: bool) -> ipm.Result:
    """The polish (:mod:`_qp_dense`) on the active set ``J = {z > h - Gx}`` of a previous
    solution ``warm = (x (B, n), z (B, m))`` at this call's data, with the corrections
    of ``_qp_dense._correct``: OPTIMAL, in 0 iterations, where the polished point passes
    ``tol`` (the usual case when the data moved a little and the active set did not
    change, as between steps of training); MAX_ITER (no verdict) elsewhere."""
    x, z = (t.unsqueeze(-1) for t in warm)
    s = d.h - ipm.matvec(d.G, x, d.Gt)
    y = None if d.A is None else x.new_zeros(x.shape[0], d.A.shape[1], 1)
    base = dense.bases(d)
    pol = dense._correct(d, dense._polish(d, x, s, z, y, base=base), finite, tol, base)
    ok = finite & pol.fac.ok & (pol.err <= tol)
    status = torch.where(ok, int(Status.OPTIMAL), int(Status.MAX_ITER)).to(torch.int8)
    (px, ps, pz, py), r = pol.point, pol.r
    return ipm.Result(px, py, pz, ps, status, torch.zeros_like(status, dtype=torch.int64),
                      r.pres, r.dres, r.gap, pol.fac if want else None)


def _interior(d: ipm.Data, active: Tensor, tol: float, maxiter: int,
              want: bool, full: bool = False) -> tuple[ipm.Result, ipm.Data]:
    """The interior point kernel :func:`_qp_dense.kernel_for` picks for the stacked
    ``d``, on the items ``active`` (with ``full``, a kernel on the full system: its
    factorization is the active-set methods' kind); returns its result and the data
    it ran on."""
    B, n, _ = d.Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    kernel = dense.kernel_for(n, m, me, B)
    if full and kernel == "reduced":
        kernel = "full-cholesky"
    if kernel != "full-lu":      # the Cholesky factorizations start from Q + rho A'A
        d = ipm.augment(d)
    if kernel == "reduced":      # epigraph-shaped H: its diagonal block eliminated first
        d = ipm.with_arrow(d)
    return _run_kernel(d, kernel, active, tol, maxiter, want), d


def _run_kernel(d: ipm.Data, kernel: str, finite: Tensor, tol: float, maxiter: int,
                want: bool) -> ipm.Result:
    """Run ``kernel``. Problems with inequality constraints and no equalities (none
    left after elimination) that are small enough for the full-system kernels go
    first through the unguarded loop (:mod:`_qp_fast`), and only the items it
    leaves not OPTIMAL through ``kernel``, in the iterations left (an item's
    ``iter_num`` counts both).
    When the full Newton system has at most
    ``defaults.IPM_RESCUE_MAX_SIZE`` rows (see there), the Cholesky-based
    kernels give up early on hopeless items (:func:`_qp_ipm.watch`), and the
    items they leave without a verdict (OPTIMAL, INFEASIBLE or UNBOUNDED) with
    iterations to spare are solved again on the full system with LU, in what
    is left of ``maxiter``."""
    B, n, _ = d.Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    small = kernel != "reduced" or dense.kernel_for(n, m, me, B) != "reduced"
    if small and fast.applies(n, m, me):
        res = fast.run_fast(d, active=finite, tol=tol, maxiter=maxiter, want_factor=want)
        lost = finite & (res.status != int(Status.OPTIMAL))
        if want and kernel == "reduced" and bool(lost.any()):
            # (a problem whose equalities were eliminated comes with kernel "reduced"
            # even when what is left is small; its lost items get the reduced kernel's
            # factors, and all items then take its kind, to be merged)
            res = res._replace(factor=ipm.split_factor(d, res.s, res.z))
        return _again(res, lost, d, maxiter,
                      lambda part, every, left: _run_guarded(part, kernel, every, tol, left,
                                                             want))
    return _run_guarded(d, kernel, finite, tol, maxiter, want)


def _again(res: ipm.Result, lost: Tensor, d: ipm.Data, maxiter: int, run) -> ipm.Result:
    """``res`` with the items ``lost`` solved again by ``run(part, every, left)`` on their
    data ``part``, in the iterations ``left`` of ``maxiter`` (added to their counts)."""
    if not bool(lost.any()):
        return res
    idx = torch.nonzero(lost).view(-1)
    left = maxiter - int(res.iter_num.index_select(0, idx).max())
    return ipm.merge(res, idx, run(ipm.take(d, idx), torch.ones_like(idx, dtype=torch.bool),
                                   left))


def _run_guarded(d: ipm.Data, kernel: str, finite: Tensor, tol: float, maxiter: int,
                 want: bool) -> ipm.Result:
    """``kernel`` with its safeguards (certificates, guarded steps, the LU rescue)."""
    _, n, _ = d.Q.shape
    m = 0 if d.G is None else d.G.shape[1]
    me = 0 if d.A is None else d.A.shape[1]
    rescue = n + 2 * m + me <= defaults.IPM_RESCUE_MAX_SIZE
    if kernel == "reduced":
        res = _reduced(d, finite, tol, maxiter, want, rescue)
    else:
        cholesky = kernel == "full-cholesky"
        res = dense.run_dense(d, active=finite, tol=tol, maxiter=maxiter, want_factor=want,
                              reduced=cholesky, give_up=cholesky and rescue)
    if kernel == "full-lu" or not rescue:
        return res
    def on_lu(part, every, left):
        again = dense.run_dense(part, active=every, tol=tol, maxiter=left,
                                want_factor=want and kernel != "reduced")
        if want and kernel == "reduced":   # the reduced kernel's backward, at the point found
            again = again._replace(factor=ipm.split_factor(part, again.s, again.z))
        return again

    lost = finite & ~_has_verdict(res.status) & (res.iter_num < maxiter)
    return _again(res, lost, d, maxiter, on_lu)


def _reduced(d: ipm.Data, finite: Tensor, tol: float, maxiter: int, want: bool,
             give_up: bool) -> ipm.Result:
    """The reduced kernel, after the primal-dual active-set rule on the dual Schur
    complement where it applies (:mod:`_qp_schur`: no equality constraints left,
    ``Q`` positive definite); the interior point takes the items the rule leaves."""
    if schur.applies(d):
        res = schur.run_schur(d, active=finite, tol=tol, maxiter=maxiter, want_factor=want)
        if res is not None:
            return _left_to_interior(res, finite, lambda idx: ipm.run_ipm(
                ipm.take(d, idx), active=torch.ones_like(idx, dtype=torch.bool), tol=tol,
                maxiter=maxiter, want_factor=want, give_up=give_up))
    return ipm.run_ipm(d, active=finite, tol=tol, maxiter=maxiter, want_factor=want,
                       give_up=give_up)


def _left_to_interior(res: ipm.Result, finite: Tensor, interior) -> ipm.Result:
    """``res`` of an active-set method, with the items it left without a verdict
    (finite, not OPTIMAL) solved again by ``interior(idx)`` (an interior point on
    those items, with the full maxiter); an item's ``iter_num`` counts the
    method that returned its point."""
    lost = finite & (res.status != int(Status.OPTIMAL))
    if not bool(lost.any()):
        return res
    res = res._replace(iter_num=torch.where(lost, 0, res.iter_num))
    idx = torch.nonzero(lost).view(-1)
    return ipm.merge(res, idx, interior(idx))


def _has_verdict(status: Tensor) -> Tensor:
    return (status == int(Status.OPTIMAL)) | (status == int(Status.INFEASIBLE)) \
        | (status == int(Status.UNBOUNDED))


class _QPFunction(torch.autograd.Function):
    """Inputs (B, ...) tensors; outputs x, y, z, s (differentiable) + diagnostics."""

    @staticmethod
    def forward(ctx, Q, p, G, h, A, b, finite, tol, maxiter, warm):
        # The solve runs in inference mode (no version counters or view tracking: a
        # seventh less time at small sizes, where the cost is per tensor operation); its
        # outputs are cloned out of it and what the backward reads is held on ctx
        # (inference tensors cannot be saved for backward; the backward only reads them).
        # G and A, the inputs the backward reads, are saved as usual (an in-place change
        # before the backward is caught).
        ctx.set_materialize_grads(False)     # the backward takes None for unused outputs
        with torch.inference_mode():
            outs = _QPFunction._solve(ctx, Q, p, G, h, A, b, finite, tol, maxiter, warm)
        outs = tuple(t if t is None else t.clone() for t in outs)
        ctx.mark_non_differentiable(*outs[4:])
        if any(ctx.needs_input_grad[:6]):
            ctx.save_for_backward(G, A)
        return outs

    @staticmethod
    def _solve(ctx, Q, p, G, h, A, b, finite, tol, maxiter, warm):
        # in float64 whatever the dtype, to float64's tolerance (solve_qp's docstring)
        ctx.dtype = dtype = Q.dtype
        wide = dtype != torch.float64
        if wide:
            Q, p, G, h, A, b = (None if t is None else t.double() for t in (Q, p, G, h, A, b))
            warm = None if warm is None else tuple(t.double() for t in warm)
        want = any(ctx.needs_input_grad[:6])
        n = Q.shape[1]
        m = 0 if G is None else G.shape[1]
        me = 0 if A is None else A.shape[1]
        eliminate = warm is None and _eliminates(n, m, me, Q.shape[0])
        # _run stacks the data where the kernel needs it, and augments it
        d = ipm.make_data(Q, p, G, h, A, b, augmented=False, stacked=not eliminate)
        res, d = _run(d, finite, min(tol, defaults.tol(torch.float64)) if wide else tol,
                      maxiter, want, warm)
        status = res.status
        if wide:   # the float64 point judged by the caller's tolerances
            err = torch.maximum(torch.maximum(res.primal_residual, res.dual_residual), res.gap)
            open_ = ~_has_verdict(status)
            status = torch.where(open_ & (err <= defaults.ipm_inaccurate_tol(dtype)),
                                 int(Status.OPTIMAL_INACCURATE), status)
            status = torch.where(open_ & (err <= tol), int(Status.OPTIMAL), status)
        status = torch.where(finite, status, torch.full_like(status, int(Status.NONFINITE_INPUT)))

        def out(t):
            return None if t is None else t.squeeze(-1).to(dtype) if wide else t.squeeze(-1)

        x, y, z, s = out(res.x), out(res.y), out(res.z), out(res.s)
        if want:
            f = res.factor
            ctx.kind = "dense" if isinstance(f, dense.DenseFactor) else \
                "elim" if isinstance(f, elim.ElimFactor) else "split"
            ctx.need = ctx.needs_input_grad[:6]
            if ctx.kind == "dense":
                ctx.held = (res.x, res.y, res.z, f.LU, f.pivots, f.K, f.J, finite & f.ok)
            elif ctx.kind == "split":   # the forward's stacked data serves split_solve
                ctx.held = (d.KA, d.KT, res.x, res.y, res.z, *f[:-1], finite & f.ok)
                ctx.reg = (d.reg_abs, d.reg_rel)
            else:   # the original Q and G (the data need not be stacked)
                ctx.held = (d.Q, None, res.x, res.y, res.z, *f[:-1], *f.f[:-1], finite & f.f.ok)
                ctx.reg = (None, d.reg_rel)   # the reduced problem's reg_abs is in f
                ctx.inner = type(f.f)         # the reduced problem's factor: split or dense
        diag = (res.primal_residual, res.dual_residual, res.gap)
        if wide:
            diag = tuple(t.to(dtype) for t in diag)
        return (x, y, z, s, status, res.iter_num, *diag)

    @staticmethod
    @once_differentiable    # its values are not functions of the inputs (no second order)
    def backward(ctx, gx, gy, gz, gs, *unused):
        if ctx.dtype == torch.float64:
            return _backward(ctx, gx, gy, gz, gs)
        grads = _backward(ctx, *(None if g is None else g.double() for g in (gx, gy, gz, gs)))
        return tuple(None if g is None else g.to(ctx.dtype) for g in grads)


def _backward(ctx, gx, gy, gz, gs):
    """The KKT adjoint solve of :class:`_QPFunction` in float64 (its saved tensors')."""
    G, A = (t if t is None or t.dtype == torch.float64 else t.double()
            for t in ctx.saved_tensors)
    saved = ctx.held
    if ctx.kind == "dense":
        x, y, z, LU, piv, K, J, ok = saved
    else:   # "split": the stacked [Q; G; A] and [G' A']; "elim": Q and None
        KA, KT, x, y, z = saved[:5]
        ok = saved[-1]
    a1 = torch.zeros_like(x) if gx is None else gx.unsqueeze(-1)
    a3 = vs = a2 = None
    if G is not None:
        a3 = torch.zeros_like(z) if gz is None else gz.unsqueeze(-1)
        if gs is not None:
            vs = gs.unsqueeze(-1)
            a1 = torch.baddbmm(a1, G.transpose(1, 2), vs, alpha=-1.0)     # s = h - Gx
    if A is not None:
        a2 = torch.zeros_like(y) if gy is None else gy.unsqueeze(-1)
    refine = defaults.IPM_BACKWARD_REFINE_STEPS
    if ctx.kind == "dense":
        f = dense.DenseFactor(LU, piv, K, J, ok)
        m = 0 if G is None else G.shape[1]
        u, zeta, w = dense.dense_grad_solve(f, x.shape[1], m, a1, a3, a2, refine)
    elif ctx.kind == "split":
        reg_abs, reg_rel = ctx.reg
        n, m = x.shape[1], 0 if G is None else G.shape[1]
        d = ipm.Data(KA[:, :n], None, G, None, A, None, None if KT is None else KT[:, :, :m],
                     None if A is None else KT[:, :, m:], None, reg_abs, reg_rel, KA, KT)
        f = ipm.SplitFactor(*saved[5:-1], ok)
        u, zeta, w = ipm.split_solve(d, f, a1, a3, a2, refine=refine)
    else:   # equality constraints eliminated in the forward (_qp_elim)
        k = len(elim.ElimFactor._fields) - 1
        f = elim.ElimFactor(*saved[5:5 + k], ctx.inner(*saved[5 + k:-1], ok))
        Q = KA
        inner = None
        if ctx.inner is dense.DenseFactor:   # the fast loop's factor of the reduced problem
            n_u, m = f.Z.shape[2], 0 if G is None else G.shape[1]

            def inner(r1, r3):
                return dense.dense_grad_solve(f.f, n_u, m, r1, r3, None, refine)[:2]
        u, zeta, w = elim.adjoint_solve(Q, G, f, ctx.reg[1], a1, a3, a2, refine, inner)
    # items whose factorization failed or whose data was not finite: zero gradient
    # (0 * t sums to 0 exactly where every entry of t is finite, to NaN elsewhere)
    lam = torch.cat([t for t in (u, zeta, w) if t is not None], dim=1)
    good = ok & (lam.mul(0.0).sum(dim=(1, 2)) == 0)
    xs, ys, zs = x, y, z
    if not bool(good.all()):
        g3 = good.view(-1, 1, 1)

        def keep(t):
            return None if t is None else torch.where(g3, t, 0.0)

        u, zeta, w, xs, ys, zs, vs = map(keep, (u, zeta, w, x, y, z, vs))
    need = ctx.need
    # each matrix gradient is a sum of two outer products: one product of rank two
    left = torch.cat([u, xs], dim=2).neg_()
    gQ = gG = gh = gA = gb = None
    if need[0]:
        gQ = torch.bmm(left, torch.cat([xs, u], dim=2).transpose(1, 2)).mul_(0.5)
    gp = -u.squeeze(-1) if need[1] else None
    if G is not None:
        if need[3] or need[2]:
            gh = zeta if vs is None else zeta + vs
        if need[2]:   # -(z u' + zeta x') (- v x' with a cotangent for s, v + zeta = gh)
            gG = torch.bmm(torch.cat([zs, gh], dim=2), left.transpose(1, 2))
        gh = gh.squeeze(-1) if need[3] else None
    if A is not None:
        if need[4]:
            gA = torch.bmm(torch.cat([ys, w], dim=2), left.transpose(1, 2))
        gb = w.squeeze(-1) if need[5] else None
    return gQ, gp, gG, gh, gA, gb, None, None, None, None


def solve_qp(Q: Tensor, p: Tensor, G: Tensor | None = None, h: Tensor | None = None,
             A: Tensor | None = None, b: Tensor | None = None, *, tol: float | None = None,
             maxiter: int | None = None, on_failure: str = "warn",
             warm_start=None) -> QPSolution:
    """Solve a batch of convex QPs and return primal, duals, slacks and a status each.

    ``minimize 1/2 x'Qx + p'x  s.t.  Gx <= h,  Ax = b``. Shapes: ``Q (..., n, n)``,
    ``p (..., n)``, ``G (..., m, n)``, ``h (..., m)``, ``A (..., me, n)``,
    ``b (..., me)``; the leading batch shapes broadcast (an unbatched G is
    shared by every item, and its gradient is summed over the batch). ``Q`` is
    used through its symmetric part ``(Q + Q')/2`` and must be PSD.

    At a returned OPTIMAL point the KKT conditions hold to ``tol`` (relative):
    ``Qx + p + G'z + A'y = 0``, ``Ax = b``, ``Gx + s = h``, ``s, z >= 0`` and
    ``s'z = 0``. The result is differentiable in every input, once (implicit
    differentiation of the KKT conditions; see the module docstring).

    An item whose objective has a coefficient above ``defaults.QP_SCALE_ABOVE`` is
    solved with ``Q`` and ``p`` divided by the largest (the multipliers multiplied
    back; its residuals are the scaled problem's), as the start, regularization and
    thresholds of the methods are in absolute units.

    float32 inputs are solved in float64 (forward and backward), to float64's
    tolerance, and the results returned in float32, OPTIMAL where the float64
    point passes ``tol``: in float32 the normal equations of the interior
    point stall near ``z / s ~ 1 / eps`` (at n = 100 four in ten items ended
    OPTIMAL_INACCURATE or MAX_ITER), and a KKT error of float32's ``tol``
    leaves the solutions of ill-conditioned items up to 6e-3 off (cvxpylayers'
    cone solvers run in float64 too).

    Args:
        Q, p, G, h, A, b: the problem data; G/h and A/b are optional pairs.
        tol: relative KKT tolerance (default ``defaults.tol(dtype)``).
        maxiter: iteration cap (default ``defaults.MAXITER["interior_point"]``).
        on_failure: ``"raise"`` (:class:`~optlayer.errors.SolverError`),
            ``"warn"`` (:class:`~optlayer.status.OptimizationWarning`),
            ``"mask"`` (NaN rows and zero gradient for items not OPTIMAL) or
            ``"ignore"``.
        warm_start: a previous solution, a :class:`QPSolution` or ``(x, z)`` (its ``x``
            and ``ineq_dual``, batch shapes broadcasting as the data's). Its active set
            ``{z > h - Gx}``, taken at this call's data, is solved for first (the
            polish, with a few corrections of the set): items whose point passes the
            KKT check are OPTIMAL with ``iter_num`` 0, the others are solved from the
            interior point's own start. Ignored without inequality constraints.

    Returns:
        :class:`QPSolution`.

    Raises:
        BindingError: inputs of the wrong type, dtype, device or shape.
        SolverError: some item is not OPTIMAL and ``on_failure="raise"``.

    Example:
        >>> import torch
        >>> Q = torch.eye(2, dtype=torch.float64); p = -torch.ones(2, dtype=torch.float64)
        >>> G = torch.eye(2, dtype=torch.float64); h = torch.tensor([0.5, 2.0], dtype=torch.float64)
        >>> sol = solve_qp(Q, p, G, h)
        >>> [round(v, 6) for v in sol.x.tolist()], int(sol.status)
        ([0.5, 1.0], 0)
    """
    check_on_failure(on_failure)
    bshape, n, dtype = _check_inputs(Q, p, G, h, A, b)
    if G is not None and G.shape[-2] == 0:
        G = h = None
    if A is not None and A.shape[-2] == 0:
        A = b = None
    tol = defaults.tol(dtype) if tol is None else float(tol)
    maxiter = defaults.MAXITER["interior_point"] if maxiter is None else int(maxiter)
    if tol <= 0 or maxiter < 0:
        raise ValueError(f"solve_qp: need tol > 0 and maxiter >= 0; got tol={tol}, "
                         f"maxiter={maxiter}")
    B = 1
    for k in bshape:
        B *= k
    Qf = _flat(Q, bshape, 2, B, dtype)
    Qf = (Qf + Qf.transpose(1, 2)).mul_(0.5)
    args = [Qf, _flat(p, bshape, 1, B, dtype), _flat(G, bshape, 2, B, dtype),
            _flat(h, bshape, 1, B, dtype), _flat(A, bshape, 2, B, dtype),
            _flat(b, bshape, 1, B, dtype)]
    warm = None
    if warm_start is not None and G is not None:
        wx, wz = (warm_start.x, warm_start.ineq_dual) if isinstance(warm_start, QPSolution) \
            else warm_start
        warm = _warm_args(wx, wz, bshape, n, G.shape[-2], B, dtype)
    finite, every = _finite_items([t for t in args if t is not None], B)
    clean = args
    if not every:   # zero the data of non-finite items (they are not solved)
        clean = [None if t is None else
                 torch.where(finite.view(-1, *([1] * (t.dim() - 1))), t, torch.zeros_like(t))
                 for t in args]
    # an objective with coefficients above QP_SCALE_ABOVE in units of its largest one
    # (defaults.QP_SCALE_ABOVE says why): the multipliers are multiplied back below
    Qc, pc = clean[0], clean[1]
    scale = torch.maximum(Qc.detach().abs().amax(dim=(1, 2)), pc.detach().abs().amax(dim=1))
    big = scale > defaults.QP_SCALE_ABOVE
    if bool(big.any()):
        scale = torch.where(big, scale, 1.0)
        clean = [Qc / scale.view(-1, 1, 1), pc / scale.view(-1, 1), *clean[2:]]
    else:
        scale = None
    out = _QPFunction.apply(*clean, finite, tol, maxiter, warm)
    x, y, z, s, status, iters, pres, dres, gap = out
    if scale is not None:
        y, z = (None if t is None else t * scale.view(-1, 1) for t in (y, z))
    if clean is not args:
        nanrow = (~finite).view(-1, 1)
        x = torch.where(nanrow, torch.full_like(x, float("nan")), x)
    if on_failure == "mask":
        bad = failed_mask(status).view(-1, 1)
        nan = float("nan")
        x, y, z, s = (None if t is None else torch.where(bad, torch.full_like(t, nan), t)
                      for t in (x, y, z, s))
    err = torch.maximum(torch.maximum(pres, dres), gap)

    def shape(t, tail=()):
        if t is None or len(bshape) == 1:      # already (B, ...)
            return t
        return t.reshape(tuple(bshape) + tuple(tail))

    m = 0 if G is None else G.shape[-2]
    me = 0 if A is None else A.shape[-2]
    sol = QPSolution(shape(x, (n,)), shape(y, (me,)), shape(z, (m,)), shape(s, (m,)),
                     shape(status), shape(iters), shape(err), shape(pres), shape(dres),
                     shape(gap))
    report_status(sol.status, on_failure, "solve_qp")
    return sol


@dataclass
class InteriorPointQP:
    """JAXopt-style QP solver: ``run(...) -> OptStep(KKTSolution, QPState)``.

    Attributes:
        tol: relative KKT tolerance (default per dtype from :mod:`optlayer.defaults`).
        maxiter: iteration cap.
        on_failure: ``"raise" | "warn" | "mask" | "ignore"``.
        implicit_diff: must be True (gradients come from the KKT conditions;
            unrolling the interior point iterations is not offered).

    Example:
        >>> import torch
        >>> Q = torch.eye(2, dtype=torch.float64); p = torch.zeros(2, dtype=torch.float64)
        >>> A = torch.ones(1, 2, dtype=torch.float64); b = torch.ones(1, dtype=torch.float64)
        >>> sol, state = InteriorPointQP().run(params_obj=(Q, p), params_eq=(A, b))
        >>> sol.primal.tolist(), int(state.status)
        ([0.5, 0.5], 0)
    """

    tol: float | None = None
    maxiter: int | None = None
    on_failure: str = "warn"
    implicit_diff: bool = True

    def __post_init__(self):
        check_on_failure(self.on_failure)
        if not self.implicit_diff:
            raise ValueError("InteriorPointQP: implicit_diff=False (unrolling) is not "
                             "supported; gradients come from the KKT conditions")

    def run(self, init=None, params_obj=None, params_eq=None, params_ineq=None) -> OptStep:
        """Solve; ``init``: None, or a previous :class:`KKTSolution` (``sol.params`` of an
        earlier run), whose ``primal`` and ``dual_ineq`` are ``solve_qp``'s
        ``warm_start`` (its active set is solved for first); anything else is an error."""
        if params_obj is None:
            raise BindingError("InteriorPointQP.run: params_obj=(Q, p) is required",
                               parameter="params_obj")
        Q, p = params_obj
        A, b = (None, None) if params_eq is None else params_eq
        G, h = (None, None) if params_ineq is None else params_ineq
        warm = None
        if init is not None:
            if not isinstance(init, KKTSolution):
                raise BindingError("InteriorPointQP.run: init must be None or the KKTSolution "
                                   f"of an earlier run; got {type(init).__name__}",
                                   parameter="init")
            if init.dual_ineq is not None and G is not None:
                warm = (init.primal, init.dual_ineq)
        sol = solve_qp(Q, p, G, h, A, b, tol=self.tol, maxiter=self.maxiter,
                       on_failure=self.on_failure, warm_start=warm)
        state = QPState(sol.iter_num, sol.error, sol.status, sol.slack, sol.primal_residual,
                        sol.dual_residual, sol.gap)
        return OptStep(KKTSolution(sol.x, sol.eq_dual, sol.ineq_dual), state)
