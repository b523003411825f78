"""The ``optlayer`` command (DESIGN.md section 8).

``optlayer check FILE.opt [--dims n=10]`` parses and checks a model (grammar,
names, shapes, DCP, dims) and prints its summary. Exit status: 0 when the
model is valid, 1 with the rendered error when it is not, 2 on usage errors
(bad options, unreadable file).

Verbs are registered in :data:`VERBS` (name -> :class:`Verb`), so ``explain``
and ``solve`` plug in beside ``check`` with their own options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from optlayer.errors import OptError

__all__ = ["main", "build_parser", "parse_dims", "read_source", "Verb", "VERBS"]


@dataclass(frozen=True)
class Verb:
    """One subcommand: its help line, how it adds options, and what it runs.

    ``run(args)`` returns the exit status; it may raise :class:`OptError`
    (printed, status 1) or :class:`UsageError` (printed, status 2).
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake: printed as ``optlayer: error: ...`` with status 2."""


def parse_dims(items: Sequence[str] | None) -> dict[str, int] | None:
    """``["n=10", "m=3,k=2"]`` -> ``{"n": 10, "m": 3, "k": 2}`` (``None`` when no items).

    Raises:
        UsageError: an item that is not ``NAME=INT``, or a name given twice.
    """
    if not items:
        return None
    dims: dict[str, int] = {}
    for item in items:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name.isidentifier() or not value.lstrip("-").isdigit():
                raise UsageError(f"--dims expects NAME=INT (e.g. n=10), got {part!r}")
            if name in dims:
                raise UsageError(f"--dims gives {name} twice")
            dims[name] = int(value)
    return dims


def read_source(path: str) -> str:
    """The text of ``path`` (UTF-8); ``-`` reads standard input.

    Raises:
        UsageError: the file cannot be read or is not UTF-8 text.
    """
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options every verb that reads a model shares: FILE and --dims."""
    p.add_argument("file", metavar="FILE.opt", help="the model file ('-' for stdin)")
    p.add_argument("--dims", action="append", metavar="NAME=INT",
                   help="size of a declared dim, e.g. --dims n=10 (repeat or comma-separate)")


def _run_check(args: argparse.Namespace) -> int:
    from optlayer.api import check

    source = read_source(args.file)
    dims = parse_dims(args.dims)
    name = "<stdin>" if args.file == "-" else args.file
    problem = check(source, dims=dims, filename=name)
    print(f"{name}: ok")
    print(problem.summary())
    return 0


VERBS: dict[str, Verb] = {
    "check": Verb("parse and check a model (grammar, names, shapes, DCP, dims)",
                  add_model_arguments, _run_check),
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per registered verb."""
    parser = argparse.ArgumentParser(
        prog="optlayer",
        description="Declared optimization problems as differentiable PyTorch layers.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help, description=verb.help)
        verb.add_arguments(p)
        p.set_defaults(_run=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 model error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        return args._run(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"optlayer: error: {e}", file=sys.stderr)
        return 2
    except OptError as e:
        print(f"optlayer.{type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
