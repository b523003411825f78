"""What every linear solver of :mod:`optlayer.linalg` shares.

The protocol. A solver is called as ``solve(matvec, b, **options) -> x`` and
returns ``x`` with ``matvec(x) == b``:

* ``b`` is a tensor of shape ``(*batch, n)`` or a tuple / list / dict of
  tensors of shapes ``(*batch, n_i)`` sharing the same ``batch``; the last
  dimension is the vector, the leading ones are independent systems.
* ``matvec`` is a linear map taking and returning that same structure (it acts
  on every batch item independently), or a tensor ``A`` of shape
  ``(*batch, n, n)`` standing for ``x -> A @ x``.

Internally a pytree right-hand side is concatenated along its last dimension
into one ``(*batch, N)`` tensor (:class:`Packed`), so each algorithm is written
once for plain tensors.

Convergence checks under ``torch.func`` transforms. ``vmap`` forbids
data-dependent Python control flow on batched tensors, which is what an early
stop is. :func:`any_true` reads the *physical* tensor below every functorch
wrapper, so the loop stops when every system in the whole (vmapped) batch has
converged: the decision is the same for all batch items, hence vmap-safe, and
items that converge earlier are frozen by masked updates. If the private
functorch API is unavailable the loop simply runs to ``maxiter``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from optlayer import defaults
from optlayer.errors import OptTypeError, report_status
from optlayer.status import Status
from optlayer.tree import flatten, unflatten

__all__ = [
    "Packed",
    "as_matvec",
    "materialize",
    "physical",
    "any_true",
    "any_all_true",
    "functorch_active",
    "lu_factor",
    "safe_div",
    "default_maxiter",
    "resolve_tol",
    "report",
]

ON_FAILURE = ("warn", "raise", "ignore")


class Packed:
    """Concatenate a pytree of ``(*batch, n_i)`` tensors into ``(*batch, N)`` and back.

    Args:
        b: the right-hand side (tensor or pytree of tensors).
        what: the solver name, for error messages.

    Raises:
        OptTypeError: if a leaf is not a tensor, is 0-dimensional, or the
            leaves disagree on batch shape, dtype or device.
    """

    def __init__(self, b, what: str) -> None:
        leaves, self.treedef = flatten(b)
        if not leaves:
            raise OptTypeError(f"{what}: the right-hand side b is empty")
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                raise OptTypeError(
                    f"{what}: the right-hand side must be a tensor or a tuple/list/dict of "
                    f"tensors; found a leaf of type {type(leaf).__name__}"
                )
            if leaf.ndim == 0:
                raise OptTypeError(
                    f"{what}: right-hand-side tensors need at least one dimension "
                    "(the last dimension is the vector); reshape scalars to (1,)"
                )
        first = leaves[0]
        self.batch = first.shape[:-1]
        for leaf in leaves[1:]:
            if leaf.shape[:-1] != self.batch:
                raise OptTypeError(
                    f"{what}: right-hand-side leaves must share their leading (batch) "
                    f"dimensions; got shapes {[tuple(x.shape) for x in leaves]}"
                )
            if leaf.dtype != first.dtype or leaf.device != first.device:
                raise OptTypeError(
                    f"{what}: right-hand-side leaves must share dtype and device; got "
                    f"{[(x.dtype, str(x.device)) for x in leaves]}"
                )
        if not (first.is_floating_point() or first.is_complex()):
            raise OptTypeError(f"{what}: b must be floating point; got {first.dtype}")
        self.single = len(leaves) == 1 and self.treedef.kind == "leaf"
        self.sizes = [leaf.shape[-1] for leaf in leaves]
        self.n = sum(self.sizes)
        self.dtype = first.dtype
        self.device = first.device

    def pack(self, tree) -> torch.Tensor:
        if self.single:
            return tree
        leaves, _ = flatten(tree)
        return torch.cat(leaves, dim=-1)

    def unpack(self, vec: torch.Tensor):
        if self.single:
            return vec
        return unflatten(self.treedef, list(torch.split(vec, self.sizes, dim=-1)))


def as_matvec(matvec, packed: Packed, ridge, what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The packed ``(*batch, N) -> (*batch, N)`` map of ``matvec + ridge * I``.

    Raises:
        OptTypeError: if ``matvec`` is neither callable nor a tensor.
    """
    if isinstance(matvec, torch.Tensor):
        A = matvec
        if A.ndim < 2 or A.shape[-1] != packed.n or A.shape[-2] != packed.n:
            raise OptTypeError(
                f"{what}: the matrix has shape {tuple(A.shape)} but b has {packed.n} "
                "unknowns; expected (..., n, n)"
            )

        def base(x):
            return (A @ x.unsqueeze(-1)).squeeze(-1)
    elif callable(matvec):

        def base(x):
            return packed.pack(matvec(packed.unpack(x)))
    else:
        raise OptTypeError(
            f"{what}: matvec must be a callable linear map x -> A x (or a tensor A); "
            f"got {type(matvec).__name__}"
        )
    if ridge is None:
        return base
    return lambda x: base(x) + ridge * x


