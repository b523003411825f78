"""``OptLayer``: a declared optimization problem as a differentiable ``nn.Module``.

Forward: bind and check the parameters (``Problem.check_params``), broadcast
unbatched ones to the batch, solve without a graph, then attach implicit
gradients — ``custom_root(grad f)`` for ``stationary``,
``custom_fixed_point(T)`` on the method's fixed-point map for ``proj_grad``,
``prox_grad`` and ``mirror_descent``; the projection pattern is
differentiated through the closed-form projection, and ``kkt`` through the
batched QP solver's own implicit backward (a QP/LP after the epigraph rewrite)
or, for general smooth convex constraints, by ``custom_root`` on the KKT map
of :func:`optlayer.conditions.kkt` around the convex interior point. Epigraph
variables of the rewrite are internal: only the user's variables are returned.
"""

from __future__ import annotations

import functools
import warnings
from collections import namedtuple
from typing import NamedTuple

import torch
from torch import nn

from optlayer import defaults
from optlayer.compiler import METHODS, canonicalize_qp, compile_problem, expand_params, explain_plan
from optlayer.compiler.canon import solve_convex
from optlayer.compiler.iterate import block_solve, jacobian, replicate
from optlayer.compiler.lower import eval_like
from optlayer.errors import BindingError, OptTypeError, report_status
from optlayer.implicit import custom_fixed_point, custom_root
from optlayer.linalg._common import functorch_active
from optlayer.status import Status, check_on_failure, failed_mask
from optlayer.tree import tree_ordinary

__all__ = ["OptLayer", "LayerInfo", "build_layer", "random_params"]


class LayerInfo(NamedTuple):
    """What the last forward call did: per-item ``status`` (int8), ``iterations``,
    ``residual`` (the optimality map's residual per item) and the ``method``."""

    status: torch.Tensor
    iterations: int
    residual: torch.Tensor
    method: str


