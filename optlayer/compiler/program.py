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
The forward solvers live in :mod:`optlayer.compiler.iterate` (first-order
iterations finished by Newton steps on the fixed-point residual); the layer
wraps them with ``custom_root`` / ``custom_fixed_point`` for gradients. When
the smooth part is quadratic (:func:`~optlayer.compiler.quadratic.is_quadratic`)
``grad f`` is ``Qz + p`` with ``(Q, p)`` read off once per call (:meth:`Program.quad`).
"""

from __future__ import annotations

import torch

from optlayer import defaults, projections
from optlayer import prox as prox_catalog
from optlayer.compiler import iterate
from optlayer.compiler.classify import Plan
from optlayer.compiler.coefficients import QuadraticModel
from optlayer.compiler.iterate import SolveResult
from optlayer.compiler.lower import Layout, Tape, eval_like, eval_scalar
from optlayer.compiler.quadratic import bmv, is_quadratic, quadratic_data
from optlayer.compiler.smooth import objective_model, objective_terms
from optlayer.errors import OptTypeError
from optlayer.ir import get_set
from optlayer.linalg._common import functorch_active

__all__ = ["Program", "SolveResult"]


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
        self._parts: list = []  # (P, parts) of the last few parameter dicts
        #: what other compiler modules derive from the plan once and reuse at every call
        #: (the row tapes and the row structure of the KKT paths)
        self.derived: dict = {}
        #: True when f is quadratic and small enough for a dense (Q, p) per item.
        self.quadratic = (self.layout.size <= defaults.QUADRATIC_MAX_SIZE
                          and is_quadratic([e for _, e in plan.smooth]))

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
    def polyhedral(self) -> bool:
        """Whether every prox term is piecewise affine and every set a polyhedron: with a
        quadratic ``f`` the forward-backward envelope is then piecewise quadratic
        (:func:`optlayer.compiler.iterate.fbn_solve`'s line search reads it)."""
        return (all(p in _POLYHEDRAL_PROX for p, _w, _h in self.plan.prox.values())
                and all(get_set(spec.kind).polyhedral for spec in self.plan.sets.values()))

    @property
    def _prox_atoms(self):
        from optlayer.ir import apply

        return {name: apply(_atom_of(p), [self.problem.vars[name]])
                for name, (p, _w, _h) in self.plan.prox.items()}

    def quadratic_model(self) -> QuadraticModel:
        """The objective's :class:`~optlayer.compiler.coefficients.QuadraticModel` (made
        once; its ``ok`` says whether it covers the objective's terms)."""
        model = self.derived.get("quadratic")
        if model is None:
            model = self.derived["quadratic"] = QuadraticModel(self.layout, self.plan.smooth)
        return model

    def guards_hold(self, P) -> torch.Tensor:
        """Per item ``(B,)``: whether every ``norm2(u)`` term the plan treats as smooth
        (``plan.guards``, ``u = Jz + c`` affine) is smooth at every point: the least value
        of ``|Jz + c|`` over all ``z``, the distance of ``c`` from the range of ``J`` (the
        last diagonal entry of the QR factor of ``[J c]``, on the columns of the variables
        ``u`` has), is above ``sqrt(eps) |c|``. Then ``f`` is twice differentiable
        everywhere, with curvature at most ``J'J`` over that floor, and the first-order
        methods' maps hold at the solution; where it is not, the norm may vanish at the
        solution, and the layer solves the call by ``kkt``. (A rank-deficient ``J`` on
        those columns gives a smaller distance, so it errs toward ``kkt``.)"""
        from optlayer.compiler.smooth import Rows, bare_row, taylor

        t = next(iter(P.values()))
        B, N = t.shape[0], self.layout.size
        guards = self.derived.get("guards")
        if guards is None:
            guards = []
            for u in self.plan.guards:
                names = {v.name for v in u.variables()}
                cols = [i for n in self.layout.names if n in names
                        for i in range(self.layout.slices[n].start, self.layout.slices[n].stop)]
                guards.append((Rows(self, [bare_row(u)]),
                               None if len(cols) == N else torch.tensor(cols)))
            self.derived["guards"] = guards
        ok = torch.ones(B, dtype=torch.bool, device=t.device)
        eps = torch.finfo(t.dtype).eps
        for rows, cols in guards:
            cJ = rows.coefficients(P, B, t)
            c, J = (v.detach() for v in cJ) if cJ is not None else \
                taylor(rows, P, B, N, rows.sizes(t.new_zeros(1, N), {k: v[:1] for k, v in
                                                                        P.items()})[0],
                       t.dtype, t.device, second=False)[:2]
            if cols is not None:
                J = J.index_select(-1, cols.to(J.device))
            n = J.shape[-1]
            if c.shape[-1] <= n:     # as many unknowns as rows: u = 0 is reachable
                return torch.zeros_like(ok)
            R = torch.linalg.qr(torch.cat([J, c.unsqueeze(-1)], -1), mode="r")[1]
            ok = ok & (R[:, n, n].abs() > eps ** 0.5 * torch.linalg.vector_norm(c, dim=-1))
        return ok

    def quad(self, P):
        """``(Q, p)`` with ``f(z) = 1/2 z'Qz + p'z + c`` (only for :attr:`quadratic`);
        differentiable in ``P`` when a parameter requires grad: from the terms'
        coefficients where the model covers them, else read off at ``N + 1`` points."""
        t = next(iter(P.values()))
        model = self.quadratic_model()
        if defaults.READOFF_COEFFICIENTS and model.ok:
            return model(P, t.shape[0], t)
        return quadratic_data(self.f, P, t.shape[0], self.layout.size, t.dtype, t.device)

    def grad(self, z, P, qp=None) -> torch.Tensor:
        """``grad f(z)`` (``(B, N)``), differentiable in ``z`` and ``P``: ``Qz + p`` for
        ``qp = (Q, p)``; else plain autograd with ``create_graph`` (``torch.func.grad``
        under a torch.func transform, where autograd.grad cannot run)."""
        if qp is not None:
            return bmv(qp[0], z) + qp[1]
        if functorch_active():
            return torch.func.grad(lambda zz: self.f(zz, P).sum())(z)
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z if (graph and z.requires_grad) else z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.f(zz, P).sum(), zz, create_graph=graph)
        return g

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
            return _simplex(x, v)
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

    def _prox_parts(self, P):
        """The pieces of :meth:`prox` for the parameters ``P``: ``[(slice, shape, kind,
        args)]`` with weights and set arguments evaluated, adjacent equal-size simplex or
        group-l2 variables merged; None when some variable has no specialisation (balls,
        psd, matrix simplices, other proxes). Cached for the last few ``P`` dicts (the
        solvers reuse one dict, and one per number of stacked copies)."""
        for q, parts in self._parts:
            if q is P:
                return parts
        parts = self._compute_prox_parts(P)
        self._parts = [(P, parts)] + self._parts[:3]
        return parts

    def prox_specialised(self) -> bool:
        """Whether :meth:`prox_fn` (and :meth:`prox_jacobian_fn`) has a specialisation
        for every variable: prox terms of :data:`_SPECIALISED_PROX`, sets of
        :data:`_SPECIALISED_SETS` (a simplex of a vector only)."""
        for name in self.layout.names:
            if name in self.plan.prox:
                if self.plan.prox[name][0] not in _SPECIALISED_PROX:
                    return False
            elif name in self.plan.sets:
                kind = self.plan.sets[name].kind
                if kind not in _SPECIALISED_SETS or \
                        kind == "simplex" and len(self.layout.shapes[name]) != 1:
                    return False
        return True

    def _compute_prox_parts(self, P):
        if not self.prox_specialised():
            return None
        B = next(iter(P.values())).shape[0]
        env, cache = P, dict(self.pvals(P))
        t0 = next(iter(P.values()))
        parts = []
        for name in self.layout.names:
            sl, shape = self.layout.slices[name], self.layout.shapes[name]
            if name in self.plan.prox:
                pname, weight, hyper = self.plan.prox[name]
                w = hyper if weight is None else eval_scalar(weight, env, cache, B) * hyper
                w = torch.as_tensor(w, dtype=t0.dtype, device=t0.device).expand(B)
                if pname == "lasso":
                    kind = "nonneg_lasso" if name in self.plan.sets else "lasso"
                elif pname == "group_lasso":
                    kind = "group_lasso"
                else:
                    return None
                parts.append((sl, shape, kind, w))
            elif name in self.plan.sets:
                spec = self.plan.sets[name]
                if spec.kind == "nonneg":
                    parts.append((sl, shape, "nonneg", None))
                elif spec.kind == "box":
                    a = spec.args
                    lo = eval_like(a["lower"], env, cache, B, shape).reshape(B, -1) \
                        if a.get("lower") is not None else None
                    hi = eval_like(a["upper"], env, cache, B, shape).reshape(B, -1) \
                        if a.get("upper") is not None else None
                    parts.append((sl, shape, "box", (lo, hi)))
                elif spec.kind == "simplex" and len(shape) == 1:
                    v = spec.args.get("value")
                    v = 1.0 if v is None else eval_scalar(v, env, cache, B)[:, None]
                    parts.append((sl, shape, "simplex", v))
                elif spec.kind in ("ball1", "ball2", "ballinf"):
                    r = spec.args.get("radius")
                    r = 1.0 if r is None else eval_scalar(r, env, cache, B)
                    r = torch.as_tensor(r, dtype=t0.dtype, device=t0.device).expand(B)
                    parts.append((sl, shape, spec.kind, r))
                elif spec.kind == "psd":
                    parts.append((sl, shape, "psd", shape[-1]))
                else:
                    return None
            else:
                parts.append((sl, shape, "free", None))
        return _merge_blocks(parts, B, t0)

    def prox_fn(self, P, copies: int = 1):
        """:meth:`prox` specialised to the parameters ``P`` of one forward solve.

        Weights and set arguments are evaluated once; each call then costs a few
        torch operations per variable (no unpacking for a single variable). Sets
        without a specialisation (second-order cones, matrix simplices) use
        :meth:`prox`'s general path.

        Args:
            P: parameters, each ``(B, ...)``.
            copies: for ``z`` holding this many stacked copies of the batch (the
                evaluated weights are repeated, not re-evaluated).

        Returns:
            ``prox(z, step)`` with ``step (copies B,)``, equal to
            ``self.prox(z, step, replicate(P, copies))``.
        """
        parts = self._prox_parts(P)
        if parts is None:
            Pk = P if copies == 1 else iterate.replicate(P, copies)
            return lambda z, step: self.prox(z, step, Pk)
        if copies > 1:
            parts = [(sl, shape, kind, _repeat(a, copies)) for sl, shape, kind, a in parts]
        single = len(parts) == 1

        def prox(z, step):
            outs = []
            for sl, _shape, kind, a in parts:
                x = z if single else z[:, sl]
                if kind == "free":
                    y = x
                elif kind == "nonneg":
                    y = x.clamp_min(0)
                elif kind == "box":
                    y = torch.clamp(x, a[0], a[1])
                elif kind == "simplex":
                    y = _simplex(x, a)
                elif kind == "simplex_blocks":  # k equal-size simplex variables at once
                    y = _simplex(x.reshape(x.shape[0], a.shape[1], -1), a).reshape(x.shape)
                elif kind == "group_blocks":  # k equal-size group-l2 variables at once
                    xb = x.reshape(x.shape[0], a.shape[1], -1)
                    nrm = torch.linalg.vector_norm(xb, dim=-1, keepdim=True)
                    t = a.unsqueeze(-1) * step[:, None, None]
                    den = torch.maximum(nrm, t).clamp_min(torch.finfo(x.dtype).tiny)
                    # xb (1 - t / den); den >= t: no clamp
                    y = torch.addcmul(xb, xb, t / den, value=-1.0).reshape(x.shape)
                elif kind == "lasso":
                    t = (a * step)[:, None]
                    y = x - torch.clamp(x, -t, t)
                elif kind == "nonneg_lasso":
                    y = (x - (a * step)[:, None]).clamp_min(0)
                elif kind == "ball1":
                    y = projections.l1_ball(x, a)
                elif kind == "ball2":
                    y = projections.l2_ball(x, a)
                elif kind == "ballinf":
                    y = torch.clamp(x, -a[:, None], a[:, None])
                elif kind == "psd":
                    y = projections.psd(x.reshape(-1, a, a)).reshape(x.shape)
                else:  # group_lasso on the whole variable
                    nrm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
                    t = (a * step)[:, None]
                    den = torch.maximum(nrm, t).clamp_min(torch.finfo(x.dtype).tiny)
                    y = torch.addcmul(x, x, t / den, value=-1.0)
                outs.append(y)
            return outs[0] if single else torch.cat(outs, dim=-1)

        return prox

    def prox_jacobian_fn(self, P):
        """The Jacobian of :meth:`prox_fn` in closed form, specialised to ``P``.

        Per variable: ``diag(x == y)`` (nonneg, box, l-inf ball), ``diag(x != 0)`` (l1
        proxes), ``diag(s) - s s' / |S|`` (simplex, ``s`` the support; with signs for
        the l1 ball), ``(1 - t/|y|) I + t/|y| u u'`` with ``u = y / |y|`` (group l2,
        zero when ``x = 0``; ``r/|y| (I - u u')`` for the l2 ball) and the
        Daleckii-Krein form for the PSD cone; equal-size simplex / group blocks are
        computed together.

        Returns:
            ``jac(y, x, step) -> (B, N, N)`` (``x = prox(y, step)``), or None when
            :meth:`prox_fn` has no specialisation (then use autograd).
        """
        parts = self._prox_parts(P)
        if parts is None:
            return None
        single = len(parts) == 1
        t0 = next(iter(P.values()))
        # per simplex / group-l2 part: the group size and, for several groups, the 0/1
        # mask of the block diagonal (same group), made once for the solve
        groups = {}
        for i, (sl, _shape, kind, a) in enumerate(parts):
            if kind in _RANK_ONE:
                n = sl.stop - sl.start
                m = n if kind in ("simplex", "group_lasso") else n // a.shape[1]
                g = torch.arange(n, device=t0.device) // m
                groups[i] = (m, None if m == n else (g[:, None] == g[None, :]).to(t0.dtype))

        def jac(y, x, step):
            diag, lowrank, dense = [], [], []
            for i, (sl, _shape, kind, a) in enumerate(parts):
                yv, xv = (y, x) if single else (y[:, sl], x[:, sl])
                if kind == "free":
                    diag.append(torch.ones_like(yv))
                elif kind in ("nonneg", "box", "ballinf"):
                    diag.append((xv == yv).to(y.dtype))
                elif kind in ("lasso", "nonneg_lasso"):
                    diag.append((xv != 0).to(y.dtype))
                elif kind in _RANK_ONE:  # per group: diag(d) + w v'
                    m, mask = groups[i]
                    d, w, v = _RANK_ONE[kind](yv, xv, m)
                    diag.append(d)
                    lowrank.append((sl, w, v, mask))
                else:  # l1 / l2 ball, psd cone: dense
                    if single:
                        return _set_jacobian(kind, yv, xv, a)
                    diag.append(torch.zeros_like(yv))
                    dense.append((sl, _set_jacobian(kind, yv, xv, a)))
            J = torch.diag_embed(diag[0] if single else torch.cat(diag, dim=-1))
            for sl, w, v, mask in lowrank:
                outer = w[:, :, None] * v[:, None, :]
                if mask is not None:
                    outer = outer * mask
                if single:
                    J = J + outer
                else:
                    J[:, sl, sl] += outer
            for sl, Jd in dense:
                J[:, sl, sl] = Jd
            return J

        return jac

    def penalty_fn(self, P, copies: int = 1):
        """:meth:`penalty` specialised to ``P`` (weights evaluated once): ``pen(z) -> (B,)``
        (``copies``: as in :meth:`prox_fn`)."""
        if not self.plan.prox:
            return lambda z: z.new_zeros(z.shape[0])
        parts = self._prox_parts(P)
        if parts is not None and all(h == 1.0 for _p, _w, h in self.plan.prox.values()):
            return _parts_penalty(parts, copies)
        B = next(iter(P.values())).shape[0]
        env, cache = P, dict(self.pvals(P))
        terms = []
        for name, (pname, weight, _hyper) in self.plan.prox.items():
            w = None if weight is None else _repeat(eval_scalar(weight, env, cache, B), copies)
            terms.append((self.layout.slices[name], _PENALTY[pname], w))

        def pen(z):
            out = 0
            for sl, norm, w in terms:
                v = norm(z[:, sl])
                out = out + (v if w is None else w * v)
            return out

        return pen

    def penalty(self, z, P) -> torch.Tensor:
        """Value ``(B,)`` of the prox-able terms at ``z`` (``weight * norm(x)``); the set
        indicators are not included (callers compare feasible points)."""
        B = z.shape[0]
        env, cache = P, dict(self.pvals(P))
        out = z.new_zeros(B)
        for name, x in self.layout.unpack(z).items():
            if name not in self.plan.prox:
                continue
            pname, weight, _hyper = self.plan.prox[name]
            x = x.reshape(B, -1)
            norm = _PENALTY[pname](x)
            out = out + (norm if weight is None else eval_scalar(weight, env, cache, B) * norm)
        return out

    # --------------------------------------------------------- optimality maps
    def fixed_point(self, z, P, step, qp=None, g=None) -> torch.Tensor:
        """The method's fixed-point map ``T(z)`` (``z = T(z)`` at the solution) with
        per-item step ``step (B,)``; ``qp = (Q, p)`` for a quadratic ``f``; ``g``:
        ``grad f(z)`` when the caller has it (else computed here)."""
        if g is None:
            g = self.grad(z, P, qp)
        if self.plan.method == "mirror_descent":
            return self.md_step(z, g, step, P)
        return self.prox_fn(P)(z - step[:, None] * g, step)

    def md_fn(self, P):
        """:meth:`md_step` specialised to ``P`` (simplex values evaluated once), taking
        ``log z`` (clamped at the smallest normal number) instead of ``z``:
        ``md(logz, g, step) -> z+``."""
        B = next(iter(P.values())).shape[0]
        env, cache = P, dict(self.pvals(P))
        parts = []
        for name in self.layout.names:
            v = self.plan.sets[name].args.get("value")
            v = None if v is None else eval_scalar(v, env, cache, B)[:, None]
            parts.append((self.layout.slices[name], len(self.layout.shapes[name]) == 1, v))
        if len(parts) == 1 and parts[0][1]:
            v = parts[0][2]

            def md1(logz, g, step):
                y = torch.softmax(logz - step[:, None] * g, dim=-1)
                return y if v is None else v * y

            return md1

        def md(logz, g, step):
            outs = []
            for name, (sl, _vec, v) in zip(self.layout.names, parts, strict=True):
                B_ = logz.shape[0]
                shape = self.layout.shapes[name]
                lg = (logz[:, sl] - step[:, None] * g[:, sl]).reshape(B_, *shape)
                y = torch.softmax(lg, dim=-1)
                if v is not None:
                    y = y * v.reshape(B_, *([1] * len(shape)))
                outs.append(y.reshape(B_, -1))
            return torch.cat(outs, dim=-1)

        return md

    def md_step(self, z, g, step, P):
        """Exponentiated-gradient step ``normalize(z exp(-step g))`` per simplex variable."""
        env, cache = P, dict(self.pvals(P))
        parts, gparts = self.layout.unpack(z), self.layout.unpack(g)
        out = {}
        for name, x in parts.items():
            v = self._simplex_value(name, env, cache, z)
            logx = torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))
            logits = logx - step[:, None] * gparts[name]
            out[name] = projections.kl_simplex(logits, v)
        return self.layout.pack(out)

    def simplex_rows(self, P):
        """The equalities ``sum(x) = value`` of the simplex sets (vector variables) as
        ``(A (k, N), b (B, k))``, or None without simplices."""
        names = [n for n, s in self.plan.sets.items() if s.kind == "simplex"]
        if not names:
            return None
        t = next(iter(P.values()))
        dtype, device = t.dtype, t.device
        key = ("simplex_rows", dtype, device)
        if key not in self.derived:   # an ordinary tensor even when first made in inference mode
            with torch.inference_mode(False):
                A = torch.zeros(len(names), self.layout.size, dtype=dtype)
                for i, n in enumerate(names):
                    A[i, self.layout.slices[n]] = 1.0
                self.derived[key] = A.to(device)
        env, cache = dict(P), {}
        b = [self._simplex_value(n, env, cache, t) for n in names]
        return self.derived[key], torch.stack(b, dim=-1)

    def _simplex_value(self, name, env, cache, like) -> torch.Tensor:
        """The ``value`` of ``name``'s simplex per item, ``(B,)`` (1 by default)."""
        v = self.plan.sets[name].args.get("value")
        B = like.shape[0]
        if v is None:
            return torch.ones(B, dtype=like.dtype, device=like.device)
        return eval_scalar(v, env, cache, B)

    def init(self, P, B, dtype, device) -> torch.Tensor:
        z = torch.zeros(B, self.layout.size, dtype=dtype, device=device)
        if self.plan.method == "mirror_descent":
            parts, env, cache = {}, dict(P), {}
            for name, shape in self.layout.shapes.items():
                v = self._simplex_value(name, env, cache, z)
                parts[name] = (v[:, None] / shape[-1]).expand(B, *shape)
            z = self.layout.pack(parts)
        return z

    # ---------------------------------------------------------------- solvers
    def solve(self, P, init, *, tol, maxiter, qp=None) -> SolveResult:
        """Forward solve (no graph) from ``init (B, N)``, or from the default start when
        ``init`` is None; ``qp``: :meth:`quad` of ``P``."""
        self._parts = []
        try:
            return self._solve(P, init, tol, maxiter, qp)
        finally:
            self._parts = []  # drop the stacked copies' entries

    def forward_solver(self) -> str:
        """Which forward solver :meth:`solve` runs at this size: ``"newton"`` (stationary,
        dense Hessians), ``"fbn"`` (forward-backward Newton: quadratic ``f`` with
        polyhedral sets and prox terms, or a prox without a closed-form Jacobian; dense
        Jacobians), ``"normal_newton"`` (Newton on the normal map: a quadratic ``f`` with a
        curved set or prox term, or ``f`` with a closed-form model,
        :func:`optlayer.compiler.smooth.objective_terms`, and a specialised prox; FISTA
        where the model is missing at a call), ``"mirror"`` or ``"first_order"`` (FISTA).

        Forward+backward at batch 32 against forward-backward Newton: group_lasso 0.72x,
        psd_trace 0.92x; on polyhedral ones it does not pay (lasso 1.08x, constrained_ls
        1.06x, elastic_net 0.86x), where the full step of forward-backward Newton is exact
        once the active pieces are right."""
        m, N = self.plan.method, self.layout.size
        if m == "stationary" and N <= defaults.NEWTON_MAX_SIZE:
            return "newton"
        if m in ("proj_grad", "prox_grad") and N <= defaults.FP_NEWTON_MAX_SIZE:
            if self.quadratic and (self.polyhedral or not self.prox_specialised()):
                return "fbn"
            if (self.quadratic or objective_terms(self) is not None) \
                    and self.prox_specialised():
                return "normal_newton"
        return "mirror" if m == "mirror_descent" else "first_order"

    def _solve(self, P, init, tol, maxiter, qp) -> SolveResult:
        m = self.plan.method
        if m not in ("stationary", "proj_grad", "prox_grad", "mirror_descent"):
            raise OptTypeError(f"no iterative solver for method {m!r}")  # pragma: no cover
        cold = init is None
        if cold:
            t = next(iter(P.values()))
            init = self.init(P, t.shape[0], t.dtype, t.device)
        kind = self.forward_solver()
        with torch.no_grad():
            if kind == "newton":
                return _in_float64(_newton, self, P, init, tol,
                                   maxiter or defaults.MAXITER["newton"], qp)
            if kind == "fbn" and qp is not None:
                args = (self, P, init, tol, maxiter or defaults.MAXITER["first_order"], qp)
                if self._prox_parts(P) is None:   # its prox Jacobian takes autograd
                    return iterate.fbn_solve(*args, cold=cold)
                return _without_autograd(iterate.fbn_solve, *args, cold=cold)
            if kind == "mirror":
                return iterate.mirror_solve(self, P, init, tol,
                                            maxiter or defaults.MAXITER["first_order"])
            maxiter = maxiter or defaults.MAXITER["first_order"]
            model = None if qp is not None else objective_model(self, P)
            if kind == "normal_newton" and (model is not None or qp is not None):
                return _without_autograd(iterate.normal_newton_solve, self, P, init, tol,
                                         maxiter, model, self.prox_jacobian_fn(P), qp)
            return iterate.prox_grad_solve(self, P, init, tol, maxiter, qp, model)


