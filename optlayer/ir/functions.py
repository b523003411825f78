"""The Python expression API: every atom and set of the registries as a function.

``optlayer.ir.functions.norm2(x)`` (re-exported as ``ol.norm2``) is generated
from the atom record, so the Python API and the ``.opt`` language cannot
drift apart. Sets are the :class:`~optlayer.ir.sets.SetKind` records
themselves: ``ol.simplex(1)`` or ``ol.simplex`` (default arguments), used as
``x.within(ol.simplex(1))`` or ``ol.member(x, ol.simplex(1))``.
"""

from __future__ import annotations

from optlayer.errors import Span
from optlayer.ir.atoms import ATOMS, Atom
from optlayer.ir.sets import SETS

__all__ = sorted(ATOMS) + sorted(SETS) + ["dim"]


def _make(atom: Atom):
    def fn(*args, span: Span | None = None):
        from optlayer.ir.build import apply

        return apply(atom.name, list(args), span=span)

    fn.__name__ = fn.__qualname__ = atom.name
    lo, hi = atom.arity
    fn.__doc__ = (
        f"{atom.doc}.\n\n"
        f"Registry atom ``{atom.name}``: {lo if lo == hi else f'{lo} to {hi}'} argument(s), "
        f"curvature {atom.curvature if not callable(atom.curvature) else 'by arguments'}, "
        f"{'smooth' if atom.smooth else 'non-smooth'}"
        f"{f', prox optlayer.prox.{atom.prox}' if atom.prox else ''}.\n"
    )
    return fn


for _name, _atom in ATOMS.items():
    globals()[_name] = _make(_atom)
for _name, _kind in SETS.items():
    globals()[_name] = _kind
del _name, _atom, _kind


def dim(name: str):
    """A symbolic dimension for shapes, e.g. ``n = ol.dim("n"); ol.Variable(n + 1)``.

    Bind it with ``Problem(..., dims={"n": 10})`` (a default) or ``problem.bind({"n": 10})``.
    """
    from optlayer.ir.shapes import dim_symbol

    return dim_symbol(name)
