"""`layout`: einops patterns with named axes, checked statically."""

import einops
import pytest
import torch

from nexusdsl.ir.types import Axis
from nexusdsl.ops import REGISTRY

from .conftest import build, close, op_error, tt

PATTERN = "b (i j k) d -> b i j k d"


def test_decomposes_with_one_inferred_size_and_names_axes():
    b = build("layout", tt("B", ("T", 64), ("d", 3)), pattern=PATTERN, i=4, j=2)
    assert b.type == tt("B", ("i", 4), ("j", 2), ("k", 8), ("d", 3))
    x = torch.randn(2, 64, 3)
    close(b(x), x.reshape(2, 4, 2, 8, 3))  # an independent reshape
    close(b(x), einops.rearrange(x, PATTERN, i=4, j=2))


def test_composition_and_permutation():
    b = build("layout", tt("B", ("i", 4), ("j", 5), ("d", 3)), pattern="b i j d -> (b j) d i")
    assert b.type.axes == (Axis(name="B*5"), Axis(name="d", size=3), Axis(name="i", size=4))
    x = torch.randn(2, 4, 5, 3)
    close(b(x), x.permute(0, 2, 3, 1).reshape(10, 3, 4))
    fixed = build("layout", tt(("i", 4), ("j", 5)), pattern="i j -> (j i)")
    assert fixed.type == tt(20)


def test_a_group_written_as_on_the_left_gives_back_the_input_axis():
    b = build("layout", tt("B", "T", ("d", 6)), pattern="b t (h c) -> b (h c) t", h=2)
    assert b.type.axes == (Axis(name="B"), Axis(name="d", size=6), Axis(name="T"))


def test_ellipsis_and_symbolic_decomposition():
    b = build("layout", tt("B", "T", ("d", 8)), pattern="... (h c) -> ... h c", h=2)
    assert b.type == tt("B", "T", ("h", 2), ("c", 4))
    s = build("layout", tt("B", "T", ("d", 8)), pattern="b (n w) d -> b n w d", w=4)
    assert s.type.axes[1:3] == (Axis(name="n"), Axis(name="w", size=4))
    close(s(torch.arange(2 * 12 * 8.0).view(2, 12, 8)),
          torch.arange(2 * 12 * 8.0).view(2, 3, 4, 8))


def test_modality_survives_while_the_sequence_axis_stays_in_place():
    x = tt("B", "T", ("d", 8), modality="text")
    assert build("layout", x, pattern="b t d -> b t d").type.modality == "text"
    assert build("layout", x, pattern="b t (h c) -> b t (c h)", h=2).type.modality == "text"
    assert build("layout", x, pattern="b t d -> t b d").type.modality is None
    assert build("layout", x, pattern="b t (h c) -> b t h c", h=2).type.modality is None


@pytest.mark.parametrize("pattern,sizes,message", [
    (PATTERN, dict(i=10, j=25), "layout: axis T of size 4096 is not divisible by i*j = 250"),
    (PATTERN, dict(i=16), "cannot split axis T of size 4096 into (i j k)"),
    ("b (i j) d -> b i j d", dict(i=16, j=16), "layout: axis T has size 4096, but i*j = 256"),
    ("b t d -> b t q", {}, "axis q on the right of the pattern is not on the left"),
    ("b t d -> b t", {}, "axis d on the left of the pattern is missing on the right"),
    ("b b d -> b d", {}, "axis b appears twice on the left"),
    ("b t -> b t", {}, "the left side of \"b t -> b t\" has 2 axes, but the input"),
    ("b t d", {}, "a pattern reads like"),
    ("b (t d -> b t d", {}, "is not closed"),
    ("b t d -> b t d", dict(q=3), "q = 3 is given, but the pattern has no axis q"),
    ("b t d -> b t d", dict(d=3), "layout: d = 3, but axis d is 8"),
    ("b t d -> b t d", dict(t=0), "not a positive integer"),
    ("b t 2 -> b t", {}, "unexpected `2`"),
])
def test_layout_errors(pattern, sizes, message):
    x = tt("B", ("T", 4096), ("d", 8)) if "i" in pattern else tt("B", ("T", 6), ("d", 8))
    assert message in op_error("layout", x, pattern=pattern, **sizes).message


def test_sizes_survive_the_ir_round_trip_and_flops_are_zero():
    b = build("layout", tt("B", ("T", 64), ("d", 3)), pattern=PATTERN, i=4, j=2)
    assert b.attrs.model_extra == {"i": 4, "j": 2}
    assert REGISTRY["layout"].flops([(2, 64, 3)], [(2, 4, 2, 8, 3)], b.attrs) == 0
