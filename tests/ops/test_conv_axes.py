"""conv over named axes (`axes = [h, w]`) against torch's nn.Conv1d/2d/3d: a ViT's patchify,
channels-last and channels-first layouts, per-axis kernel, stride and padding, groups, extra
batch axes; the output shapes' formula; the 1-d convolution over tokens unchanged; and the
located error that replaced the silent reading of an image as tokens."""

import math

import pytest
import torch
from torch import nn
from transformers import ViTConfig
from transformers.models.vit.modeling_vit import ViTPatchEmbeddings

import nexusdsl
from nexusdsl.ir.types import Axis

from .conftest import build, close, op_error, tt

PATCHIFY = """\
model Patchify(dim = 24) {
  input pixels: float[B, C=3, h=32, w=32]
  p = conv(pixels, dim, kernel = 16, stride = 16, axes = [h, w]) as projection
  output tokens = layout(p, "b d h w -> b (h w) d")
}
"""


def load(module: nn.Module, built) -> None:
    """torch's module takes the op's parameters as they are: same names, same shapes."""
    module.load_state_dict(built.module.state_dict())


def test_vit_patchify_is_conv2d_then_flatten():
    model = nexusdsl.compile(nexusdsl.loads(PATCHIFY, "v.nx"), opt=0)
    reference = nn.Conv2d(3, 24, kernel_size=16, stride=16)
    reference.load_state_dict({k.removeprefix("projection."): v
                               for k, v in model.state_dict().items()})
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), reference(pixels).flatten(2).transpose(1, 2))


def test_a_vit_patch_projection_loads_as_it_is():
    config = ViTConfig(hidden_size=24, image_size=32, patch_size=16, num_channels=3)
    reference = ViTPatchEmbeddings(config).eval()
    model = nexusdsl.compile(nexusdsl.loads(PATCHIFY, "v.nx"), opt=0)
    model.load_state_dict(reference.state_dict())  # projection.weight, projection.bias
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), reference(pixels))


def test_the_output_keeps_the_layout_and_names_the_channels_after_out():
    graph = nexusdsl.loads(PATCHIFY, "v.nx").elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "conv"]
    assert node.outputs[0].axes == (Axis(name="B"), Axis(name="dim", size=24), Axis(size=2),
                                    Axis(size=2))
    assert node.attrs["axes"] == [2, 3] and node.attrs["kernel"] == [16, 16]
    assert {k: v.shape for k, v in node.params.items()} == {"weight": (24, 3, 16, 16),
                                                            "bias": (24,)}
    assert node.params["weight"].std == 1 / math.sqrt(3 * 16 * 16)  # nn.Conv2d's bound


def test_channels_last_with_a_kernel_stride_and_padding_per_axis():
    b = build("conv", tt("B", ("H", 9), ("W", 7), ("C", 4)), out=6, kernel=[3, 2],
              stride=[2, 1], padding=[1, 0], axes=["H", "W"])
    assert b.attrs.axes == [1, 2]
    assert b.type == tt("B", 5, 6, 6)  # (9 + 2 - 3) // 2 + 1, (7 - 2) // 1 + 1, then out
    reference = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0))
    load(reference, b)
    x = torch.randn(2, 9, 7, 4)
    close(b(x), reference(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), atol=1e-5)


def test_channels_first_over_one_axis_is_conv1d():
    b = build("conv", tt("B", ("C", 3), ("L", 12)), out=5, kernel=4, stride=2, axes=["L"])
    assert b.type == tt("B", 5, 5)
    reference = nn.Conv1d(3, 5, 4, stride=2)
    load(reference, b)
    x = torch.randn(2, 3, 12)
    close(b(x), reference(x), atol=1e-5)


def test_three_axes_with_groups_is_conv3d_and_its_portable_form_too():
    b = build("conv", tt("B", 4, 4, 6, 6), out=8, kernel=[2, 3, 3], stride=[2, 3, 3],
              groups=2, axes=[2, 3, 4])
    assert b.type == tt("B", 8, 2, 2, 2)
    assert b.params["weight"].shape == (8, 2, 2, 3, 3)
    reference = nn.Conv3d(4, 8, (2, 3, 3), stride=(2, 3, 3), groups=2)
    load(reference, b)
    x = torch.randn(2, 4, 4, 6, 6)
    close(b(x), reference(x), atol=1e-5)
    portable = nexusdsl.ops.REGISTRY["conv"].lower_portable(b.attrs)  # one group at a time
    close(portable(b.module, x), reference(x), atol=1e-5)


def test_leading_axes_before_the_channels_are_batch():
    b = build("conv", tt(("A", 3), "B", ("C", 2), ("H", 5), ("W", 5)), out=4, kernel=3,
              padding=1, axes=["H", "W"])
    assert b.type == tt(("A", 3), "B", 4, ("H", 5), ("W", 5))  # "same": the axes stay
    reference = nn.Conv2d(2, 4, 3, padding=1)
    load(reference, b)
    x = torch.randn(3, 2, 2, 5, 5)
    close(b(x), reference(x.reshape(6, 2, 5, 5)).reshape(3, 2, 4, 5, 5), atol=1e-5)


@pytest.mark.parametrize("n,k,s,p", [(10, 3, 1, 0), (10, 3, 2, 1), (11, 4, 3, 2), (4, 4, 4, 0),
                                     (7, 1, 1, 0), (5, 5, 1, 2)])
