"""The top-level entry points of the modeling language: ``ol.parse`` and ``ol.check``.

``ol.compile`` and ``ol.load`` (text -> ``OptLayer``) are added here by the
layer work; they build on :func:`parse` / :func:`check`.
"""

from __future__ import annotations

from collections.abc import Mapping

from optlayer.errors import BindingError, OptError, OptTypeError

__all__ = ["parse", "check", "compile", "load"]


def _source_of(source, filename):
    if not isinstance(source, str):
        raise OptTypeError(f"the source must be a str of .opt text, got {type(source).__name__}",
                           hint="read the file first, or use ol.load(path)")
    if filename is not None and not isinstance(filename, str):
        filename = str(filename)
    return source, filename


def parse(source: str, *, filename: str | None = None):
    """Parse ``.opt`` text into the typed IR (names and shapes checked, DCP not yet).

    Args:
        source: the text of one problem (DESIGN.md section 3).
        filename: shown in error locations (``file:line:col``); ``<string>`` if omitted.

    Returns:
        optlayer.ir.Problem: with symbolic dims (``dim n`` stays ``n``).

    Raises:
        OptSyntaxError: the text does not follow the grammar (or is too large / too deep).
        OptTypeError: unknown or duplicate names, shape mismatches, bad sizes.

    Example:
        >>> import optlayer as ol
        >>> p = ol.parse("dim n = 3\\nvar x[n]\\nminimize sum_squares(x)")
        >>> sorted(p.vars)
        ['x']
    """
    from optlayer.dsl import display_source, lower_program, normalize_source, parse_program

    source, filename = _source_of(source, filename)
    text = normalize_source(source)
    try:
        return lower_program(parse_program(text))
    except OptError as e:
        raise e.with_source(display_source(text), filename) from None


def check(source: str, *, dims: Mapping[str, int] | None = None,
          filename: str | None = None):
    """Parse and fully check ``.opt`` text: grammar, names, shapes, DCP and ``dims``.

    Args:
        source: the text of one problem.
        dims: sizes for the declared dims (``{"n": 10}``); defaults fill the
            rest. With ``dims`` the returned problem has concrete shapes; without
            it the dims stay symbolic, but when every dim has a default the shapes
            are also checked at those defaults.
        filename: shown in error locations.

    Returns:
        optlayer.ir.Problem: the checked problem; ``.summary()`` describes it.

    Raises:
        OptSyntaxError, OptTypeError: as :func:`parse`.
        NonConvexError: a DCP rule is broken (the span is the smallest offending subexpression).
        BindingError: ``dims`` names an unknown dim, gives a non-positive size, misses a dim
            without default, or makes a shape rule fail (e.g. a slice out of range).

    Example:
        >>> import optlayer as ol
        >>> p = ol.check("dim n\\nvar x[n]\\nminimize norm1(x)", dims={"n": 4})
        >>> p.vars["x"].shape
        (4,)
    """
    from optlayer.dsl import display_source, normalize_source

    problem = parse(source, filename=filename)
    text = display_source(normalize_source(source))
    try:
        problem.check_dcp()
        if dims is not None:
            if not isinstance(dims, Mapping):
                raise BindingError(f"dims must be a mapping such as {{'n': 10}}, got "
                                   f"{type(dims).__name__}")
            problem = problem.bind(dims)
        elif problem.dims and all(v is not None for v in problem.dims.values()):
            problem.bind({})
    except BindingError as e:
        _point_at_dim(e, problem, source)
        raise e.with_source(text, filename) from None
    except OptError as e:
        raise e.with_source(text, filename) from None
    return problem


def _point_at_dim(err: BindingError, problem, source: str) -> None:
    """A binding error about a declared dim without a span points at the declaration."""
    if err.span is not None or err.parameter is None:
        return
    from optlayer.dsl import normalize_source, parse_program
    from optlayer.dsl.ast import DimDecl

    try:
        program = parse_program(normalize_source(source))
    except OptError:  # pragma: no cover - the source parsed a moment ago
        return
    for st in program.statements:
        if isinstance(st, DimDecl) and st.name == err.parameter:
            err.span = st.span
            return


def compile(source: str, *, dims: Mapping[str, int] | None = None, method: str | None = None,
            solver: str | None = None, filename: str | None = None, **options):
    """``.opt`` text -> :class:`optlayer.layer.OptLayer` (a ``torch.nn.Module``).

    Args:
        source: the problem text.
        dims: sizes for declared dims (defaults fill the rest).
        method: force a method of DESIGN.md section 5 (must apply), or None.
        solver: only None (each method's default solver).
        filename: shown in error locations.
        **options: ``tol``, ``maxiter``, ``on_failure``, ``warm_start``.

    Returns:
        OptLayer.

    Raises:
        OptSyntaxError, OptTypeError, NonConvexError, BindingError: as :func:`check`;
        OptTypeError also for a forced method that does not apply.

    Example:
        >>> import optlayer as ol
        >>> ol.compile("var x[2]\\nparam y[2]\\nminimize sum_squares(x - y)").method
        'stationary'
    """
    from optlayer.layer import OptLayer

    problem = check(source, dims=dims if dims is not None else {}, filename=filename)
    return OptLayer(problem, method=method, solver=solver, **options)


def load(path, *, dims: Mapping[str, int] | None = None, method: str | None = None,
         solver: str | None = None, **options):
    """:func:`compile` the ``.opt`` file at ``path`` (errors name the file)."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise OptTypeError(f"cannot read {str(p)!r}: {e.strerror or e}",
                           hint="check the path of the .opt file") from None
    return compile(text, dims=dims, method=method, solver=solver, filename=str(p), **options)