def materialize(op: Callable, packed: Packed) -> torch.Tensor:
    """The dense matrix ``A`` of shape ``(*batch, N, N)`` of a packed linear map.

    Column ``j`` is ``op(e_j)``; the N products run as one ``torch.func.vmap``.
    """
    n = packed.n
    eye = torch.eye(n, dtype=packed.dtype, device=packed.device)
    basis = eye.reshape((n,) + (1,) * len(packed.batch) + (n,)).expand(
        (n,) + tuple(packed.batch) + (n,)
    )
    cols = torch.func.vmap(op)(basis)  # (n_j, *batch, n_i)
    return torch.movedim(cols, 0, -1)


def physical(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor below every functorch wrapper (vmap, grad, jvp levels)."""
    try:
        f = torch._C._functorch
        while f.is_functorch_wrapped_tensor(t):
            t = f.get_unwrapped(t)
    except (AttributeError, RuntimeError):  # pragma: no cover - older/newer torch
        return t
    return t


def functorch_active() -> bool:
    """True inside a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ...), where
    ``torch.autograd.grad`` cannot run and code must take the ``torch.func`` route."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def lu_factor(A: torch.Tensor):
    """``torch.linalg.lu_factor_ex(A)`` (``(LU, pivots, info)``), one matrix at a time
    for a batch of CPU matrices above ``defaults.LU_BATCHED_MAX_SIZE`` rows when torch
    runs more than one thread: the batched factorisation hangs there in torch 2.13 with
    MKL (see that constant). ``lu_solve`` on the stacked factors is safe."""
    n = A.shape[-1]
    if A.dim() < 3 or n <= defaults.LU_BATCHED_MAX_SIZE or A.device.type != "cpu" \
            or torch.get_num_threads() == 1 or A.shape[:-2].numel() <= 1:
        return torch.linalg.lu_factor_ex(A)
    parts = [torch.linalg.lu_factor_ex(a) for a in A.reshape(-1, n, n).unbind(0)]
    LU, piv, info = (torch.stack(t) for t in zip(*parts, strict=True))
    return LU.view(A.shape), piv.view(A.shape[:-1]), info.view(A.shape[:-2])


def any_true(mask: torch.Tensor) -> bool:
    """``mask.any()`` over the whole physical batch, as a Python bool (one sync).

    Falls back to ``True`` (keep iterating) where the value cannot be read.
    """
    try:
        return bool(physical(mask).any())
    except RuntimeError:  # pragma: no cover - unreadable under some transform
        return True


def any_all_true(mask: torch.Tensor) -> tuple[bool, bool]:
    """``(mask.any(), mask.all())`` over the whole physical batch, as Python bools (one
    sync). Falls back to ``(True, False)`` (keep iterating, masked) where the value cannot
    be read."""
    try:
        phys = physical(mask)
        n = int(phys.sum())
    except RuntimeError:  # pragma: no cover - unreadable under some transform
        return True, False
    return n > 0, n == phys.numel()


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 wherever ``den == 0`` (no NaN from frozen items)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1, den))


def default_maxiter(n: int) -> int:
    """``min(MAXITER["linear"], LINEAR_ITERS_PER_DIM * n)`` (at least 1)."""
    return max(1, min(defaults.MAXITER["linear"], defaults.LINEAR_ITERS_PER_DIM * n))


def resolve_tol(tol, dtype: torch.dtype, what: str) -> float:
    if tol is None:
        return defaults.tol(dtype)
    if not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"{what}: tol must be a positive number; got {tol!r}")
    return float(tol)


def check_common(maxiter, on_failure: str, what: str) -> None:
    if maxiter is not None and (not isinstance(maxiter, int) or maxiter < 1):
        raise ValueError(f"{what}: maxiter must be a positive integer; got {maxiter!r}")
    if on_failure not in ON_FAILURE:
        raise ValueError(
            f"{what}: on_failure must be one of {', '.join(map(repr, ON_FAILURE))}; "
            f"got {on_failure!r}"
        )


def report(
    what: str,
    rel_res: torch.Tensor,
    tol: float,
    on_failure: str,
    *,
    iters: int | None = None,
    failure: Status = Status.MAX_ITER,
) -> None:
    """Warn or raise (per ``on_failure``) for batch items that did not converge.

    A batch item fails when its relative residual ``||A x - b|| / ||b||`` is
    above ``tol`` (status ``failure``) or is not finite (``NUMERICAL_ERROR``;
    a NaN or Inf solution gives a non-finite residual). The message names the
    worst residual. One host synchronisation, on the physical tensor (so it
    also works under vmap, where the status covers the vmapped items too).
    """
    if on_failure == "ignore":
        return
    res = physical(rel_res).detach()
    bad = ~(res <= tol)  # NaN counts as failed
    if not bool(bad.any()):
        return
    nonfinite = ~torch.isfinite(res)
    status = torch.full(res.shape, int(Status.OPTIMAL), dtype=torch.int8, device=res.device)
    status = torch.where(bad, torch.full_like(status, int(failure)), status)
    status = torch.where(nonfinite, torch.full_like(status, int(Status.NUMERICAL_ERROR)), status)
    finite_res = res[~nonfinite]
    worst = finite_res.max().item() if finite_res.numel() else math.inf
    after = f" after {iters} iterations" if iters is not None else ""
    text = (
        f"{what}: the linear solve did not reach tol={tol:.1e}{after}; worst relative "
        f"residual ||A x - b|| / ||b|| = {worst:.3e}"
        + (" (some solutions are NaN/Inf)" if bool(nonfinite.any()) else "")
    )
    report_status(status, "raise" if on_failure == "raise" else "warn", text)
