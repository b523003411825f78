"""The implicit-function-theorem products and the autograd.Function that carries them.

Let ``F(x, θ) = 0`` define ``x*(θ)`` and write ``A = ∂₁F(x*, θ)`` (square,
invertible) and ``B = ∂₂F(x*, θ)``. The implicit function theorem gives
``∂x*(θ) = -A⁻¹ B``, hence

* JVP (forward mode): ``∂x* · t = w`` where ``A w = -(B t)``;
* VJP (reverse mode): ``vᵀ ∂x* = -(uᵀ B)`` where ``Aᵀ u = v``.

``B t``, ``uᵀ B``, ``A w`` and ``Aᵀ u`` are JVPs/VJPs of F computed by
``torch.func``; the linear systems go to a solver of :mod:`optlayer.linalg`.

Everything that crosses :class:`ImplicitRoot` is a tensor: the solution's
leaves and the tensor leaves of ``(args, kwargs)``; the structure, the
non-tensor arguments, F and the linear solver travel in a :class:`RootSpec`
(a non-tensor input, which ``torch.func`` passes through unbatched). The
function saves the solution and the arguments only — never a solver iterate —
so backward memory is O(size of the solution + arguments) whatever the number
of solver iterations.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from optlayer import defaults
from optlayer.errors import OptTypeError
from optlayer.linalg import solve_gmres, solve_lu
from optlayer.status import OptimizationWarning
from optlayer.tree import TreeDef, flatten, unflatten

__all__ = ["RootSpec", "ImplicitRoot", "default_solve", "make_spec", "vjp_core", "jvp_core",
           "solve_point"]

_POINT = threading.local()


def solve_point():
    """The point of the implicit linear solve in progress, for a linear solver that
    builds its matrix itself (e.g. in closed form from values the layer passed as
    extra arguments of the decorated solver).

    Returns:
        ``(x, args, kwargs)`` -- the packed solution and the decorated solver's
        arguments as saved for this call, detached -- while the solve of a plain
        first-order backward (``loss.backward()``, no ``create_graph``, no
        torch.func transform) runs in this thread; None otherwise.
    """
    return getattr(_POINT, "value", None)


def default_solve(matvec, b, **options):
    """The default linear solve of :func:`custom_root`: dense LU for systems up to
    ``defaults.IMPLICIT_DENSE_MAX`` unknowns, restarted GMRES above.

    ``∂₁F`` is in general neither symmetric (fixed points) nor definite (KKT),
    so the default must handle any nonsingular matrix. Materialising it costs
    ``n`` JVPs/VJPs run as one ``vmap`` and is exact, differentiable to any
    order (second derivatives of the layer are exact) and vmappable; above a
    few thousand unknowns the O(n²) memory and O(n³) time favour GMRES.
    """
    n = flatten(b)[0][0].shape[-1]
    if n <= defaults.IMPLICIT_DENSE_MAX:
        return solve_lu(matvec, b, **options)
    return solve_gmres(matvec, b, **options)


def _is_diff(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


@dataclass(frozen=True, eq=False)
class RootSpec:
    """Everything non-tensor about one implicit root: F, the solve, the structures."""

    fun: Any
    solve: Any
    sol_def: TreeDef
    sol_shapes: tuple
    arg_def: TreeDef
    arg_template: tuple  # the (args, kwargs) leaves, with None where a tensor goes
    tensor_pos: tuple  # positions of the tensor leaves in arg_template
    what: str = "custom_root"

    @property
    def n_sol(self) -> int:
        return len(self.sol_shapes)

    def rebuild_args(self, tensors) -> tuple[tuple, dict]:
        leaves = list(self.arg_template)
        for pos, t in zip(self.tensor_pos, tensors, strict=True):
            leaves[pos] = t
        args, kwargs = unflatten(self.arg_def, leaves)
        return args, kwargs

    def sol_tree(self, leaves):
        return unflatten(self.sol_def, list(leaves))

    def pack(self, leaves) -> torch.Tensor:
        if len(leaves) == 1:
            return leaves[0].reshape(-1)
        return torch.cat([leaf.reshape(-1) for leaf in leaves])

    def unpack(self, vec: torch.Tensor) -> list:
        if len(self.sol_shapes) == 1:
            return [vec.reshape(self.sol_shapes[0])]
        sizes = [_numel(s) for s in self.sol_shapes]
        return [p.reshape(s) for p, s in zip(torch.split(vec, sizes), self.sol_shapes, strict=True)]

    def residual_leaves(self, out) -> list:
        """Flatten F's output and check it matches the solution leaf by leaf."""
        leaves, td = flatten(out)
        shapes = tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in leaves)
        if shapes != self.sol_shapes:
            raise OptTypeError(
                f"{self.what}: the optimality function must return one tensor per solution "
                f"tensor, with the same shapes; the solution {self.sol_def!r} has shapes "
                f"{list(self.sol_shapes)} but F returned {td!r} with shapes {list(shapes)}",
                hint="F(x, *args, **kwargs) is a residual that vanishes at the solution x; "
                "for a solution (primal, dual) return (stationarity, feasibility) "
                "shaped like (primal, dual)",
            )
        return leaves

    def F(self, xvec: torch.Tensor, arg_tensors) -> torch.Tensor:
        """F at the packed solution ``xvec``, packed; ``arg_tensors`` fill the tensor slots."""
        args, kwargs = self.rebuild_args(arg_tensors)
        out = self.fun(self.sol_tree(self.unpack(xvec)), *args, **kwargs)
        return self.pack(self.residual_leaves(out))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_spec(fun, solve, sol, args, kwargs, what) -> tuple[RootSpec, list, list]:
    """Split a solution and ``(args, kwargs)`` into a :class:`RootSpec` and tensor lists."""
    sol_leaves, sol_def = flatten(sol)
    if not sol_leaves:
        raise OptTypeError(f"{what}: the solver returned an empty solution {sol_def!r}")
    for leaf in sol_leaves:
        if not isinstance(leaf, torch.Tensor) or not _is_diff(leaf):
            kind = leaf.dtype if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise OptTypeError(
                f"{what}: the solution must be a floating-point tensor or a tuple/list/dict "
                f"of them; found a leaf of type {kind} in {sol_def!r}",
                hint="with has_aux=True the solver returns (solution, aux)",
            )
    arg_leaves, arg_def = flatten((tuple(args), dict(kwargs)))
    tensor_pos = tuple(i for i, a in enumerate(arg_leaves) if isinstance(a, torch.Tensor))
    template = tuple(None if i in tensor_pos else a for i, a in enumerate(arg_leaves))
    spec = RootSpec(
        fun=fun,
        solve=solve if solve is not None else default_solve,
        sol_def=sol_def,
        sol_shapes=tuple(tuple(x.shape) for x in sol_leaves),
        arg_def=arg_def,
        arg_template=template,
        tensor_pos=tensor_pos,
        what=what,
    )
    return spec, sol_leaves, [arg_leaves[i] for i in tensor_pos]


