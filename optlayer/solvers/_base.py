"""The shared machinery of the iterative solvers: state, loop, status, policy, implicit diff.

Every solver is a dataclass with ``init_state(init, *args, **kwargs)``,
``update(params, state, *args, **kwargs) -> OptStep`` and ``optimality_fun``;
:meth:`IterativeSolver.run` runs the loop and returns ``OptStep(params, state)``.

Batching. ``params`` is a tensor of shape ``(*batch, n)`` (or a tuple of such
tensors sharing ``batch``); every state tensor starts with the batch
dimensions. Each item has its own step size and its own convergence flag: an
item whose ``error`` falls below ``tol`` is frozen (its params and state stop
changing, by masked updates), and the loop stops when no item is still
running. The only host synchronisation per iteration is that one check (every
``check_every`` iterations).

Status. While running an item's status is ``MAX_ITER``; it becomes
``OPTIMAL`` when ``error <= tol``, ``NUMERICAL_ERROR`` when its error turns
non-finite, and ``NONFINITE_INPUT`` at the start when its initial point or one
of its argument rows holds NaN/Inf. Items still running at ``maxiter`` keep
``MAX_ITER``.

Differentiation. ``implicit_diff=True`` wraps the loop in
:func:`optlayer.custom_root` with the solver's ``optimality_fun``: the loop runs
without a graph and gradients come from the implicit function theorem (the
backward linear system is solved block-diagonally, one dense block per batch
item). ``implicit_diff=False`` runs the loop under autograd (unrolling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from optlayer import defaults
from optlayer.conditions import batched_hessian
from optlayer.errors import OptTypeError, report_status
from optlayer.implicit import custom_root
from optlayer.linalg import solve_lu
from optlayer.linalg._common import any_true, functorch_active
from optlayer.status import Status, check_on_failure
from optlayer.tree import flatten, tree_ordinary, unflatten

__all__ = [
    "OptStep",
    "IterativeSolver",
    "batch_shape_of",
    "block_diagonal_solve",
    "select",
    "value_and_grad",
    "vdot",
    "norm",
]

RUNNING = int(Status.MAX_ITER)


class OptStep(NamedTuple):
    """What ``run`` and ``update`` return: the solution (or iterate) and the solver state."""

    params: Any
    state: Any


def vdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner product over the last dimension."""
    return (a * b).sum(-1)


def norm(a: torch.Tensor) -> torch.Tensor:
    """Per-item Euclidean norm over the last dimension."""
    return torch.linalg.vector_norm(a, dim=-1)


def value_and_grad(fun, x, *args, **kwargs):
    """Per-item values (batch shape) and gradient of ``fun`` at ``x``.

    Plain autograd where possible (several times cheaper per call than
    ``torch.func.grad`` at small sizes): with a graph (``create_graph``) when grad
    mode is on and ``x`` or an argument requires grad (unrolled differentiation),
    without one otherwise; ``torch.func.grad`` under a torch.func transform.
    """
    if functorch_active():
        def total(z):
            vals = fun(z, *args, **kwargs)
            return vals.sum(), vals

        g, vals = torch.func.grad(total, has_aux=True)(x)
        return vals, g
    leaves = [t for t in flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    graph = torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in leaves))
    with torch.enable_grad():
        z = x if (graph and x.requires_grad) else x.detach().requires_grad_(True)
        vals = fun(z, *args, **kwargs)
        (g,) = torch.autograd.grad(vals.sum(), z, create_graph=graph)
    if not graph:
        vals = vals.detach()
    return vals, g


def hessian(fun, x, *args, **kwargs) -> torch.Tensor:
    """``∇²fun(x)`` per item, ``(*batch, n, n)``.

    Without a graph to keep (a solver loop under ``no_grad``) the ``n`` columns
    are ``n`` backward passes of one gradient graph, several times cheaper than
    the ``vmap`` of :func:`optlayer.conditions.batched_hessian` at small ``n``;
    that one (differentiable, transform-safe) is used when a graph is needed or
    under a torch.func transform.
    """
    leaves = [t for t in flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    graph = torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in leaves))
    if graph or functorch_active():
        return batched_hessian(fun, x, *args, **kwargs)
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fun(z, *args, **kwargs).sum(), z, create_graph=True)
        if not g.requires_grad:                  # fun is affine in x
            return x.new_zeros(x.shape + x.shape[-1:])
        cols = [torch.autograd.grad(g[..., j].sum(), z, retain_graph=True,
                                    materialize_grads=True)[0]
                for j in range(x.shape[-1])]
    return torch.stack(cols, dim=-1)


def batch_shape_of(params) -> torch.Size:
    """The batch shape of ``params``: all but the last dimension of its first tensor leaf."""
    leaves = [p for p in flatten(params)[0] if isinstance(p, torch.Tensor)]
    if not leaves:
        raise OptTypeError("the initial point must be a tensor (or a tuple of tensors)")
    if leaves[0].ndim == 0:
        raise OptTypeError(
            "the initial point must have at least one dimension (the last one is the variable); "
            "reshape a scalar variable to shape (1,)"
        )
    return leaves[0].shape[:-1]


