"""The error classes of optlayer and the compiler-style rendering they share.

Every error a user can cause is an :class:`OptError`. Errors about source text
carry a :class:`Span` and render like a compiler's::

    optlayer.NonConvexError: portfolio.opt:9:29: cannot minimize an expression of unknown curvature
        9 | minimize  -mu @ w + gamma * sqrt(sum_squares(L @ w))
          |                             ^^^^^^^^^^^^^^^^^^^^^^^^
      why: sqrt is concave and nondecreasing; ...
      hint: norm2(L @ w) is convex and equals sqrt(sum_squares(L @ w)).

``OptSyntaxError`` deliberately does not subclass Python's ``SyntaxError``
(the traceback machinery would draw a second caret).
"""

from __future__ import annotations

from dataclasses import dataclass

from optlayer.status import Status

__all__ = [
    "Span",
    "OptError",
    "OptSyntaxError",
    "OptTypeError",
    "NonConvexError",
    "BindingError",
    "SolverError",
    "render_span",
    "report_status",
]


@dataclass(frozen=True)
class Span:
    """A region of source text: 1-based line and column, end exclusive.

    ``end_line``/``end_column`` point one past the last character, so a span of
    one character at line 3, column 7 is ``Span(3, 7, 3, 8)``.
    """

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(line: int, column: int) -> Span:
        """A one-character span (used for errors at a single position)."""
        return Span(line, column, line, column + 1)


def render_span(source: str, span: Span) -> str:
    """Draw the first line of ``span`` with a caret run under it.

    A span that runs past the end of its line (or to end of input) is drawn up
    to one column past the line's last character.
    """
    lines = source.splitlines() or [""]
    lineno = min(max(span.line, 1), len(lines))
    text = lines[lineno - 1].expandtabs(1)
    start = max(span.column, 1)
    if span.end_line > span.line:
        stop = max(len(text) + 1, start + 1)
    else:
        stop = max(span.end_column, start + 1)
    gutter = str(lineno)
    pad = " " * len(gutter)
    caret = " " * (start - 1) + "^" * (stop - start)
    return f"{gutter:>{len(gutter)}} | {text}\n{pad} | {caret}"


class OptError(Exception):
    """Base class of every error optlayer raises for a user's input.

    Args:
        message: one sentence saying what is wrong.
        span: where in the source, if the error is about source text.
        source: the source text (kept by the caller so the caret can be drawn).
        filename: the file name shown in ``file:line:col`` (``<string>`` if none).
        why: the reason, when it is not obvious from the message.
        hint: what to do about it, when there is something to suggest.
    """

    def __init__(
        self,
        message: str,
        *,
        span: Span | None = None,
        source: str | None = None,
        filename: str | None = None,
        why: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source
        self.filename = filename
        self.why = why
        self.hint = hint

    @property
    def line(self) -> int | None:
        return None if self.span is None else self.span.line

    @property
    def column(self) -> int | None:
        return None if self.span is None else self.span.column

    def with_source(self, source: str, filename: str | None = None) -> OptError:
        """Attach source text (and a file name) if not attached yet; returns self."""
        if self.source is None:
            self.source = source
        if self.filename is None and filename is not None:
            self.filename = filename
        return self

    def location(self) -> str:
        """``file:line:col`` or just ``file`` or ``""``."""
        name = self.filename or ("<string>" if self.span is not None else "")
        if self.span is None:
            return name
        return f"{name}:{self.span.line}:{self.span.column}"

    def __str__(self) -> str:
        loc = self.location()
        head = f"{loc}: {self.message}" if loc else self.message
        parts = [head]
        if self.span is not None and self.source is not None:
            body = render_span(self.source, self.span)
            parts.append("\n".join("    " + ln for ln in body.splitlines()))
        if self.why:
            parts.append(_labelled("why", self.why))
        if self.hint:
            parts.append(_labelled("hint", self.hint))
        return "\n".join(parts)


def _labelled(label: str, text: str) -> str:
    first, *rest = text.splitlines() or [""]
    indent = " " * (len(label) + 4)
    return "\n".join([f"  {label}: {first}"] + [indent + r for r in rest])


class OptSyntaxError(OptError):
    """The source text does not follow the grammar of the ``.opt`` language."""


class OptTypeError(OptError):
    """Names, shapes or kinds do not fit (unknown name, shape mismatch, ...)."""


class NonConvexError(OptError):
    """The problem breaks a disciplined-convex-programming (DCP) rule."""


class BindingError(OptError):
    """Data bound to a model does not fit it (dims, parameter values).

    Args:
        parameter: the parameter (or dim) name concerned, if any.
        batch_index: the batch index of the offending value, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        batch_index: tuple[int, ...] | int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(message, **kwargs)
        self.parameter = parameter
        self.batch_index = batch_index


class SolverError(OptError):
    """A solve failed for some batch items under ``on_failure="raise"``.

    Args:
        status: the :class:`Status` per batch item (a tensor), if known.
        indices: the failed batch indices.
    """

    def __init__(
        self,
        message: str,
        *,
        status=None,
        indices: list[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.indices = indices

    @property
    def statuses(self) -> list[Status]:
        """The distinct non-OPTIMAL statuses among the failed items."""
        if self.status is None:
            return []
        flat = self.status.reshape(-1).tolist()
        return sorted({Status(c) for c in flat if c != Status.OPTIMAL})


def report_status(status, on_failure: str, what: str) -> None:
    """Apply the raise/warn part of the ``on_failure`` policy to a status tensor.

    ``"raise"`` raises :class:`SolverError` if any item is not OPTIMAL,
    ``"warn"`` warns, ``"mask"`` and ``"ignore"`` do nothing here (masking
    needs the data and is done by the caller). One host synchronisation.
    """
    import warnings

    import torch

    from optlayer.status import (
        OptimizationWarning,
        check_on_failure,
        describe,
        failed_mask,
    )

    check_on_failure(on_failure)
    if on_failure in ("mask", "ignore"):
        return
    bad = failed_mask(status)
    if not bool(bad.any()):
        return
    text = f"{what}:\n{describe(status)}"
    if on_failure == "raise":
        idx = torch.nonzero(bad.reshape(-1)).reshape(-1).tolist()
        raise SolverError(text, status=status, indices=idx)
    warnings.warn(text, OptimizationWarning, stacklevel=3)