def _newton(prog, P, init, tol, maxiter, qp) -> SolveResult:
    """:func:`iterate.newton_solve`, with the closed-form derivative model of ``f`` where it
    has one (:func:`optlayer.compiler.smooth.objective_model`; a quadratic ``f`` has
    ``qp``)."""
    model = None if qp is not None else objective_model(prog, P)
    return iterate.newton_solve(prog, P, init, tol, maxiter, qp, model)


def _in_float64(solver, prog, P, init, tol, maxiter, qp) -> SolveResult:
    """``solver`` run in float64 to float64's tolerance on narrower inputs, its point
    returned in their dtype and judged by their ``tol``, as ``solve_qp`` and the convex
    interior point do: in float32 a dense Newton step's roundoff (the gradient's, the
    Hessian's factorization) can hold the residual above float32's tolerance
    (softmax_regression, batch 32, seed 13: one item stalled at 1.6e-4,
    OPTIMAL_INACCURATE), and a residual of float32's ``tol`` leaves points up to 2e-5
    from float64's."""
    dt = init.dtype
    if dt == torch.float64:
        return solver(prog, P, init, tol, maxiter, qp)

    def wide(t):
        return t.to(torch.float64)

    r = solver(prog, {k: wide(v) for k, v in P.items()}, wide(init),
               min(tol, defaults.tol(torch.float64)), maxiter,
               None if qp is None else tuple(map(wide, qp)))
    z = r.z.to(dt)
    return SolveResult(z, iterate.status_of(r.residual, tol, z), r.iterations,
                       r.residual.to(dt), r.step.to(dt),
                       None if r.jacobian is None else r.jacobian.to(dt))


