"""A compiled problem: batched torch functions, solvers and optimality maps.

:class:`Program` turns a :class:`~optlayer.compiler.classify.Plan` into

* ``f(z, P)``: the smooth objective to minimize, ``(B,)``;
* ``prox(z, step, P)``: projection onto the simple sets / prox of the
  non-smooth terms (identity for free variables);
* ``T(z, P)``: the method's fixed-point map (projected / proximal gradient
  step ``prox(z - step * grad f(z))``, or the KL mirror-descent step), or
  ``F(z, P) = grad f(z)`` for ``stationary``;
* ``solve(P, init)``: a batched forward solver (no graph), returning ``z``,
  a per-item status, iteration count and residual.

``z`` is the flat ``(B, N)`` packing of the variables (:class:`Layout`).
The solvers here are minimal batched loops (Newton with backtracking, FISTA
with backtracking and adaptive restart, exponentiated gradient); the layer
wraps them with ``custom_root`` / ``custom_fixed_point`` for gradients.
"""

from __future__ import annotations

import torch

from optlayer import defaults, projections
from optlayer import prox as prox_catalog
from optlayer.compiler.classify import Plan
from optlayer.compiler.lower import Layout, Tape, eval_like, eval_scalar
from optlayer.errors import OptTypeError
from optlayer.ir import get_set
from optlayer.status import Status

__all__ = ["Program", "SolveResult"]


class SolveResult:
    """Forward result: ``z (B, N)``, ``status`` int8 ``(B,)``, ``iterations`` (int),
    ``residual (B,)`` and the last accepted ``step (B,)``."""

    def __init__(self, z, status, iterations, residual, step):
        self.z, self.status, self.iterations = z, status, iterations
        self.residual, self.step = residual, step