class OptLayer(nn.Module):
    """A problem of the IR as a layer: ``layer(**params) -> solution``.

    Args:
        problem: an :class:`optlayer.ir.Problem` (DCP-checked here).
        dims: sizes for symbolic dims (defaults fill the rest).
        method: force one of ``"projection", "stationary", "proj_grad",
            "prox_grad", "mirror_descent", "kkt"`` (must apply); None picks
            the default of DESIGN.md section 5.
        solver: accepted for API compatibility; only the default solver of
            each method exists (any other value is an error).
        tol, maxiter: forward solver settings (defaults by dtype / family).
        on_failure: ``"raise"`` (default), ``"warn"``, ``"mask"`` (NaN rows, of the
            solution and of :meth:`duals`, and zero gradient for failed items) or
            ``"ignore"``.
        warm_start: reuse the previous solution as the initial point when the
            shapes match (``kkt`` on the QP path: the previous call's active set is
            solved for first; the convex interior point starts cold).

    Raises:
        OptTypeError: unknown option, or a forced method that does not apply.
        NonConvexError, BindingError: from checking the problem and dims.

    Example:
        >>> import torch, optlayer as ol
        >>> layer = ol.compile("var x[3]\\nparam y[3]\\nminimize sum_squares(x - y)\\n"
        ...                    "subject to\\n x in simplex")
        >>> layer.method
        'projection'
        >>> x = layer(y=torch.tensor([0.2, 0.4, -1.0], dtype=torch.float64))
        >>> torch.allclose(x, torch.tensor([0.4, 0.6, 0.0], dtype=torch.float64))
        True
    """

    def __init__(self, problem, *, dims=None, method=None, solver=None, tol=None,
                 maxiter=None, on_failure="raise", warm_start=False) -> None:
        super().__init__()
        check_on_failure(on_failure)
        if solver is not None and solver != "default":
            raise OptTypeError(f"unknown solver {solver!r}",
                               hint="only solver=None (the method's default) is available")
        if method is not None and method not in METHODS:
            raise OptTypeError(f"unknown method {method!r}", hint="methods: " + ", ".join(METHODS))
        problem.check_dcp()
        if dims is not None or any(not isinstance(d, int) for v in
                                   list(problem.vars.values()) + list(problem.params.values())
                                   for d in v.shape):
            problem = problem.bind(dims or {})
        self.problem = problem
        self.program = compile_problem(problem, method)
        self.plan = self.program.plan
        self.tol, self.maxiter, self.on_failure = tol, maxiter, on_failure
        self.warm_start = warm_start
        self.info: LayerInfo | None = None
        self._last = None
        self._qp_last = None    # (x, z) of the last QP solve: the kkt path's warm start
        self._duals = None
        self._implicit: dict = {}
        self._kkt_layer: dict = {}    # the layer that solves calls whose guards fail
        names = list(problem.vars)
        self._Solution = namedtuple("Solution", names) if len(names) > 1 else None

    @property
    def method(self) -> str:
        """The method in use (``"stationary"``, ``"proj_grad"``, ...)."""
        return self.plan.method

    def explain(self) -> str:
        """The method-table row, why it applies, the optimality map and the solver."""
        return explain_plan(self.plan, self.problem, self.program)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, vars={list(self.problem.vars)}"

    # ------------------------------------------------------------------ forward
    def forward(self, warm_start=None, **params):
        if torch.is_inference_mode_enabled():
            # the solve takes autograd inside (the quadratic data, canonicalisation, the
            # gradient of f), which inference tensors refuse: solve on ordinary copies,
            # out of inference mode and without a graph
            with torch.inference_mode(False), torch.no_grad():
                return self._forward(*tree_ordinary((warm_start, params)))
        if functorch_active():
            try:
                return self._forward(warm_start, params)
            except RuntimeError as err:   # torch's own error, from inside a forward solver
                raise OptTypeError(
                    f"OptLayer (method {self.method!r}) cannot run under this torch.func "
                    "transform (jacrev, jacfwd, grad, vmap, ...): its forward solver takes "
                    "autograd and inference mode inside, which the transform refuses "
                    f"(torch: {str(err).splitlines()[0][:120]})",
                    hint="differentiate with loss.backward() or torch.autograd.grad; a "
                    "Jacobian with torch.autograd.functional.jacobian(f, x) (vectorize=False); "
                    "batch by a leading batch dimension of the parameters, not vmap") from err
        return self._forward(warm_start, params)

    def _forward(self, warm_start, params):
        values = self.problem.check_params(params)
        if not values:
            raise BindingError("the problem has no parameters; there is nothing to bind",
                               hint="declare at least one `param`")
        P, B, batched = expand_params(self.problem, values)
        if self.plan.guards and not bool(self.program.guards_hold(
                {k: v.detach() for k, v in P.items()}).all()):
            return self._by_kkt(warm_start, params)
        t0 = next(iter(values.values()))
        dtype, device = t0.dtype, t0.device
        tol = self.tol if self.tol is not None else defaults.tol(dtype)
        m = self.plan.method
        if m == "projection":
            z, status, iters, res = self._project(P, B)
        elif m == "kkt":
            z, status, iters, res = self._kkt(P, B, dtype, device, tol)
        else:
            init = self._init(warm_start, P, B, dtype, device)
            Pd = {k: v.detach() for k, v in P.items()}
            qp = None
            if self.program.quadratic:
                # with a graph where the backward will run: the map of _attach reuses it
                with torch.set_grad_enabled(_differentiable(P)):
                    qp = self.program.quad(P)
            r = self.program.solve(Pd, init, tol=tol, maxiter=self.maxiter,
                                   qp=None if qp is None else tuple(t.detach() for t in qp))
            z = self._attach(r, P, qp)
            status, iters, res = r.status, r.iterations, r.residual
        self.info = LayerInfo(status, iters, res, m)
        report_status(status, self.on_failure, f"OptLayer ({m})")
        if self.on_failure == "mask":
            bad = failed_mask(status)[:, None]
            z = torch.where(bad, torch.full_like(z, torch.nan), z)
            if m == "kkt":   # the failed items' multipliers are NaN rows too
                zi, ze, isz, esz = self._duals
                zi, ze = (None if d is None else torch.where(bad, torch.nan, d)
                          for d in (zi, ze))
                self._duals = (zi, ze, isz, esz)
        self._last = z.detach()
        parts = self.program.layout.unpack(z)
        parts = {k: parts[k] for k in self.problem.vars}  # kkt: drop epigraph variables
        if not batched:
            parts = {k: v[0] for k, v in parts.items()}
        if self._Solution is None:
            return next(iter(parts.values()))
        return self._Solution(**parts)

    def _by_kkt(self, warm_start, params):
        """The call solved by ``kkt`` (a layer made once): some item's ``norm2`` term that
        the method treats as smooth may vanish at the solution (:meth:`Program.guards_hold`),
        where the method's map is not differentiable. ``info.method`` says ``"kkt"``."""
        layer = self._kkt_layer.get("kkt")
        if layer is None:
            layer = self._kkt_layer["kkt"] = OptLayer(
                self.problem, method="kkt", tol=self.tol, maxiter=self.maxiter,
                on_failure=self.on_failure)
        out = layer._forward(warm_start, params)
        self.info, self._last = layer.info, None
        return out

    def _init(self, warm_start, P, B, dtype, device):
        if warm_start is not None:
            ws = warm_start
            if isinstance(ws, torch.Tensor):
                ws = {self.program.layout.names[0]: ws}
            else:
                ws = dict(zip(self.program.layout.names, ws, strict=True))
            ws = {k: (v if v.dim() > len(self.program.layout.shapes[k]) else v.unsqueeze(0))
                  .detach().to(dtype=dtype, device=device)
                  .expand(B, *self.program.layout.shapes[k]) for k, v in ws.items()}
            return self.program.layout.pack(ws)
        if self.warm_start and self._last is not None and self._last.shape[0] == B \
                and self._last.dtype == dtype and self._last.device == device \
                and bool(torch.isfinite(self._last).all()):
            return self._last
        return None  # the program's default start

    def _attach(self, r, P, qp):
        """Implicit gradients on the solved ``z`` through the method's optimality map.

        The map is the lowered one (the tape, differentiable in ``P``), with ``grad f``
        as ``Q z + p`` for a quadratic ``f``: ``qp = (Q, p)``, computed in the forward
        with a graph in ``P`` and passed to the implicit function, so the backward
        differentiates that graph once instead of ``f``'s tape twice. Its
        per-item Jacobian block for the backward solve
        (:func:`optlayer.compiler.iterate.block_solve`) is built in the backward
        from the call's saved values: the forward's last Newton Jacobian when there
        is one (checked there against one product of the map), the Hessian at the
        solution from the objective's closed-form model (stationary Newton), else in
        closed form from the values of ``qp`` for a quadratic smooth part, else from one
        stacked evaluation. Those values travel as arguments of the implicit function
        (the map ignores ``extra``), so they belong to this call
        whatever other calls run before its backward. The decorated identity solver
        is cached per shape, so the eager check of the map in
        :func:`optlayer.custom_root` runs once per shape, not at every call.
        """
        if not _differentiable(P):
            return r.z
        B, N = r.z.shape
        key = (B, N)
        fn = self._implicit.get(key)
        program = self.program
        stationary = self.plan.method == "stationary"
        if fn is None:
            solve = block_solve(B, N, functools.partial(_map_blocks, program, stationary))
            if stationary:
                def F(z, step, Pa, extra, qp):
                    return program.grad(z, Pa, qp)

                fn = custom_root(F, solve=solve)(_identity_solver)
            else:
                def T(z, step, Pa, extra, qp):
                    return program.fixed_point(z, Pa, step, qp)

                fn = custom_fixed_point(T, solve=solve)(_identity_solver)
            self._implicit[key] = fn
        if r.jacobian is not None and not stationary and r.exact:
            extra = {"jacobian": r.jacobian}   # dT/dz at z* itself
        elif r.jacobian is not None and not stationary:
            # dT/dx at the last iterate x (z* = T(x), ||z* - x|| within the tolerance)
            extra = {"forward_jacobian": r.jacobian}
        elif r.jacobian is not None:
            # the Hessian at z* from the objective's closed-form model
            extra = {"hessian": r.jacobian}
        else:
            extra = {}
        return fn(r.z, r.step.detach(), P, extra, qp)

    def _project(self, P, B):
        name, y_expr, _scale = self.plan.projection
        shape = self.program.layout.shapes[name]
        env, cache = dict(P), {}
        y = eval_like(y_expr, env, cache, B, shape)
        x = self.program._set_projection(name, y, env, cache, B)
        z = x.reshape(B, -1)
        # one reduction, then a test on (B,): a row sum is finite iff the row is (a finite
        # row so large that its sum overflows is reported too, as a numerical error)
        status = torch.where(torch.isfinite(z.sum(-1)), 0,
                             int(Status.NUMERICAL_ERROR)).to(torch.int8)
        return z, status, 0, torch.zeros(B, dtype=z.dtype, device=z.device)

    def _kkt(self, P, B, dtype, device, tol):
        """Method ``kkt``: the QP path (``solve_qp``, its own implicit backward) or the
        general convex path (convex interior point, ``custom_root`` on the KKT map)."""
        if self.plan.solver == "convex":
            sol = solve_convex(self.program, P, tol=tol, maxiter=self.maxiter)
            self._duals = (sol.ineq_dual, sol.eq_dual, sol.ineq_sizes, sol.eq_sizes)
            return sol.z, sol.status, sol.iterations, sol.residual
        try:
            from optlayer.solvers import solve_qp
        except ImportError:  # pragma: no cover - depends on the solvers branch
            raise OptTypeError("method 'kkt' needs optlayer.solvers.solve_qp, which is not "
                               "installed in this build",
                               hint="use another applicable method: " +
                               ", ".join(self.plan.applicable)) from None
        Q, p, G, h, A, b, isz, esz = canonicalize_qp(self.program, P, B, dtype, device)
        warm = self._qp_last if self.warm_start else None
        if warm is not None and (warm[0].shape[0] != B or warm[0].dtype != dtype
                                 or warm[0].device != device):
            warm = None
        sol = solve_qp(Q, p, G, h, A, b, tol=tol, maxiter=self.maxiter, on_failure="ignore",
                       warm_start=warm)
        if self.warm_start:
            self._qp_last = None if sol.ineq_dual is None else (sol.x.detach(),
                                                                 sol.ineq_dual.detach())
        # detached, as the convex path's: the layer keeps them until the next call, and
        # differentiable duals would keep this call's graph alive with them (the
        # parameters, the KKT factorization the backward holds)
        self._duals = tuple(None if t is None else t.detach()
                            for t in (sol.ineq_dual, sol.eq_dual)) + (isz, esz)
        res = getattr(sol, "error", torch.zeros(B, dtype=dtype, device=device))
        x = sol.x if _differentiable(P) else sol.x.detach()
        return x, sol.status, int(torch.as_tensor(sol.iter_num).max()), res

    def duals(self, label: str | None = None):
        """Multipliers of labelled constraints from the last call (``kkt`` only), detached.

        Args:
            label: a constraint label; None returns a dict label -> multipliers.

        Returns:
            A tensor ``(B, rows)`` (or dict of them). Inequality multipliers
            are ``>= 0``; with ``Q x + p + G'z + A'y = 0`` (QP path) or
            ``grad f + dg' lam + A' nu = 0`` (convex path), each for the
            labelled constraint as written (a constraint rewritten with
            epigraph variables, or a cone row, reports the multiplier of the
            user's constraint).

        Raises:
            OptTypeError: not a kkt layer, no call yet, or an unknown label.
        """
        if self.plan.method != "kkt":
            raise OptTypeError(f"duals are available for method 'kkt', this layer uses "
                               f"{self.plan.method!r}", hint="compile with method='kkt'")
        if self._duals is None:
            raise OptTypeError("no duals yet: call the layer first")
        zi, ze, isz, esz = self._duals
        out: dict = {}
        for items, sizes, dual in ((self.plan.ineq, isz, zi), (self.plan.eq, esz, ze)):
            start = 0
            for row, k in zip(items, sizes, strict=True):
                lab = row.label
                if lab is not None:
                    d = dual[..., start:start + k]
                    out[lab] = torch.cat([out[lab], d], -1) if lab in out else d
                start += k
        if label is None:
            return out
        if label not in out:
            raise OptTypeError(f"no labelled constraint {label!r}",
                               hint="labels: " + (", ".join(out) or "none"))
        return out[label]


