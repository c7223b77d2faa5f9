"""`select(x, index, axis)` against torch indexing."""

import pytest
import torch

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError


def build(body: str, shape: str = "B, T, 6"):
    text = f"nexus 0.1\nmodel M {{\n  input x: float[{shape}]\n  output y = {body}\n}}\n"
    return nexusdsl.compile(nexusdsl.loads(text, "select.nx"))


@pytest.mark.parametrize("body,index", [
    ("select(x, 0)", (slice(None), 0)),
    ("select(x, -1)", (slice(None), -1)),
    ("select(x, 2, axis = 0)", (2,)),
    ("select(x, 1, axis = -1)", (slice(None), slice(None), 1)),
])
def test_select_is_torch_indexing(body, index):
    x = torch.randn(3, 5, 6)
    assert torch.equal(build(body)(x), x[index])


def test_an_index_outside_a_fixed_axis_is_located():
    with pytest.raises(NexusError, match="select.nx:4:.*index 7 is outside"):
        build("select(x, 7, axis = -1)")
