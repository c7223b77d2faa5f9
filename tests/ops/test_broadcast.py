"""Broadcasting of `a + b`, `a - b`, `a * b`: hypothesis against torch's own rules."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.arithmetic import broadcast
from nexusdsl.ops.base import OpError

from .conftest import context

names = st.sampled_from([None, "a", "b"])
fixed_axes = st.builds(Axis, name=names, size=st.integers(1, 3))
shapes = st.lists(fixed_axes, max_size=4).map(lambda axes: TensorType(axes=tuple(axes)))


def torch_shape(a: TensorType, b: TensorType):
    try:
        return tuple(torch.broadcast_shapes(a.sizes, b.sizes))
    except RuntimeError:
        return None


@settings(max_examples=300, deadline=None)
@given(shapes, shapes)
def test_fixed_sizes_broadcast_exactly_like_torch(a, b):
    want = torch_shape(a, b)
    try:
        got = REGISTRY["add"].infer(context(), [a, b], REGISTRY["add"].Attrs())[0]
    except OpError as err:
        assert want is None, err.message
        assert "on the left" in err.message and "on the right" in err.message
        assert err.about == (0, 1)
        return
    assert got.sizes == want


@settings(max_examples=200, deadline=None)
@given(shapes, shapes)
def test_the_axis_that_gives_the_size_gives_the_name(a, b):
    try:
        axes = broadcast(a, b)
    except OpError:
        return
    left = (None,) * (len(axes) - a.rank) + a.axes
    right = (None,) * (len(axes) - b.rank) + b.axes
    for out, la, ra in zip(axes, left, right):
        if la is None or (ra is not None and la.size == 1 and ra.size != 1):
            assert out == ra  # the left broadcasts
        elif la.name is not None or ra is None or ra.size == 1:
            assert out == la
        else:
            assert out == ra  # equal sizes, only the right one named


symbolic = st.sampled_from(["B", "T"]).map(lambda n: Axis(name=n))
mixed = st.lists(st.one_of(fixed_axes, symbolic), max_size=3).map(
    lambda axes: TensorType(axes=tuple(axes)))


@settings(max_examples=200, deadline=None)
@given(mixed, mixed)
def test_symbolic_axes_match_by_name_and_broadcast_against_one(a, b):
    try:
        axes = broadcast(a, b)
    except OpError:
        return
    left = (None,) * (len(axes) - a.rank) + a.axes
    right = (None,) * (len(axes) - b.rank) + b.axes
    for out, la, ra in zip(axes, left, right):
        for side, other in ((la, ra), (ra, la)):
            if side is not None and side.size is None:  # a symbolic axis survives unchanged
                assert other is None or other.size == 1 or other == side
                assert out == side
