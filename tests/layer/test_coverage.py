"""Coverage of the registries by the shipped examples: every atom, operator and set of the
IR registries occurs (applied to variables) in some examples/problems/*.opt that compiles
to a layer, and the examples' default methods cover every row of the method table."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import optlayer as ol
from optlayer.ir import ATOMS, OPERATORS, SETS, Apply, Membership, postorder

PROBLEMS = sorted((Path(__file__).parents[2] / "examples" / "problems").glob("*.opt"))

#: registry entries that cannot occur in a convex layer, with the reason. Empty: every
#: atom, operator and set can (psd works alone on a variable: projection / proj_grad).
EXEMPT: dict[str, str] = {}

#: (method, kkt solver) rows of the method table (docs/layer.md)
ROWS = [("projection", None), ("stationary", None), ("proj_grad", None), ("prox_grad", None),
        ("mirror_descent", None), ("kkt", "qp"), ("kkt", "convex")]


@functools.cache
def _usage():
    atoms, sets, rows = {}, {}, {}
    for p in PROBLEMS:
        layer = ol.load(p)  # compiles to a layer (raises otherwise)
        prob = layer.problem
        for root in prob.roots():
            for node in postorder(root):
                if isinstance(node, Apply) and not node.is_constant:
                    atoms.setdefault(node.atom.name, p.stem)
        for c in list(prob.constraints) + list(prob.attribute_constraints()):
            if isinstance(c, Membership):
                sets.setdefault(c.set.kind.name, p.stem)
        rows.setdefault((layer.method, layer.plan.solver), p.stem)
    return atoms, sets, rows


def test_exemptions_name_registry_entries_with_a_reason():
    for name, why in EXEMPT.items():
        assert name in ATOMS or name in OPERATORS or name in SETS, name
        assert len(why) > 20, name


@pytest.mark.parametrize("name", sorted(set(ATOMS) - set(EXEMPT)) + sorted(OPERATORS))
def test_atom_is_used_on_variables_by_an_example(name):
    assert name in _usage()[0], f"no example applies {name} to an expression with variables"


@pytest.mark.parametrize("name", sorted(set(SETS) - set(EXEMPT)))
def test_set_is_used_by_an_example(name):
    assert name in _usage()[1], f"no example has a constraint `... in {name}`"


@pytest.mark.parametrize("row", ROWS, ids=[f"{m}-{s}" if s else m for m, s in ROWS])
def test_method_row_is_the_default_of_an_example(row):
    assert row in _usage()[2], f"no example defaults to {row}"
