"""`attention` against a hand-written nanoGPT-style CausalSelfAttention."""

import math

import pytest
import torch
from torch import nn

from nexusdsl.ops import REGISTRY

from .conftest import build, close, op_error, tt


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention with the slow path written out: c_attn = qkv, c_proj = out."""

    def __init__(self, d, heads, causal, bias):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, H, T, T)
        if self.causal:
            mask = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
            att = att.masked_fill(mask == 0, float("-inf"))
        y = att.softmax(dim=-1) @ v  # (B, H, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


def load_reference(ref, module):
    with torch.no_grad():
        for ours, theirs in (("qkv", ref.c_attn), ("out", ref.c_proj)):
            for kind in ("weight", "bias"):
                if getattr(theirs, kind) is not None:
                    module.get_parameter(f"{ours}.{kind}").copy_(getattr(theirs, kind))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_equals_nanogpt(causal, bias):
    torch.manual_seed(0)
    b = build("attention", tt("B", "T", ("d", 32)), heads=4, causal=causal, bias=bias)
    assert b.type == tt("B", "T", ("d", 32))
    ref = CausalSelfAttention(32, 4, causal, bias)
    load_reference(ref, b.module)
    x = torch.randn(3, 11, 32)
    close(b(x), ref(x))
    assert b.param_count == 4 * 32 * 32 + (4 * 32 if bias else 0)
    assert b.params["qkv.weight"].shape == (96, 32) and b.params["out.weight"].shape == (32, 32)
    assert b.params["qkv.weight"].std == 1 / math.sqrt(32)


def test_attention_along_another_axis():
    torch.manual_seed(0)
    b = build("attention", tt("B", ("i", 5), ("j", 6), ("d", 16)), heads=2, axis="i")
    assert b.attrs.axis == 1
    ref = CausalSelfAttention(16, 2, False, True)
    load_reference(ref, b.module)
    x = torch.randn(2, 5, 6, 16)
    flat = x.transpose(1, 2).reshape(12, 5, 16)  # every (b, j) is a sequence along i
    want = ref(flat).reshape(2, 6, 5, 16).transpose(1, 2)
    close(b(x), want)


def test_attention_dropout_only_while_training():
    b = build("attention", tt("B", "T", ("d", 16)), heads=2, dropout=0.5)
    x = torch.randn(2, 7, 16)
    b.module.eval()
    plain = build("attention", tt("B", "T", ("d", 16)), heads=2)
    plain.module.load_state_dict(b.module.state_dict())
    close(b(x), plain(x))
    b.module.train()
    assert not torch.allclose(b(x), plain(x))


def test_attention_errors():
    assert op_error("attention", tt("B", "T", ("d", 130)), heads=4).message == (
        "attention: width d=130 is not divisible by heads = 4; give head_dim")
    assert "holds the channels" in op_error("attention", tt("B", "T", ("d", 8)), heads=2,
                                            axis=-1).message
    assert "names no axis" in op_error("attention", tt("B", "T", ("d", 8)), heads=2,
                                       axis="q").message


def test_attention_flops():
    op = REGISTRY["attention"]
    T, d = 10, 8
    full = 2 * T * d * 3 * d + 2 * T * T * d * 2 + 2 * T * d * d
    attrs = op.Attrs(heads=2)
    assert op.flops([(3, T, d)], [(3, T, d)], attrs) == 3 * full
    causal = op.Attrs(heads=2, causal=True)
    assert op.flops([(1, T, d)], [(1, T, d)], causal) == full - 2 * T * T * d
    along_i = op.Attrs(heads=2, axis=1)
    assert op.flops([(2, T, 4, d)], [(2, T, 4, d)], along_i) == 8 * full
