"""`relative_position` against transformers' T5 attention bias, and in T5-style attention."""

from __future__ import annotations

import pytest
import torch
import transformers

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError


def build(body: str, kv: bool = False):
    extra = "\n  input y: float[B, S, 16]" if kv else ""
    text = f"nexus 0.1\nmodel M {{\n  input x: float[B, T, 16]{extra}\n  output out = {body}\n}}\n"
    return nexusdsl.compile(nexusdsl.loads(text, "bias.nx"))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bias_equals_t5s(bidirectional):
    config = transformers.T5Config(d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20, is_decoder=not bidirectional)
    t5 = transformers.models.t5.modeling_t5.T5Attention(config, has_relative_attention_bias=True)
    flag = str(bidirectional).lower()
    m = build(f"relative_position(x, heads = 4, buckets = 8, max_distance = 20, "
              f"bidirectional = {flag})")
    with torch.no_grad():
        m.relative_position.weight.copy_(t5.relative_attention_bias.weight)
    for T in (1, 7, 40):  # beyond max_distance the last bucket holds
        expected = t5.compute_bias(T, T)[0]
        assert torch.equal(m(torch.randn(2, T, 16)), expected)


def test_cross_lengths():
    m = build("relative_position(x, heads = 2, kv = y)", kv=True)
    assert m(torch.randn(1, 3, 16), torch.randn(1, 5, 16)).shape == (2, 3, 5)


def test_too_few_buckets_is_a_located_error():
    with pytest.raises(NexusError, match="bias.nx:4:.*max_distance"):
        build("relative_position(x, heads = 2, buckets = 8, max_distance = 2)")