def _bcast(mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (t.ndim - mask.ndim))


def select(mask: torch.Tensor, new, old):
    """``new`` where ``mask`` (batch shape) holds, else ``old``; leaf by leaf over a pytree.

    Tensors whose leading dimensions are not the batch shape, and non-tensors,
    are taken from ``new``.
    """
    nl, td = flatten(new)
    ol, _ = flatten(old)
    out = []
    for a, b in zip(nl, ol, strict=True):
        if (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape[: mask.ndim] == mask.shape
            and a.shape == b.shape
        ):
            out.append(torch.where(_bcast(mask, a), a, b))
        else:
            out.append(a)
    return unflatten(td, out)


def _finite_rows(tree, batch: torch.Size, device) -> torch.Tensor:
    """True for the batch items whose data in ``tree`` is all finite.

    A tensor whose leading dimensions are the batch shape is checked row by
    row; any other floating tensor (shared by all items) is checked as a whole.
    """
    ok = torch.ones(batch, dtype=torch.bool, device=device)
    nb = len(batch)
    seen = set()  # a tensor passed twice (the same data for two roles) is checked once
    for leaf in flatten(tree)[0]:
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point() \
                or id(leaf) in seen:
            continue
        seen.add(id(leaf))
        fin = leaf * 0 == 0  # false exactly at NaN and ±inf (two operations, isfinite four)
        if nb and leaf.ndim > nb and leaf.shape[:nb] == batch:
            ok = ok & fin.reshape(*batch, -1).all(-1)
        elif nb and leaf.shape == batch:
            ok = ok & fin
        else:
            ok = ok & fin.all()
    return ok


def block_diagonal_solve(sol_template):
    """A linear solve for ``custom_root`` that exploits independent batch items.

    ``sol_template`` is the solution (or a function returning it, read when the
    solve runs). ``custom_root`` packs the solution leaves ``(*batch, n_i)`` into one flat
    vector, so its Jacobian is block diagonal with one ``N x N`` block per
    item (``N = Σ n_i``). This solve regroups the flat vector as ``(B, N)`` and
    calls the dense batched LU of :mod:`optlayer.linalg` on the blocks, built from
    ``N`` matvecs (a Python loop up to ``defaults.IMPLICIT_LOOP_MAX``, one ``vmap``
    above) instead of ``B·N``.
    """

    def solve(matvec, b, **options):
        template = sol_template() if callable(sol_template) else sol_template
        leaves = flatten(template)[0]
        ns = [leaf.shape[-1] for leaf in leaves]
        sizes = [leaf.numel() for leaf in leaves]
        B = math.prod(batch_shape_of(template))

        def to_blocks(v):
            parts = v.split_with_sizes(sizes, dim=-1)
            return torch.cat([p.reshape(B, n) for p, n in zip(parts, ns, strict=True)], -1)

        def from_blocks(V):
            parts = V.split_with_sizes(ns, dim=-1)
            return torch.cat([p.reshape(-1) for p in parts], -1)

        if b.ndim != 1 or b.shape[0] != sum(sizes) or B <= 1:  # no regrouping to do
            return solve_lu(matvec, b, **options)
        N = sum(ns)
        if N <= defaults.IMPLICIT_LOOP_MAX:
            # N products (basis vector e_j in every item at once) instead of a vmap over
            # them: cheaper per product at small N, and valid in every autograd mode
            eye = torch.eye(N, dtype=b.dtype, device=b.device)
            cols = [to_blocks(matvec(from_blocks(eye[j].expand(B, N)))) for j in range(N)]
            return from_blocks(solve_lu(torch.stack(cols, -1), to_blocks(b), **options))
        x = solve_lu(lambda V: to_blocks(matvec(from_blocks(V))), to_blocks(b), **options)
        return from_blocks(x)

    return solve