def _map_blocks(program, stationary, x, args, kwargs):
    """``(J, verify)`` for :func:`optlayer.compiler.iterate.block_solve` from the saved
    values of one call: the forward's Jacobian (``dT/dx - I`` near the solution, to be
    verified) or :func:`_map_jacobian` at the solution."""
    step, P, extra, qp = args
    z = x.reshape(step.shape[0], -1)
    if "forward_jacobian" in extra:
        return _minus_eye(extra["forward_jacobian"]), True
    if "jacobian" in extra:   # at z* itself: exact, no check
        return _minus_eye(extra["jacobian"]), False
    if "hessian" in extra:   # closed form at z* itself (as Q below): exact, no check
        return extra["hessian"], False
    return _map_jacobian(program, z, step, P, qp, stationary), False


def _map_jacobian(program, z, step, P, qp, stationary):
    """Per-item Jacobian ``(B, N, N)`` of the layer's optimality map at ``z`` (no graph):
    ``Q`` or ``J_prox (I - step Q) - I`` in closed form where available, else one stacked
    evaluation (:func:`optlayer.compiler.iterate.jacobian`)."""
    N = z.shape[1]
    eye = torch.eye(N, dtype=z.dtype, device=z.device)
    if stationary:
        if qp is not None:
            return qp[0]
        return jacobian(lambda Z, k: program.grad(Z, replicate(P, k)), z)
    if qp is not None and program.plan.method != "mirror_descent":
        Q, p = qp
        jac = program.prox_jacobian_fn(P)
        if jac is not None:
            y = z - step[:, None] * torch.baddbmm(p.unsqueeze(-1), Q, z.unsqueeze(-1))[..., 0]
            Jp = jac(y, program.prox_fn(P)(y, step), step)
            return torch.baddbmm(-eye, Jp, eye - step[:, None, None] * Q)
    return jacobian(lambda Z, k: program.fixed_point(Z, replicate(P, k), replicate(step, k),
                                                     replicate(qp, k)), z) - eye


