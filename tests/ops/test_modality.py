"""Modality ops: embed / unembed / tag / generate against torch references."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nexusdsl.ir.graph import Node, ParamSpec
from nexusdsl.ir.types import Axis, CodeSegment
from nexusdsl.ops import REGISTRY

from .conftest import build, close, context, op_error, tt

DIM = context({"dim": "dim"})


# ---------------------------------------------------------------------------- embed


@pytest.mark.parametrize("modality,vocab", [("text", 256), ("words", 50)])
def test_embed_discrete_is_a_table_lookup(modality, vocab):
    b = build("embed", tt("B", "T", dtype="i64", modality=modality), ctx=DIM, dim=16)
    assert b.type == tt("B", "T", ("dim", 16), modality=modality)
    assert b.attrs.kind in ("bytes", "ids") and b.attrs.options is None
    assert b.params["weight"].shape == (vocab, 16) and b.params["weight"].std == 0.02
    ref = nn.Embedding(vocab, 16)
    ref.weight.data.copy_(b.module.weight)
    ids = torch.randint(0, vocab, (2, 9))
    close(b(ids), ref(ids))
    assert REGISTRY["embed"].flops([(2, 9)], [(2, 9, 16)], b.attrs) == 0


def test_embed_patches_equals_a_vit_conv():
    b = build("embed", tt("B", 3, 4, 6, modality="image"), ctx=DIM, dim=5)
    assert b.type == tt("B", 6, ("dim", 5), modality="image")
    assert b.attrs.options == {"size": 2}
    assert b.params["proj.weight"].shape == (5, 12)
    conv = nn.Conv2d(3, 5, kernel_size=2, stride=2)
    with torch.no_grad():
        conv.weight.copy_(b.module.proj.weight.view(5, 3, 2, 2))
        conv.bias.copy_(b.module.proj.bias)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    b.module.double()
    close(b(x), conv.double()(x).flatten(2).transpose(1, 2))


def test_embed_tubelets_equals_a_conv3d():
    b = build("embed", tt("B", 4, 3, 4, 4, modality="video"), dim=5)
    assert b.type.axes[1] == Axis(size=8) and b.params["proj.weight"].shape == (5, 24)
    conv = nn.Conv3d(3, 5, kernel_size=2, stride=2)  # (t, p, q) = (2, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(b.module.proj.weight.view(5, 3, 2, 2, 2))
        conv.bias.copy_(b.module.proj.bias)
    x = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)  # (B, F, C, H, W)
    b.module.double()
    close(b(x), conv.double()(x.transpose(1, 2)).flatten(2).transpose(1, 2))


def test_embed_frames_projects_overlapping_windows():
    b = build("embed", tt("B", ("S", 40), modality="audio"), dim=3)
    assert b.type.axes[1] == Axis(size=9)  # (40 - 8) // 4 + 1
    x = torch.randn(2, 40)
    frames = torch.stack([x[:, 4 * n: 4 * n + 8] for n in range(9)], dim=1)
    close(b(x), frames @ b.module.proj.weight.T + b.module.proj.bias)
    symbolic = build("embed", tt("B", "S", modality="audio"), dim=3)
    assert symbolic.type.axes[1] == Axis(name="(S-8)//4+1")
    assert REGISTRY["embed"].flops([(2, 40)], [(2, 9, 3)], b.attrs) == 2 * 2 * 9 * 3 * 8


def test_embed_signal_with_and_without_channel_axis():
    mono = build("embed", tt("B", "S", modality="wave"), dim=4)
    assert mono.type == tt("B", "S", 4, modality="wave")
    x = torch.randn(2, 10)
    close(mono(x), x[..., None] * mono.module.proj.weight[:, 0] + mono.module.proj.bias)
    stereo = build("embed", tt("B", "S", 2, modality="stereo"), dim=4)
    y = torch.randn(2, 10, 2)
    close(stereo(y), F.linear(y, stereo.module.proj.weight, stereo.module.proj.bias))
    assert "needs a channel axis" in op_error("embed", tt("B", "S", modality="stereo"),
                                              dim=4).message


@pytest.mark.parametrize("x,message", [
    (tt("B", ("D", 8)), "embed needs an input with a modality"),
    (tt("B", 1, 4, 6, modality="image"),
     "embed: axis 1 of image[B, 1, 4, 6] has 1 channels, but modality image has channels = 3"),
    (tt("B", 3, ("H", 5), 6, modality="image"),
     "embed: axis H of image[B, 3, H=5, 6] has size 5, which is not divisible by size = 2"),
    (tt("B", 3, "H", 6, modality="image"), "symbolic"),
    (tt("B", 3, 4, modality="video"), "needs a tensor of shape [B, F, C, H, W]"),
    (tt("B", ("S", 4), modality="audio"), "fewer than one frame (window = 8)"),
    (tt("B", "T", modality="text"), "modality text holds integer ids, but the input is f32"),
    (tt("B", "T", modality="klingon"), "modality klingon is not declared"),
])
def test_embed_errors(x, message):
    assert message in op_error("embed", x, dim=4).message


def test_embed_kind_is_not_a_user_setting():
    x = tt("B", "T", dtype="i64", modality="text")
    assert "leave it out" in op_error("embed", x, dim=4, kind="patches").message


# ---------------------------------------------------------------------------- unembed


def embed_node(vocab=256, width=16, op="embed"):
    params = {"weight": ParamSpec(shape=(vocab, width))} if op == "embed" else {}
    return Node(id=0, op=op, name="tok", params=params)


def test_unembed_tied_to_an_embedding():
    ctx = context(lookup=lambda name: embed_node() if name == "tok" else None)
    b = build("unembed", tt("B", "T", ("dim", 16), modality="text"), ctx=ctx, tie="tok")
    assert b.type == tt("B", "T", ("vocab", 256), modality="text")
    assert b.params == {"weight": ParamSpec(shape=(256, 16), tied_to="tok.weight")}
    assert b.param_count == 0
    table = nn.Embedding(256, 16)
    b.module.weight = table.weight  # what the lowering's tying does
    x = torch.randn(2, 3, 16)
    close(b(x), x @ table.weight.T)


def test_unembed_with_its_own_weight_and_bias():
    b = build("unembed", tt("B", "T", 16, modality="words"), bias=True)
    assert b.type.axes[-1] == Axis(name="vocab", size=50)
    assert b.params["weight"].shape == (50, 16) and b.params["bias"].init == "zeros"
    x = torch.randn(2, 3, 16)
    close(b(x), F.linear(x, b.module.weight, b.module.bias))
    hinted = build("unembed", tt("B", 16), ctx=context({"vocab": "classes"}), vocab=10)
    assert hinted.type == tt("B", ("classes", 10))


def test_unembed_errors():
    ctx = context(lookup={"tok": embed_node(), "lin": embed_node(op="linear")}.get)
    x = tt("B", "T", ("dim", 32))
    assert op_error("unembed", x, ctx=ctx, tie="tok").message == (
        "unembed: the input width dim=32 does not match the width 16 of the tied embedding tok")
    assert "names no node" in op_error("unembed", x, ctx=ctx, tie="nope").message
    assert "but lin is a linear" in op_error("unembed", x, ctx=ctx, tie="lin").message
    assert "has 256 entries" in op_error("unembed", tt("B", 16), ctx=ctx, tie="tok",
                                         vocab=100).message
    assert "needs `tie = <an embed>` or `vocab = N`" in op_error("unembed", x).message


# ---------------------------------------------------------------------------- tag, generate


def test_tag_adds_a_code_vector_and_records_codes():
    b = build("tag", tt("B", ("N", 6), ("dim", 8), modality="image"))
    assert b.type.codes == (CodeSegment(code=1, modality="image", length=Axis(name="N", size=6)),)
    assert b.params["code"].shape == (8,)
    x = torch.randn(2, 6, 8)
    close(b(x), x + b.module.code)
    assert "tag needs an input with a modality" in op_error("tag", tt("B", "T", 8)).message


@pytest.mark.parametrize("modality,width", [("image", 12), ("audio", 8), ("video", 24),
                                            ("stereo", 2)])
def test_generate_predicts_token_values(modality, width):
    b = build("generate", tt("B", "N", 16, modality="text"), modality=modality)
    assert b.type == tt("B", "N", width, modality=modality)
    assert b.params["weight"].shape == (width, 16)
    x = torch.randn(2, 4, 16)
    close(b(x), x @ b.module.weight.T + b.module.bias)


def test_generate_errors():
    x = tt("B", "N", 16)
    assert op_error("generate", x, modality="text").message == (
        "generate: use unembed for discrete modality text")
    assert "unknown modality smell" in op_error("generate", x, modality="smell").message