def test_each_convolved_axis_is_floor_of_n_plus_2p_minus_k_over_s_plus_1(n, k, s, p):
    b = build("conv", tt("B", ("C", 2), ("L", n)), out=3, kernel=k, stride=s, padding=p,
              axes=[2])
    want = (n + 2 * p - k) // s + 1
    assert b.type.axes[2].size == want
    assert b(torch.randn(2, 2, n)).shape == (2, 3, want)
    flops = nexusdsl.ops.REGISTRY["conv"].flops([(2, 2, n)], [(2, 3, want)], b.attrs)
    assert flops == 2 * 3 * want * 2 * 2 * k  # per output: C * k multiply-adds


def test_flops_are_what_torch_counts():
    from torch.utils.flop_counter import FlopCounterMode

    b = build("conv", tt("B", ("H", 9), ("W", 7), ("C", 4)), out=6, kernel=[3, 2], stride=[2, 1],
              groups=2, padding=[1, 0], axes=["H", "W"])
    x = torch.randn(2, 9, 7, 4)
    with FlopCounterMode(display=False) as counter:
        y = b(x)
    flops = nexusdsl.ops.REGISTRY["conv"].flops([tuple(x.shape)], [tuple(y.shape)], b.attrs)
    assert flops == counter.get_total_flops() > 0


def test_a_symbolic_axis_gets_a_named_size():
    b = build("conv", tt("B", ("C", 2), "L"), out=3, kernel=4, stride=2, padding=1, axes=["L"])
    assert b.type.axes[2] == Axis(name="(L+2-4)//2+1")
    assert b(torch.randn(2, 2, 10)).shape == (2, 3, 5)


def test_without_axes_the_1d_convolution_over_tokens_is_unchanged():
    graph = nexusdsl.loads("model M {\n  input x: float[B, T, 8]\n"
                           "  output y = conv(x, 8, kernel = 3, causal = true, groups = 8)\n}\n",
                           "m.nx").elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "conv"]
    assert node.attrs == {"out": 8, "kernel": 3, "stride": 1, "groups": 8, "causal": True,
                          "bias": True}  # no axes or padding keys: prints and hashes as before


def test_kernel_fusion_leaves_convolutions_over_axes_alone():
    text = """\
model M {
  input x: float[B, T, 8]
  output y = conv(x, 8, kernel = 3, padding = 1, groups = 8, axes = [T])
}
"""
    plain = nexusdsl.compile(nexusdsl.loads(text, "m.nx"), opt=0)
    fused = nexusdsl.compile(nexusdsl.loads(text, "m.nx"), opt=2)
    assert [n.op for n in fused.graph.nodes() if not n.is_input] == ["conv"]
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(fused(x), plain(x))


def test_an_image_without_axes_is_a_located_error_naming_both_axes():
    text = """\
model ViT(dim = 8) {
  input pixels: float[B, 3, 224, 224]
  output y = conv(pixels, dim, kernel = 16, stride = 16)
}
"""
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "vit.nx")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (3, 14)
    assert d.message == (
        "conv: without `axes`, conv convolves the second-last axis with the channels in the "
        "last, as for tokens [*, T, C]: here axis 2 (size 224) with axis 3 (size 224) of "
        "f32[B, 3, 224, 224], which has 4 axes; say which axes to convolve: `axes = [2]` "
        "keeps that reading, `axes = [2, 3]` convolves both, the channels then being axis 1 "
        "(size 3): channels-first, as PyTorch's [B, C, H, W]")
    assert str(info.value).startswith("vit.nx:3:14: error: conv: without `axes`")


def test_the_suggestion_names_axes_by_name_where_they_have_one():
    err = op_error("conv", tt("B", ("C", 3), ("h", 8), ("w", 8)), out=4, kernel=2)
    assert "`axes = [h]` keeps that reading, `axes = [h, w]` convolves both, the channels " \
           "then being axis C" in err.message


@pytest.mark.parametrize("x,attrs,message", [
    (tt("B", 3, 8, 8), {"kernel": [2, 2, 2], "axes": [2, 3]},
     "conv: kernel = [2, 2, 2] gives 3 values for 2 axes; give one value, or one per axis"),
    (tt("B", 3, 8, 8), {"kernel": 2, "stride": [1, 2, 3], "axes": [2, 3]},
     "conv: stride = [1, 2, 3] gives 3 values for 2 axes"),
    (tt("B", 3, 8, 8), {"kernel": 2, "axes": [3, -1]}, "conv: axis 3 is listed twice in axes"),
    (tt("B", 2, 3, 4, 5, 6), {"kernel": 1, "axes": [2, 3, 4, 5]},
     "conv: axes = [2, 3, 4, 5] lists 4 axes; conv convolves 1 to 3"),
    (tt(4, 4, 4), {"kernel": 1, "axes": [0, 1, 2]}, "conv: axes = [0, 1, 2] leave no channel"),
    (tt("B", "C", 8, 8), {"kernel": 2, "axes": [2, 3]}, "conv: the channels, axis C of"),
    (tt("B", 3, 8, 8), {"kernel": 9, "axes": [2, 3]}, "conv: 8 is shorter than the kernel (9)"),
    (tt("B", 3, 8, 8), {"kernel": 3, "causal": True, "axes": [2, 3]},
     "conv: `causal` applies to the 1-d convolution"),
    (tt("B", 3, 8, 8), {"kernel": 3, "axes": ["q"]}, "conv: axes = q names no axis"),
    (tt("B", "T", 8), {"kernel": 3, "padding": 1}, "conv: `padding` needs `axes = [...]`"),
    (tt("B", "T", 8), {"kernel": [3]}, "conv: kernel = [3] lists one value per axis"),
    (tt("B", 6, 8, 8), {"kernel": 3, "groups": 4, "axes": [2, 3]},
     "conv: input width 6 is not divisible by groups = 4"),
])
def test_mistakes(x, attrs, message):
    assert op_error("conv", x, out=4, **attrs).message.startswith(message)