def _differentiable(P) -> bool:
    """Whether this call builds a graph: grad mode on and some parameter requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in P.values())


def _minus_eye(J):
    return J - torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)


def _identity_solver(init, *args):
    """The forward solve already ran: the implicit wrapper receives ``z*`` as ``init``."""
    return init


def build_layer(problem, **options) -> OptLayer:
    """The factory behind ``Problem.layer(**options)``."""
    return OptLayer(problem, **options)


def _register() -> None:
    from optlayer.ir.problem import set_layer_factory

    set_layer_factory(build_layer)


_register()
warnings.filterwarnings("default", category=DeprecationWarning, module=__name__)


def random_params(problem, *, batch=None, dtype=torch.float64, device="cpu", seed=0) -> dict:
    """Random parameter values that fit the declarations of a bound problem.

    ``psd`` gives a positive definite matrix ``M M' / k + I``, ``symmetric`` a
    symmetric one, ``pos`` values in ``[0.5, 1.5]``, ``nonneg`` ``|N(0, 1)|``,
    ``nonpos`` ``-|N(0, 1)|``; others standard normal.

    Args:
        problem: a problem with concrete shapes.
        batch: a leading batch size, or None.
        dtype, device, seed: of the generated tensors.

    Returns:
        dict name -> tensor.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in problem.params.items():
        shape = tuple(int(d) for d in p.shape)
        full = ((batch,) if batch else ()) + shape
        t = torch.randn(full, generator=g, dtype=torch.float64)
        if "psd" in p.attrs:
            k = shape[-1]
            t = t @ t.transpose(-1, -2) / k + torch.eye(k, dtype=t.dtype)
        elif "symmetric" in p.attrs:
            t = 0.5 * (t + t.transpose(-1, -2))
        if "pos" in p.attrs:
            t = 0.5 + torch.rand(full, generator=g, dtype=torch.float64)
        elif "nonneg" in p.attrs:
            t = t.abs()
        elif "nonpos" in p.attrs:
            t = -t.abs()
        out[name] = t.to(dtype=dtype, device=device)
    return out
