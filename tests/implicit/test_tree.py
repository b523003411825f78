"""optlayer.tree: flatten/unflatten round trips and the vector-space helpers."""

from collections import namedtuple

import pytest
import torch

from optlayer import tree

Pair = namedtuple("Pair", ["a", "b"])

TREES = {
    "tensor": torch.arange(3.0),
    "tuple": (torch.ones(2), 1.5, None),
    "list": [torch.zeros(1), [torch.ones(2)]],
    "dict_unordered": {"z": torch.ones(1), "a": (torch.zeros(2), "label")},
    "namedtuple": Pair(torch.ones(2), {"k": torch.zeros(3)}),
    "callable_leaf": (len, torch.ones(1)),
}


@pytest.mark.parametrize("name", list(TREES), ids=list(TREES))
def test_flatten_unflatten_round_trip(name):
    t = TREES[name]
    leaves, td = tree.flatten(t)
    assert td.num_leaves == len(leaves)
    rebuilt = tree.unflatten(td, leaves)
    assert type(rebuilt) is type(t)
    assert tree.flatten(rebuilt)[1] == td
    for x, y in zip(tree.leaves(rebuilt), leaves, strict=True):
        assert x is y


def test_dict_order_does_not_matter():
    a = {"x": torch.ones(1), "y": torch.zeros(1)}
    b = {"y": torch.zeros(1), "x": torch.ones(1)}
    assert tree.flatten(a)[1] == tree.flatten(b)[1]


def test_vector_space_helpers():
    x = (torch.tensor([1.0, 2.0]), {"w": torch.tensor([3.0])})
    y = (torch.tensor([0.5, 0.5]), {"w": torch.tensor([1.0])})
    assert float(tree.tree_vdot(x, y)) == 1.0 * 0.5 + 2.0 * 0.5 + 3.0 * 1.0
    s = tree.tree_add(x, tree.tree_scale(2.0, y))
    assert torch.equal(s[0], torch.tensor([2.0, 3.0]))
    assert torch.equal(s[1]["w"], torch.tensor([5.0]))
    d = tree.tree_sub(x, x)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in tree.leaves(d))
    z = tree.tree_zeros_like(x)
    assert tree.tree_size(z) == 3 and float(tree.tree_vdot(z, z)) == 0.0


def test_structure_mismatch_errors():
    with pytest.raises(ValueError, match="structures differ"):
        tree.tree_add((torch.ones(1),), [torch.ones(1)])
    with pytest.raises(ValueError, match="has 2 leaves, got 1"):
        tree.unflatten(tree.flatten((1, 2))[1], [1])
