"""The ``optlayer`` command (DESIGN.md section 8).

``optlayer check FILE.opt [--dims n=10]`` parses and checks a model (grammar,
names, shapes, DCP, dims) and prints its summary. ``optlayer explain FILE.opt``
prints the method chosen, why, the optimality map and the solver;
``optlayer solve FILE.opt [--data f.npz|.json] [--dims n=10]`` solves it (on
random data fitting the declarations when no data is given) and prints the
solution, status and timing. Exit status: 0 when the
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


def _add_explain_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--method", default=None, help="force a method (must apply)")


def _add_solve_arguments(p: argparse.ArgumentParser) -> None:
    _add_explain_arguments(p)
    p.add_argument("--data", default=None, metavar="FILE",
                   help="parameter values (.npz or .json: name -> array); random data fitting "
                        "the declarations when omitted")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data")
    p.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")


def _layer_from_args(args: argparse.Namespace):
    from optlayer.api import compile as compile_layer

    source = read_source(args.file)
    name = "<stdin>" if args.file == "-" else args.file
    return compile_layer(source, dims=parse_dims(args.dims), method=args.method,
                         filename=name, on_failure="ignore"), name


def _run_explain(args: argparse.Namespace) -> int:
    layer, name = _layer_from_args(args)
    print(f"{name}:")
    print(layer.explain())
    return 0


def _load_data(path: str, dtype) -> dict:
    import json

    import numpy as np
    import torch

    try:
        if path.endswith(".npz"):
            with np.load(path) as f:
                raw = {k: f[k] for k in f.files}
        elif path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if not isinstance(raw, dict):
                raise UsageError(f"{path}: expected a JSON object name -> array")
        else:
            raise UsageError(f"--data expects a .npz or .json file, got {path!r}")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    try:
        return {k: torch.as_tensor(np.asarray(v, dtype=float), dtype=dtype) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: values must be numeric arrays ({e})") from None


def _run_solve(args: argparse.Namespace) -> int:
    import time

    import torch

    from optlayer.layer import random_params
    from optlayer.status import Status

    layer, name = _layer_from_args(args)
    dtype = torch.float32 if args.float32 else torch.float64
    if args.data:
        values = _load_data(args.data, dtype)
        source = args.data
    else:
        values = random_params(layer.problem, dtype=dtype, seed=args.seed)
        source = f"random data (seed {args.seed})"
    layer(**values)  # warm-up (first call pays for lazy imports)
    t0 = time.perf_counter()
    out = layer(**values)
    elapsed = time.perf_counter() - t0
    print(f"{name}: method {layer.method}, {source}, {str(dtype).replace('torch.', '')}")
    outs = {layer.problem.vars and next(iter(layer.problem.vars)): out} \
        if isinstance(out, torch.Tensor) else out._asdict()
    torch.set_printoptions(precision=6, sci_mode=False)
    for var, val in outs.items():
        print(f"{var} =\n{val}")
    info = layer.info
    st = Status(int(info.status.reshape(-1)[0]))
    print(f"status: {st.name} ({st.message})")
    print(f"iterations: {info.iterations}, residual: {float(info.residual.reshape(-1)[0]):.3e}")
    print(f"time: {elapsed * 1e3:.2f} ms")
    return 0 if st == Status.OPTIMAL else 1


VERBS: dict[str, Verb] = {
    "check": Verb("parse and check a model (grammar, names, shapes, DCP, dims)",
                  add_model_arguments, _run_check),
    "explain": Verb("show the method chosen for a model, why, its optimality map and solver",
                    _add_explain_arguments, _run_explain),
    "solve": Verb("solve a model on data (or random data fitting its declarations)",
                  _add_solve_arguments, _run_solve),
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