def _without_autograd(solver, *args, **kwargs) -> SolveResult:
    """``solver(*args, **kwargs)`` run in ``torch.inference_mode`` (no version counters
    or view tracking, which at small sizes is a tenth of the time), its result cloned
    out of it. Only for solvers that take no autograd inside."""
    with torch.inference_mode():
        r = solver(*args, **kwargs)
    return SolveResult(*(t.clone() if isinstance(t, torch.Tensor) else t for t in
                         (r.z, r.status, r.iterations, r.residual, r.step, r.jacobian)),
                       exact=r.exact)


def _merge_blocks(parts, B, like):
    """Merge runs of adjacent simplex (or group-l2) variables of one size into one part
    handled by a single batched call: ``(slice, None, kind_blocks, args (B, k))``."""
    out = []
    for part in parts:
        sl, shape, kind, a = part
        prev = out[-1] if out else None
        size = sl.stop - sl.start
        if kind in ("simplex", "group_lasso") and prev is not None \
                and prev[2] in (kind, kind + "_blocks" if kind == "simplex" else "group_blocks") \
                and prev[0].stop == sl.start and prev[4] == size:
            vals = prev[3] if prev[2].endswith("blocks") else _as_col(prev[3], B, like)
            merged = "simplex_blocks" if kind == "simplex" else "group_blocks"
            out[-1] = (slice(prev[0].start, sl.stop), None, merged,
                       torch.cat([vals, _as_col(a, B, like)], dim=1), size)
        else:
            out.append((sl, shape, kind, a, size))
    return [(sl, shape, kind, a) for sl, shape, kind, a, _ in out]