class Program:
    """Batched torch functions of ``(z, params)`` for a classified problem.

    Args:
        problem: the bound problem.
        plan: its :class:`Plan`.
    """

    def __init__(self, problem, plan: Plan) -> None:
        self.problem, self.plan = problem, plan
        self.layout = Layout(problem.vars.values())
        self.tape = Tape([e for _, e in plan.smooth])
        pexprs = [w for _, w, _ in plan.prox.values() if w is not None]
        pexprs += [a for spec in plan.sets.values() for a in spec.args.values() if a is not None]
        self.param_tape = Tape(pexprs) if pexprs else None
        self._pv = (None, {})

    def pvals(self, P) -> dict:
        """Values of the parameter-only expressions (prox weights, set arguments); cached
        for the last ``P`` dict (the forward solve reuses one dict for all iterations)."""
        if self.param_tape is None:
            return {}
        if self._pv[0] is P:
            return self._pv[1]
        vals = self.param_tape.run(P)
        self._pv = (P, vals)
        return vals

    # ------------------------------------------------------------- lowering
    def env(self, z, P):
        e = dict(P)
        e.update(self.layout.unpack(z))
        return e

    def f(self, z, P) -> torch.Tensor:
        """Smooth part of the objective (to minimize), shape ``(B,)``."""
        B = z.shape[0]
        vals = self.tape.run(self.env(z, P))
        out = z.new_zeros(B)
        for coeff, e in self.plan.smooth:
            out = out + coeff * vals[id(e)].reshape(-1).expand(B)
        return out

    def objective(self, z, P) -> torch.Tensor:
        """The full objective (smooth + prox terms) to minimize, ``(B,)``."""
        out = self.f(z, P)
        B = z.shape[0]
        env, cache = self.env(z, P), {}
        for name, (_p, weight, _h) in self.plan.prox.items():
            atom_term = self._prox_atoms[name]
            out = out + eval_scalar(atom_term, env, cache, B) * (
                1.0 if weight is None else eval_scalar(weight, env, cache, B))
        return out

    @property
    def _prox_atoms(self):
        from optlayer.ir import apply

        return {name: apply(_atom_of(p), [self.problem.vars[name]])
                for name, (p, _w, _h) in self.plan.prox.items()}

    def grad(self, z, P) -> torch.Tensor:
        """``grad f(z)`` (``(B, N)``) by ``torch.func.grad``: differentiable, composes with
        autograd and torch.func (the implicit backward differentiates it)."""
        return torch.func.grad(lambda zz: self.f(zz, P).sum())(z)

    def value_and_grad(self, z, P):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            fz = self.f(zz, P)
            (g,) = torch.autograd.grad(fz.sum(), zz)
        return fz.detach(), g.detach()

    def _set_projection(self, name, x, env, cache, B):
        spec = self.plan.sets[name]
        shape = self.layout.shapes[name]
        k, a = spec.kind, spec.args
        if k == "nonneg":
            return projections.nonneg(x)
        if k == "box":
            lo = eval_like(a["lower"], env, cache, B, shape) if a.get("lower") is not None \
                else torch.full_like(x, -torch.inf)
            hi = eval_like(a["upper"], env, cache, B, shape) if a.get("upper") is not None \
                else torch.full_like(x, torch.inf)
            return torch.minimum(torch.maximum(x, lo), hi)
        if k == "psd":
            return projections.psd(x)
        if k == "soc":  # (t, u) with t first: the registry adapts the catalog's (u, t)
            return get_set("soc").project(x)
        if k == "simplex":
            v = a.get("value")
            v = 1.0 if v is None else eval_scalar(v, env, cache, B)
            return projections.simplex(x, v)
        fn = {"ball1": projections.l1_ball, "ball2": projections.l2_ball,
              "ballinf": projections.linf_ball}[k]
        r = a.get("radius")
        r = 1.0 if r is None else eval_scalar(r, env, cache, B)
        return fn(x.reshape(B, -1), r).reshape(x.shape)

    def prox(self, z, step, P) -> torch.Tensor:
        """Prox of the non-smooth part at ``z`` with per-item step ``step (B,)``."""
        B = z.shape[0]
        env, cache = P, dict(self.pvals(P))
        parts = self.layout.unpack(z)
        out = {}
        for name, x in parts.items():
            if name in self.plan.prox:
                pname, weight, hyper = self.plan.prox[name]
                w = hyper if weight is None else eval_scalar(weight, env, cache, B) * hyper
                if name in self.plan.sets:  # nonneg + l1
                    pname = "nonneg_lasso"
                fn = getattr(prox_catalog, pname)
                y = fn(x.reshape(B, -1), w, step).reshape(x.shape)
            elif name in self.plan.sets:
                y = self._set_projection(name, x, env, cache, B)
            else:
                y = x
            out[name] = y
        return self.layout.pack(out)

    # --------------------------------------------------------- optimality maps
    def fixed_point(self, z, P, step) -> torch.Tensor:
        """The method's fixed-point map ``T(z)`` (``z = T(z)`` at the solution)."""
        if self.plan.method == "mirror_descent":
            return self._md_step(z, self.grad(z, P), step, P)
        return self.prox(z - step[:, None] * self.grad(z, P), step, P)

    def _md_step(self, z, g, step, P):
        B = z.shape[0]
        env, cache = P, dict(self.pvals(P))
        parts, gparts = self.layout.unpack(z), self.layout.unpack(g)
        out = {}
        for name, x in parts.items():
            v = self.plan.sets[name].args.get("value")
            v = torch.ones(B, dtype=z.dtype, device=z.device) if v is None \
                else eval_scalar(v, env, cache, B)
            logx = torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))
            logits = logx - step[:, None] * gparts[name]
            out[name] = projections.kl_simplex(logits, v)
        return self.layout.pack(out)

    def init(self, P, B, dtype, device) -> torch.Tensor:
        z = torch.zeros(B, self.layout.size, dtype=dtype, device=device)
        if self.plan.method == "mirror_descent":
            parts = {}
            for name, shape in self.layout.shapes.items():
                v = self.plan.sets[name].args.get("value")
                v = torch.ones(B, dtype=dtype, device=device) if v is None \
                    else eval_scalar(v, dict(P), {}, B)
                parts[name] = (v[:, None] / shape[-1]).expand(B, *shape)
            z = self.layout.pack(parts)
        return z

    # ---------------------------------------------------------------- solvers
    def solve(self, P, init, *, tol, maxiter) -> SolveResult:
        m = self.plan.method
        with torch.no_grad():
            if m == "stationary":
                if self.layout.size <= defaults.NEWTON_MAX_SIZE:
                    return self._newton(P, init, tol, maxiter or defaults.MAXITER["newton"])
                return self._fista(P, init, tol, maxiter or defaults.MAXITER["first_order"])
            if m in ("proj_grad", "prox_grad"):
                return self._fista(P, init, tol, maxiter or defaults.MAXITER["first_order"])
            if m == "mirror_descent":
                return self._mirror(P, init, tol, maxiter or defaults.MAXITER["first_order"])
        raise OptTypeError(f"no iterative solver for method {m!r}")  # pragma: no cover

    def _hessian(self, z, P):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.f(zz, P).sum(), zz, create_graph=True)
            cols = [torch.autograd.grad(g[:, j].sum(), zz, retain_graph=True)[0]
                    for j in range(z.shape[1])]
        return g.detach(), torch.stack(cols, dim=-1)

    def _newton(self, P, z, tol, maxiter):
        B = z.shape[0]
        status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.int8, device=z.device)
        res = torch.full((B,), torch.inf, dtype=z.dtype, device=z.device)
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        it, best, stalled = 0, None, 0
        for it in range(1, maxiter + 1):  # noqa: B007
            g, H = self._hessian(z, P)
            res = g.norm(dim=-1)
            done = res <= tol * (1 + z.norm(dim=-1))
            if bool(done.all()):
                it -= 1
                break
            # Newton converges quadratically; no progress for 3 steps = roundoff floor
            worst = float(torch.where(done, 0, res).max())
            stalled = stalled + 1 if best is not None and worst > 0.5 * best else 0
            best = worst if best is None else min(best, worst)
            if stalled >= 3:
                break
            H = 0.5 * (H + H.transpose(-1, -2))
            L, info = torch.linalg.cholesky_ex(H)
            bad = info != 0
            if bool(bad.any()):
                shift = (H.diagonal(dim1=-2, dim2=-1).abs().amax(-1) * 1e-8 + 1e-12)
                L, info = torch.linalg.cholesky_ex(H + shift[:, None, None] * eye)
            d = -torch.cholesky_solve(g[..., None], L)[..., 0]
            f0 = self.f(z, P)
            t = torch.ones(B, dtype=z.dtype, device=z.device)
            slope = (g * d).sum(-1)
            for _ in range(30):
                fz = self.f(z + t[:, None] * d, P)
                # Armijo, with a roundoff margin (near the solution f changes below ulps)
                ok = (fz <= f0 + 1e-4 * t * slope + 16 * torch.finfo(z.dtype).eps * f0.abs()) \
                    | ~torch.isfinite(f0) | (slope >= 0)
                if bool(ok.all()):
                    break
                t = torch.where(ok, t, 0.5 * t)
            z = torch.where(done[:, None], z, z + t[:, None] * d)
        g = self.value_and_grad(z, P)[1]
        res = g.norm(dim=-1)
        ok = res <= tol * (1 + z.norm(dim=-1)) * 10
        status = torch.where(ok, torch.zeros_like(status), status)
        status = torch.where(torch.isfinite(z).all(-1), status,
                             torch.full_like(status, int(Status.NUMERICAL_ERROR)))
        return SolveResult(z, status, it, res, torch.ones_like(res))

    def _fista(self, P, z, tol, maxiter):
        B = z.shape[0]
        dt, dev = z.dtype, z.device
        L = torch.ones(B, dtype=dt, device=dev)
        x = self.prox(z, 1 / L, P)
        y, t = x, torch.ones(B, dtype=dt, device=dev)
        res = torch.full((B,), torch.inf, dtype=dt, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        it = 0
        for it in range(1, maxiter + 1):  # noqa: B007
            fy, gy = self.value_and_grad(y, P)
            for _ in range(60):
                xn = self.prox(y - gy / L[:, None], 1 / L, P)
                d = xn - y
                # sufficient decrease, with a roundoff margin of a few ulps of f
                fxn = self.f(xn, P)
                bound = fy + (gy * d).sum(-1) + 0.5 * L * (d * d).sum(-1)
                ok = fxn <= bound + 16 * torch.finfo(dt).eps * fy.abs()
                if bool(ok.all()):
                    break
                L = torch.where(ok, L, 2 * L)
            res = (L * d.norm(dim=-1)) / (1 + xn.norm(dim=-1))
            # gradient-based adaptive restart (O'Donoghue & Candes): no function values
            restart = ((y - xn) * (xn - x)).sum(-1) > 0
            tn = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
            yn = xn + ((t - 1) / tn)[:, None] * (xn - x)
            yn = torch.where(restart[:, None], xn, yn)
            tn = torch.where(restart, torch.ones_like(tn), tn)
            done = res <= tol
            x, y, t = xn, yn, tn
            if bool(done.all()):
                break
        # final residual of the fixed-point map with the last accepted step
        step = 1 / L
        Tx = self.prox(x - step[:, None] * self.value_and_grad(x, P)[1], step, P)
        res = (Tx - x).norm(dim=-1) / (step * (1 + x.norm(dim=-1)))
        status = _status(res, tol, x)
        return SolveResult(x, status, it, res, step)

    def _mirror(self, P, z, tol, maxiter):
        B = z.shape[0]
        dt, dev = z.dtype, z.device
        step = torch.ones(B, dtype=dt, device=dev)
        res = torch.full((B,), torch.inf, dtype=dt, device=dev)
        it = 0
        fz, g = self.value_and_grad(z, P)
        for it in range(1, maxiter + 1):  # noqa: B007
            for _ in range(60):
                zn = self._md_step(z, g, step, P)
                fn = self.f(zn, P)
                tiny = torch.finfo(dt).tiny
                kl = (zn * (torch.log(zn.clamp_min(tiny)) - torch.log(z.clamp_min(tiny)))).sum(-1)
                ok = fn <= fz + (g * (zn - z)).sum(-1) + kl / step \
                    + 16 * torch.finfo(dt).eps * fz.abs()
                if bool(ok.all()):
                    break
                step = torch.where(ok, step, 0.5 * step)
            res = (zn - z).norm(dim=-1) / step
            z = zn
            fz, g = self.value_and_grad(z, P)
            if bool((res <= tol).all()):
                break
        zn = self._md_step(z, g, step, P)
        res = (zn - z).norm(dim=-1) / step
        return SolveResult(z, _status(res, tol, z), it, res, step)


def _status(res, tol, z):
    s = torch.full(res.shape, int(Status.MAX_ITER), dtype=torch.int8, device=res.device)
    s = torch.where(res <= tol * 10, torch.zeros_like(s), s)
    s = torch.where(res <= tol * 1e3, torch.where(s == 0, s, torch.full_like(s, int(
        Status.OPTIMAL_INACCURATE))), s)
    return torch.where(torch.isfinite(z).all(-1) & torch.isfinite(res), s,
                       torch.full_like(s, int(Status.NUMERICAL_ERROR)))


def _atom_of(prox_name: str) -> str:
    from optlayer.ir import ATOMS

    for a in ATOMS.values():
        if getattr(a, "prox", None) == prox_name:
            return a.name
    raise OptTypeError(f"no atom with prox {prox_name!r}")  # pragma: no cover