@dataclass(eq=False, kw_only=True)
class IterativeSolver:
    """Base class: the loop, statuses, the ``on_failure`` policy and differentiation.

    Attributes:
        maxiter: iteration cap (default ``defaults.MAXITER[family]``).
        tol: tolerance on ``state.error`` (default ``defaults.tol(dtype)``).
        implicit_diff: differentiate by the implicit function theorem on
            ``optimality_fun`` (True) or by unrolling the loop (False).
        implicit_solve: linear solver for the backward system (protocol of
            :mod:`optlayer.linalg`); default: dense LU, block-diagonal over the batch.
        on_failure: ``"warn"``, ``"raise"``, ``"mask"`` (NaN rows, zero gradient,
            for failed items) or ``"ignore"``.
        check_every: iterations between convergence checks (host synchronisations).
    """

    maxiter: int | None = None
    tol: float | None = None
    implicit_diff: bool = True
    implicit_solve: Any = None
    on_failure: str = "warn"
    check_every: int = 1

    family: ClassVar[str] = "first_order"
    #: True when ``_loop`` may run in ``torch.inference_mode`` (its autograd, if any, leaves
    #: the mode by itself); otherwise ``run`` takes the loop out of it.
    inference_loop: ClassVar[bool] = False

    # -- to be provided by each solver -------------------------------------------------
    def init_state(self, init, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, params, state, *args, **kwargs) -> OptStep:  # pragma: no cover
        raise NotImplementedError

    def optimality_fun(self, params, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return getattr(self, "_label", None) or type(self).__name__

    def _settings(self, dtype) -> tuple[int, float]:
        maxiter = defaults.MAXITER[self.family] if self.maxiter is None else self.maxiter
        tol = defaults.tol(dtype) if self.tol is None else self.tol
        if not isinstance(maxiter, int) or maxiter < 0:
            raise ValueError(f"{self.name}: maxiter must be a nonnegative int; got {maxiter!r}")
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"{self.name}: tol must be a positive number; got {tol!r}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"{self.name}: check_every must be a positive int")
        return maxiter, float(tol)

    def _dtype(self, init) -> torch.dtype:
        leaf = flatten(init)[0][0]
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
            raise OptTypeError(
                f"{self.name}: the initial point must be a floating-point tensor; "
                f"got {type(leaf).__name__ if not isinstance(leaf, torch.Tensor) else leaf.dtype}",
                hint="e.g. torch.zeros(n, dtype=torch.float64)",
            )
        return leaf.dtype

    def _start_status(self, init, args, kwargs) -> torch.Tensor:
        batch = batch_shape_of(init)
        device = flatten(init)[0][0].device
        ok = _finite_rows((init, args, kwargs), batch, device)
        return torch.where(
            ok,
            torch.tensor(RUNNING, dtype=torch.int8, device=device),
            torch.tensor(int(Status.NONFINITE_INPUT), dtype=torch.int8, device=device),
        )

    def _classify(self, state, active: torch.Tensor, tol: float):
        err = state.error
        status = state.status
        done = active & (err <= tol)
        bad = active & ~torch.isfinite(err)
        status = torch.where(done, torch.full_like(status, int(Status.OPTIMAL)), status)
        status = torch.where(bad, torch.full_like(status, int(Status.NUMERICAL_ERROR)), status)
        return state._replace(status=status)

    def _loop(self, init, *args, **kwargs) -> tuple[Any, Any]:
        """The iteration: masked updates, one convergence check per ``check_every`` steps."""
        maxiter, tol = self._settings(self._dtype(init))
        params = init
        state = self.init_state(init, *args, **kwargs)
        for k in range(maxiter):
            active = state.status == RUNNING
            if k % self.check_every == 0 and not any_true(active):
                break
            new_params, new_state = self.update(params, state, *args, **kwargs)
            params = select(active, new_params, params)
            state = select(active, new_state, state)
            state = state._replace(iter_num=state.iter_num + active.to(state.iter_num.dtype))
            state = self._classify(state, active, tol)
        return params, state

    def run(self, init, *args, **kwargs) -> OptStep:
        """Solve from ``init``; returns ``OptStep(params, state)``.

        Args:
            init: initial point, ``(*batch, n)`` (or a tuple of such tensors).
            *args, **kwargs: the problem data, passed to ``fun`` (and to the
                prox / projection where the solver has one). Floating tensors
                among them receive gradients.

        Returns:
            ``OptStep(params, state)``; ``state.status`` holds one
            :class:`optlayer.Status` per batch item (``torch.int8``).

        Raises:
            SolverError: some item did not reach OPTIMAL and ``on_failure="raise"``.

        Warns:
            OptimizationWarning: some item did not reach OPTIMAL and ``on_failure="warn"``.
        """
        check_on_failure(self.on_failure)
        if torch.is_inference_mode_enabled() and (self.implicit_diff
                                                  or not self.inference_loop):
            # the loop takes gradients of fun by autograd, which inference tensors refuse:
            # run on ordinary copies, out of inference mode and without a graph
            with torch.inference_mode(False), torch.no_grad():
                init, args, kwargs = tree_ordinary((init, args, kwargs))
                return self.run(init, *args, **kwargs)
        if self.implicit_diff:
            holder = {}

            def loop(init, *args, **kwargs):
                params, state = self._loop(init, *args, **kwargs)
                holder["sol"] = params
                return params, state

            solve = self.implicit_solve
            if solve is None:
                solve = block_diagonal_solve(lambda: holder["sol"])
            runner = custom_root(self.optimality_fun, solve=solve, has_aux=True)(loop)
            params, state = runner(init, *args, **kwargs)
        else:
            params, state = self._loop(init, *args, **kwargs)
        report_status(state.status, self.on_failure, f"{self.name} did not converge")
        if self.on_failure == "mask":
            failed = state.status != int(Status.OPTIMAL)
            leaves, td = flatten(params)
            leaves = [
                torch.where(_bcast(failed, p), torch.full_like(p, math.nan), p) for p in leaves
            ]
            params = unflatten(td, leaves)
        return OptStep(params, state)