def _repeat(a, k: int):
    """An evaluated prox argument (None, a number, a ``(B, ...)`` tensor or a tuple of
    them) for ``k`` stacked copies of the batch."""
    if k == 1 or a is None or isinstance(a, (int, float)):
        return a
    if isinstance(a, tuple):
        return tuple(_repeat(t, k) for t in a)
    return a.repeat(k, *([1] * (a.dim() - 1)))


def _as_col(a, B, like):
    """A per-item scalar (float, ``(B,)`` or ``(B, 1)``) as a ``(B, 1)`` tensor."""
    t = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1).expand(B, 1) if t.numel() in (1, B) else t.reshape(B, 1)


def _set_jacobian(kind, y, x, a):
    """Jacobian ``(B, n, n)`` of the projection ``x = P(y)`` onto an l1 / l2 ball of radius
    ``a (B,)`` or (``kind == "psd"``, ``a = m``) the PSD cone of ``m x m`` matrices
    (flattened row-major, the symmetric part projected)."""
    B, n = y.shape
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    if kind == "ball1":  # outside: sign(y) simplex(|y|): diag(s) - sigma sigma' / |S|
        inside = (y.abs().sum(-1) <= a)[:, None, None]
        s = (x != 0).to(y.dtype)
        sig = torch.sign(y) * s
        J = torch.diag_embed(s) - sig[:, :, None] * sig[:, None, :] \
            / s.sum(-1).clamp_min(1)[:, None, None]
        return torch.where(inside, eye, J)
    if kind == "ball2":  # outside: r / |y| (I - u u')
        nrm = torch.linalg.vector_norm(y, dim=-1)
        out = nrm > a
        safe = torch.where(out, nrm, 1.0)
        u = y / safe[:, None]
        J = (a / safe)[:, None, None] * (eye - u[:, :, None] * u[:, None, :])
        return torch.where(out[:, None, None], J, eye)
    # psd (Daleckii-Krein): dP[H] = V (Gamma o V' sym(H) V) V', Gamma_ij the divided
    # differences of max(., 0) (its derivative on near-ties, as projections.psd)
    m = a
    Y = y.reshape(B, m, m)
    w, V = torch.linalg.eigh(0.5 * (Y + Y.transpose(-1, -2)))
    fw = torch.relu(w)
    dw = w[:, :, None] - w[:, None, :]
    scale = w.abs().amax(-1)[:, None, None].clamp_min(1.0)
    tie = dw.abs() <= 1e3 * torch.finfo(w.dtype).eps * scale
    deriv = (w > 0).to(w.dtype)
    gamma = torch.where(tie, 0.5 * (deriv[:, :, None] + deriv[:, None, :]),
                        (fw[:, :, None] - fw[:, None, :]) / torch.where(tie, 1.0, dw))
    K = (V[:, :, None, :, None] * V[:, None, :, None, :]).reshape(B, n, n)  # V kron V
    J = (K * gamma.reshape(B, 1, n)) @ K.transpose(1, 2)
    return 0.5 * (J + J.reshape(B, n, m, m).transpose(-1, -2).reshape(B, n, n))


