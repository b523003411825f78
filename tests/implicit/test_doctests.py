"""The docstring examples of the implicit core, the linear solvers and tree helpers run."""

import doctest
import importlib

import pytest
import torch

MODULES = [
    "optlayer.tree",
    "optlayer.implicit.root",
    "optlayer.linalg.krylov",
    "optlayer.linalg.dense",
]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    # the examples print with torch's default options (the CLI, run in-process by other
    # tests, sets its own)
    torch.set_printoptions(profile="default")
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
