"""Junk given to the Python API and the IR constructors ends in an OptError, nothing else.

Every constructor receives random values of the wrong kinds (None, booleans,
huge ints, NaN and inf, strings, ragged lists, dicts, tensors with NaN,
slices with steps, sets, arbitrary objects); the only exception allowed is
an :class:`optlayer.OptError` subclass with a message.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optlayer as ol
import optlayer.ir as ir
from optlayer.errors import OptError

x = ol.Variable(3, name="x")
A = ol.Parameter(2, 3, name="A")
s = ol.Variable(name="s")

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.sampled_from([[1, 2], [[1, 2], [3]], {}, (0, 0, 0), slice(1, None, 2), ir.Slice(0, 5)]),
    st.sampled_from([x, A, s, ol.simplex, ol.box(0, 1)]),
    st.builds(lambda: torch.zeros(3)), st.builds(lambda: np.ones(3)),
    st.builds(lambda: torch.tensor([float("nan")])), st.builds(object),
)

CALLS = {
    "add": lambda a, b, name: ir.add(a, b),
    "sub": lambda a, b, name: ir.sub(a, b),
    "mul": lambda a, b, name: ir.mul(a, b),
    "div": lambda a, b, name: ir.div(a, b),
    "matmul": lambda a, b, name: ir.matmul(a, b),
    "power": lambda a, b, name: ir.power(a, b),
    "index": lambda a, b, name: ir.index(a, b),
    "apply": lambda a, b, name: ir.apply(name, [a, b][: ir.ATOMS[name].arity[0]]),
    "member": lambda a, b, name: ir.member(a, b),
    "constraint": lambda a, b, name: ir.constraint("<=", a, b),
    "Variable": lambda a, b, name: ol.Variable(a, name=b),
    "Parameter": lambda a, b, name: ol.Parameter(a, b, name="p"),
    "let": lambda a, b, name: ir.let(a, b),
    "Problem": lambda a, b, name: ol.Problem(ir.minimize(a), b),
    "set": lambda a, b, name: ir.make_set(a, [b]),
    "dim": lambda a, b, name: ol.dim(a),
}


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CALLS)), JUNK, JUNK, st.sampled_from(sorted(ir.ATOMS)))
def test_junk_gives_opt_errors_only(call, a, b, name):
    try:
        CALLS[call](a, b, name)
    except OptError as err:
        assert err.message