def _simplex_rank_one(y, x, m):
    """The simplex projection's Jacobian per group of ``m``: ``diag(s) - s s' / |S|``
    (``s`` the support of ``x``) as ``(d, w, v) = (s, -s / |S|, s)``."""
    s = (x > 0).to(y.dtype)
    cnt = s.unflatten(-1, (-1, m)).sum(-1, keepdim=True).clamp_min(1)
    return s, (s.unflatten(-1, (-1, m)) / cnt).flatten(-2).neg_(), s


def _group_rank_one(y, x, m):
    """The group-l2 prox's Jacobian per group of ``m``: ``(1 - r) I + r u u'`` with
    ``r = t / |y|``, ``u = y / |y|`` where ``x != 0`` (zero where the group is cut to
    0), as ``(d, w, v) = (a, (1 - a) y / |y|^2, y)`` with ``a = |x| / |y|`` (= 1 - r,
    and 0 on a cut group)."""
    yb = y.unflatten(-1, (-1, m))
    ny = torch.linalg.vector_norm(yb, dim=-1, keepdim=True)
    nx = torch.linalg.vector_norm(x.unflatten(-1, (-1, m)), dim=-1, keepdim=True)
    inv = ny.clamp_min(torch.finfo(y.dtype).tiny).reciprocal()
    a = nx * inv
    c = ((nx > 0).to(y.dtype) - a).mul_(inv).mul_(inv)
    return a.expand_as(yb).flatten(-2), (c * yb).flatten(-2), y


