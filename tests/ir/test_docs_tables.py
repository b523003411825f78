"""docs/ir.md's atom and set tables are the registries' own (regenerate, never hand-edit)."""

from __future__ import annotations

import pathlib
import re

import pytest

from optlayer.ir import ATOMS, SETS, reference

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "ir.md"


@pytest.mark.parametrize(("tag", "generate"),
                         [("atoms", reference.atoms_markdown), ("sets", reference.sets_markdown)],
                         ids=["atoms", "sets"])
def test_docs_table_is_generated_from_the_registry(tag, generate):
    text = DOC.read_text()
    m = re.search(rf"<!-- {tag}:begin -->\n(.*?)<!-- {tag}:end -->", text, re.S)
    assert m, f"docs/ir.md lacks the {tag} markers"
    assert m.group(1).strip() == generate().strip(), (
        f"docs/ir.md {tag} table is stale: paste optlayer.ir.reference.{generate.__name__}()")


@pytest.mark.parametrize("name", sorted(ATOMS) + sorted(SETS),
                         ids=sorted(ATOMS) + sorted(SETS))
def test_every_registry_entry_is_in_the_docs(name):
    assert f"| `{name}` |" in DOC.read_text()