def _solve(spec: RootSpec, matvec, b: torch.Tensor, system: str) -> torch.Tensor:
    """Run the linear solve; re-issue its warnings with what they mean here."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = spec.solve(matvec, b)
    for w in caught:
        if issubclass(w.category, OptimizationWarning):
            warnings.warn(
                f"{spec.what}: implicit differentiation could not solve {system} accurately: "
                "∂₁F may be singular or ill-conditioned at the solution (the solution is not "
                "an isolated root of F, or F is not the right optimality map), or the "
                "iterative solve needs more iterations. Check that the solver converged and "
                "that F(x*, θ) = 0 determines x* locally; try solve=optlayer.linalg.solve_lstsq "
                "or a ridge (e.g. solve=functools.partial(solve_gmres, ridge=1e-6)).\n"
                f"Linear solver report: {w.message}",
                OptimizationWarning,
                stacklevel=2,
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(x, torch.Tensor) or x.shape != b.shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise OptTypeError(
            f"{spec.what}: the linear solver must return x shaped like b {tuple(b.shape)}; "
            f"got {got}",
            hint="a solver follows the protocol solve(matvec, b) -> x of optlayer.linalg",
        )
    return x


def _plain_first_order() -> bool:
    """True inside a plain ``loss.backward()`` (no create_graph, no torch.func transform).

    There the backward need not be differentiable, so F is linearised with
    ``torch.autograd.grad`` on detached copies (cheaper per matvec than
    ``torch.func.vjp``, which always builds a differentiable graph)."""
    if torch.is_grad_enabled():
        return False
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return active is not None and not active()


def vjp_core(spec: RootSpec, sol_leaves, arg_tensors, cot_leaves, needed=None) -> list:
    """``vᵀ ∂x*`` for every tensor argument (None where not floating or not ``needed``).

    Solves ``∂₁F(x*, θ)ᵀ u = v`` then returns ``-uᵀ ∂₂F(x*, θ)``. F is
    linearised twice -- in x alone for the solve's matvec (so each matvec
    costs one VJP in x, not in every argument) and in the arguments once.
    """
    x = spec.pack(sol_leaves)
    v = spec.pack([
        c if c is not None else torch.zeros_like(s)
        for c, s in zip(cot_leaves, sol_leaves, strict=True)
    ])
    diff = [
        i for i, t in enumerate(arg_tensors)
        if _is_diff(t) and (needed is None or needed[i])
    ]
    out: list = [None] * len(arg_tensors)
    system = "∂₁F(x*, θ)ᵀ u = v"
    if _plain_first_order():
        # one graph of F in (x, θ): the matvecs differentiate it in x only (autograd
        # runs just the nodes on a path to x), the final product in θ only
        full = [a.detach() for a in arg_tensors]
        for i in diff:
            full[i] = full[i].requires_grad_()
        with torch.enable_grad():
            xr = x.detach().requires_grad_()
            fx = spec.F(xr, full)

        def matvec(w):
            return torch.autograd.grad(fx, xr, w, retain_graph=True)[0]

        outer = solve_point()
        _POINT.value = (x.detach(), *spec.rebuild_args([a.detach() for a in arg_tensors]))
        try:
            u = _solve(spec, matvec, v.detach(), system)
        finally:
            _POINT.value = outer
        if diff:
            grads = torch.autograd.grad(fx, [full[i] for i in diff], -u, allow_unused=True)
            for i, g in zip(diff, grads, strict=True):
                out[i] = g
        return out

    dargs = [arg_tensors[i] for i in diff]

    def fxa(xv, *d):
        full = list(arg_tensors)
        for i, a in zip(diff, d, strict=True):
            full[i] = a
        return spec.F(xv, full)

    if sum(a.numel() for a in dargs) <= x.numel():
        # Small arguments (hyperparameters): one joint linearisation in (x, θ);
        # the θ-part of each matvec costs no more than the x-part.
        _, vjp_all = torch.func.vjp(fxa, x, *dargs)
        u = _solve(spec, lambda w: vjp_all(w)[0], v, system)
        grads = vjp_all(-u)[1:]
    else:
        # Large arguments (data): linearise in x alone for the matvecs.
        _, vjp_x = torch.func.vjp(lambda xv: fxa(xv, *dargs), x)
        u = _solve(spec, lambda w: vjp_x(w)[0], v, system)
        grads = torch.func.vjp(lambda *d: fxa(x, *d), *dargs)[1](-u) if diff else ()
    for i, g in zip(diff, grads, strict=True):
        out[i] = g
    return out


def jvp_core(spec: RootSpec, sol_leaves, arg_tensors, arg_tangents) -> list:
    """``∂x* · t`` as a list of solution leaves (zeros if no argument has a tangent)."""
    x = spec.pack(sol_leaves)
    live = [
        i for i, (t, dt) in enumerate(zip(arg_tensors, arg_tangents, strict=True))
        if dt is not None and _is_diff(t)
    ]
    if not live:
        return [torch.zeros_like(s) for s in sol_leaves]

    def f_args(*largs):
        full = list(arg_tensors)
        for i, a in zip(live, largs, strict=True):
            full[i] = a
        return spec.F(x, full)

    primals = tuple(arg_tensors[i] for i in live)
    tans = tuple(arg_tangents[i].to(arg_tensors[i]) for i in live)
    Bt = _jvp(f_args, primals, tans)

    def matvec(w):
        return _jvp(lambda xv: spec.F(xv, arg_tensors), (x,), (w,))

    w = _solve(spec, matvec, -Bt, "∂₁F(x*, θ) w = -∂₂F(x*, θ) t")
    return spec.unpack(w)


def _jvp(fn, primals: tuple, tangents: tuple) -> torch.Tensor:
    """``∂fn(primals) · tangents`` by forward mode, or by reverse-over-reverse where
    forward mode cannot nest (inside a plain ``torch.autograd.forward_ad`` level)."""
    try:
        return torch.func.jvp(fn, primals, tangents)[1]
    except RuntimeError as err:
        if "Nested forward mode" not in str(err):
            raise
    # fn is differentiable, so u -> vjp(u) is linear and its own VJP with
    # cotangent t is the JVP: d/du <vjp(u), t> = ∂fn · t.
    out, vjp_fn = torch.func.vjp(fn, *primals)
    _, vjp_of_vjp = torch.func.vjp(vjp_fn, torch.zeros_like(out))
    return vjp_of_vjp(tangents)[0]


def _refuse_forward_over_forward(spec: RootSpec) -> None:
    """torch.func runs a custom jvp rule at each forward-mode level but does not
    differentiate the rule itself at an enclosing forward level, so
    ``jacfwd(jacfwd(solver))`` would silently drop the term from x* moving with θ.
    Refuse it loudly (reverse-over-forward and forward-over-reverse are exact)."""
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        kinds = [str(i.key()) for i in retrieve_all_functorch_interpreters()]
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        return
    if sum(k.endswith("Jvp") for k in kinds) > 1:
        raise NotImplementedError(
            f"{spec.what}: forward-over-forward differentiation (jacfwd of jacfwd, jvp of "
            "jvp) of an implicit solution is not supported; use torch.func.hessian / "
            "jacfwd(jacrev(...)) or jacrev(jacfwd(...)), which are exact"
        )


class ImplicitRoot(torch.autograd.Function):
    """Identity on the solution whose derivatives come from the implicit function theorem.

    ``apply(spec, *sol_leaves, *arg_tensors) -> sol_leaves``. The solution
    inputs get no gradient (the solver is not differentiated); the argument
    tensors get ``vjp_core`` / contribute through ``jvp_core``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(spec, *tensors):
        return tuple(t.clone() for t in tensors[: spec.n_sol])

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, *tensors = inputs
        ctx.spec = spec
        # Save the *outputs* (not the detached solution inputs): they carry the
        # implicit derivative of x*(θ) themselves, so differentiating the
        # backward or the jvp again (second order) accounts for x* moving with θ.
        saved = (*output, *tensors[spec.n_sol :])
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *cots):
        spec = ctx.spec
        saved = ctx.saved_tensors
        sol, args = saved[: spec.n_sol], saved[spec.n_sol :]
        if all(c is None for c in cots):
            return (None,) * (1 + len(saved))
        needed = ctx.needs_input_grad[1 + spec.n_sol :]
        grads = vjp_core(spec, sol, args, cots, needed)
        return (None,) + (None,) * spec.n_sol + tuple(grads)

    @staticmethod
    def jvp(ctx, _spec_tangent, *tangents):
        spec = ctx.spec
        saved = ctx.saved_tensors
        sol, args = saved[: spec.n_sol], saved[spec.n_sol :]
        _refuse_forward_over_forward(spec)
        # The saved solution is the detached solver output. Re-enter it into this
        # Function so that x* depends on θ for an enclosing reverse-mode level
        # (jacrev of jacfwd): the jvp rule is then differentiated exactly.
        sol = ImplicitRoot.apply(spec, *sol, *args)
        return tuple(jvp_core(spec, sol, args, tangents[spec.n_sol :]))