#: prox terms and sets :meth:`Program.prox_fn` specialises (others take :meth:`Program.prox`)
_SPECIALISED_PROX = ("lasso", "group_lasso")
_SPECIALISED_SETS = ("nonneg", "box", "simplex", "ball1", "ball2", "ballinf", "psd")

#: prox / projection kinds whose Jacobian is, per group, a diagonal plus a rank-one term
_RANK_ONE = {"simplex": _simplex_rank_one, "simplex_blocks": _simplex_rank_one,
             "group_lasso": _group_rank_one, "group_blocks": _group_rank_one}


def _simplex(x, value):
    """Projection onto ``{z >= 0 : sum(z) = value}`` along the last dim (sort-based), in
    the fewest torch calls (the layer's sparsemax is measured against the closed form).

    The same point as :func:`optlayer.projections.simplex`. Autograd gives its exact
    Jacobian ``diag(s) - s s'/|S|`` (``s`` the support): the threshold is the mean of the
    ``rho`` largest entries minus ``value / rho``, with the integer ``rho`` constant.
    """
    n = x.shape[-1]
    u = torch.sort(x, dim=-1, descending=True).values
    if isinstance(value, torch.Tensor):
        value = value.reshape(value.shape + (1,) * (x.dim() - value.dim()))
    css = u.cumsum(-1) - value
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    rho = (u * k > css).sum(-1, keepdim=True).clamp_min(1)
    tau = css.gather(-1, rho - 1) / rho
    return (x - tau).clamp_min(0)


