"""Solver status codes, their messages and remedies, and the failure policy.

Every solver in optlayer reports one :class:`Status` per batch item as an
integer tensor (``torch.int8``) of batch shape. A status value carries the
message a person reads and the remedy to try, so the text lives in one place.

The failure policy (``on_failure``) is applied once, after a solve, with a
single host synchronisation:

* ``"raise"`` -- raise :class:`optlayer.errors.SolverError` naming the failed
  batch indices and their statuses;
* ``"warn"`` -- emit an :class:`OptimizationWarning` with the same text and
  return the result unchanged;
* ``"mask"`` -- return NaN rows for the failed items only (and, in layers,
  zero gradient for them);
* ``"ignore"`` -- return the result unchanged; the status is still available.
"""

from __future__ import annotations

import enum

import torch

__all__ = [
    "Status",
    "OptimizationWarning",
    "ON_FAILURE",
    "check_on_failure",
    "failed_mask",
    "describe",
]


class OptimizationWarning(UserWarning):
    """A solve did not reach OPTIMAL for some batch items (policy ``"warn"``)."""


class Status(enum.IntEnum):
    """Outcome of a solve for one batch item.

    ``Status.OPTIMAL.message`` is the user-facing sentence and
    ``Status.OPTIMAL.remedy`` what to try next.
    """

    OPTIMAL = 0
    OPTIMAL_INACCURATE = 1
    MAX_ITER = 2
    INFEASIBLE = 3
    UNBOUNDED = 4
    NUMERICAL_ERROR = 5
    NONFINITE_INPUT = 6

    @property
    def message(self) -> str:
        return _TEXT[self][0]

    @property
    def remedy(self) -> str:
        return _TEXT[self][1]

    @property
    def ok(self) -> bool:
        """True for OPTIMAL only: the independent residual check passed."""
        return self is Status.OPTIMAL


_TEXT = {
    Status.OPTIMAL: (
        "solved to the requested tolerance",
        "nothing to do",
    ),
    Status.OPTIMAL_INACCURATE: (
        "stopped near a solution, but the residual is above the requested tolerance",
        "increase maxiter, loosen tol, or rescale the problem data",
    ),
    Status.MAX_ITER: (
        "the maximum number of iterations was reached before convergence",
        "increase maxiter, warm-start from a nearby solution, or loosen tol",
    ),
    Status.INFEASIBLE: (
        "the problem is infeasible (a certificate of infeasibility was found)",
        "check the constraint data; no point satisfies all constraints",
    ),
    Status.UNBOUNDED: (
        "the problem is unbounded (a certificate of unboundedness was found)",
        "add constraints or regularization; the objective decreases without bound",
    ),
    Status.NUMERICAL_ERROR: (
        "the solver hit a numerical failure (singular or ill-conditioned system)",
        "rescale the problem data, use float64, or add a small regularization",
    ),
    Status.NONFINITE_INPUT: (
        "the input data contains NaN or Inf",
        "check the parameters passed for this batch item",
    ),
}

ON_FAILURE = ("raise", "warn", "mask", "ignore")


def check_on_failure(on_failure: str) -> str:
    """Validate an ``on_failure`` policy name and return it."""
    if on_failure not in ON_FAILURE:
        raise ValueError(
            f"on_failure must be one of {', '.join(map(repr, ON_FAILURE))}; got {on_failure!r}"
        )
    return on_failure


def failed_mask(status: torch.Tensor) -> torch.Tensor:
    """Boolean tensor, True where the status is not OPTIMAL."""
    return status != int(Status.OPTIMAL)


def describe(status: torch.Tensor, *, limit: int = 5) -> str:
    """One line per distinct non-OPTIMAL status: message, remedy, batch indices.

    This synchronises with the device once; call it only after a solve.
    """
    flat = status.reshape(-1).to("cpu")
    lines = []
    for code in sorted(set(flat.tolist())):
        st = Status(code)
        if st is Status.OPTIMAL:
            continue
        idx = torch.nonzero(flat == code).reshape(-1).tolist()
        shown = ", ".join(map(str, idx[:limit])) + (", ..." if len(idx) > limit else "")
        lines.append(
            f"{st.name} at batch index {shown} ({len(idx)} of {flat.numel()}): "
            f"{st.message}; {st.remedy}"
        )
    return "\n".join(lines)
