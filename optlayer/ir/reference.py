"""Reference tables of the registries, generated from the records themselves.

``docs/ir.md`` embeds :func:`atoms_markdown` and :func:`sets_markdown`; a test
compares them, so the docs cannot drift from the registry.
"""

from __future__ import annotations

from types import SimpleNamespace

from optlayer.ir.atoms import ATOMS, OPERATORS, Atom
from optlayer.ir.enums import Curvature, Mono, Sign
from optlayer.ir.sets import SETS

__all__ = ["atoms_markdown", "sets_markdown", "describe_monotonicity"]

_ARROW = {Mono.INCREASING: "nondecreasing", Mono.DECREASING: "nonincreasing",
          Mono.NONMONOTONE: "nonmonotone"}


def _probe(sign: Sign, ndim: int = 1):
    return SimpleNamespace(sign=sign, is_constant=False, curvature=Curvature.AFFINE, ndim=ndim)


def describe_monotonicity(atom: Atom) -> str:
    """Per-argument monotonicity in words, probing sign-dependent rules with each sign."""
    lo, hi = atom.arity
    if not callable(atom.mono):
        return ", ".join(_ARROW[m] for m in atom.monotonicity([None] * hi, ()))
    parts = []
    for i in range(hi):
        own, other = set(), set()
        for s in (Sign.NONNEG, Sign.NONPOS, Sign.UNKNOWN):
            for j in range(hi):
                args = [_probe(Sign.UNKNOWN) for _ in range(hi)]
                args[j] = _probe(s)
                try:
                    m = atom.monotonicity(args, ())[i]
                except (TypeError, ValueError):  # rules that need static arguments
                    return "by the exponent p"
                (own if j == i else other).add((s, m))
        if len({m for _s, m in other}) > 1:
            parts.append("by the sign of the other factor")
        elif len({m for _s, m in own}) > 1:
            by = dict(own)
            parts.append(f"{_ARROW[by[Sign.NONNEG]]} for x >= 0, "
                         f"{_ARROW[by[Sign.NONPOS]]} for x <= 0")
        else:
            parts.append(_ARROW[next(iter(own))[1]])
    return "; ".join(parts)


def _row(a: Atom) -> str:
    lo, hi = a.arity
    arity = str(lo) if lo == hi else f"{lo}-{hi}"
    curv = str(a.curvature) if not callable(a.curvature) else "by arguments"
    prox = f"`{a.prox}`" if a.prox else ""
    name = f"`{a.symbol}` ({a.name})" if a.symbol else f"`{a.name}`"
    dom = ", ".join(d.value for d in a.domain)
    doc = a.doc.replace("|", "\\|")
    return (f"| {name} | {arity} | {curv} | {describe_monotonicity(a)} | "
            f"{'yes' if a.smooth else 'no'} | {dom} | {prox} | {doc} |")


def atoms_markdown() -> str:
    """Markdown table of every atom and operator."""
    head = ("| atom | args | curvature | monotonicity | smooth | domain | prox | math |\n"
            "|---|---|---|---|---|---|---|---|")
    rows = [_row(a) for a in OPERATORS.values()] + [_row(ATOMS[n]) for n in sorted(ATOMS)]
    return head + "\n" + "\n".join(rows) + "\n"


def sets_markdown() -> str:
    """Markdown table of every set."""
    head = "| set | arguments (defaults) | projection | KL projection | members |\n" \
           "|---|---|---|---|---|"
    rows = []
    for name in sorted(SETS):
        k = SETS[name]
        args = ", ".join(p if d is None else f"{p}={d}" for p, d in zip(k.params, k.defaults,
                                                                        strict=True))
        kl = f"`{k.kl_projection}`" if k.kl_projection else ""
        rows.append(f"| `{name}` | {args or '-'} | `{k.projection}` | {kl} | {k.doc} |")
    return head + "\n" + "\n".join(rows) + "\n"