def _parts_penalty(parts, copies: int):
    """The penalty ``pen(z) -> (B,)`` from :meth:`Program._prox_parts` (weights evaluated,
    equal-size groups merged: one norm for all of them)."""
    single = len(parts) == 1
    terms = [(sl, _PART_PENALTY[kind], _repeat(a, copies)) for sl, _shape, kind, a in parts
             if kind in _PART_PENALTY]

    def pen(z):
        out = None
        for sl, value, a in terms:
            v = value(z if single else z[:, sl], a)
            out = v if out is None else out + v
        return out

    return pen


_PENALTY = {
    "lasso": lambda x: x.abs().sum(-1),
    "group_lasso": lambda x: torch.linalg.vector_norm(x, dim=-1),
    "linf": lambda x: x.abs().amax(-1),
}

#: the penalty of each prox part that carries one (Program._prox_parts), from its
#: values ``x (B, n)`` and evaluated weight ``a`` (``(B,)``; ``(B, k)`` for k groups)
_PART_PENALTY = {
    "lasso": lambda x, a: a * _PENALTY["lasso"](x),
    "nonneg_lasso": lambda x, a: a * _PENALTY["lasso"](x),
    "group_lasso": lambda x, a: a * _PENALTY["group_lasso"](x),
    "group_blocks": lambda x, a: torch.linalg.vecdot(
        a, _PENALTY["group_lasso"](x.reshape(x.shape[0], a.shape[1], -1))),
}

#: the prox terms of _PENALTY that are piecewise affine (their prox is too)
_POLYHEDRAL_PROX = frozenset({"lasso", "linf"})


def _atom_of(prox_name: str) -> str:
    from optlayer.ir import ATOMS

    for a in ATOMS.values():
        if getattr(a, "prox", None) == prox_name:
            return a.name
    raise OptTypeError(f"no atom with prox {prox_name!r}")  # pragma: no cover
