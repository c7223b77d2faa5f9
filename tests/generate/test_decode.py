"""Incremental decoding derived from the graph (compiler/lower/decode.py): for every family and
example that decodes, a prompt then one token at a time gives the logits the full forward gives
at every position, and a left-padded batch of prompts of different lengths gives each row what
the row alone gives."""

from __future__ import annotations

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.lower.decode import Decoder, decode_plan
from tests.conftest import family_program

FAMILIES = {
    "llama": dict(vocab=97, dim=32, depth=2, heads=4, kv_heads=2, head_dim=8, hidden=48),
    "mistral": dict(vocab=97, dim=32, depth=2, heads=4, kv_heads=2, head_dim=8, hidden=48,
                    window=4),
    "qwen3": dict(vocab=97, dim=32, depth=2, heads=4, kv_heads=2, head_dim=8, hidden=48),
    "gemma3": dict(vocab=97, dim=32, depth=6, heads=4, kv_heads=2, head_dim=8, hidden=48,
                   window=3, query_scale=16),
    "mixtral": dict(vocab=97, dim=32, depth=2, heads=4, kv_heads=2, head_dim=8, n=4, k=2,
                    hidden=16),
    "qwen3_moe": dict(vocab=97, dim=32, depth=2, heads=4, kv_heads=2, head_dim=8, n=4, k=2,
                      moe_hidden=16, hidden=24, dense=[1]),
    "deepseek_v3": dict(vocab=97, dim=32, depth=2, dense=1, heads=4, q_rank=16, kv_rank=8,
                        nope_dim=6, rope_dim=4, v_dim=6, hidden=48, n=8, k=2, moe_hidden=12,
                        groups=4, topk_groups=2),
    "gpt2": dict(vocab=97, dim=32, depth=2, heads=4, context=64),
}


def family(name: str, **hyper):
    return nexusdsl.compile(family_program(name), dtype="f64",
                            **hyper).eval()


def close(a, b, tol=1e-10):
    assert ((a - b).abs().max() / b.abs().max()).item() <= tol


@pytest.mark.parametrize("name", sorted(FAMILIES))
@torch.no_grad()
def test_prompt_then_steps_equal_the_full_forward(name):
    model = family(name, **FAMILIES[name])
    tokens = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    full = model(tokens)
    with Decoder(model, batch=2, capacity=12) as decode:
        parts = [decode(tokens[:, :5])] + [decode(tokens[:, t:t + 1]) for t in range(5, 11)]
    close(torch.cat(parts, 1), full)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@torch.no_grad()
def test_a_padded_batch_of_prompts_equals_each_alone(name):
    model = family(name, **FAMILIES[name])
    gen = torch.Generator().manual_seed(2)
    lengths, more = [7, 3, 5], 4
    rows = [torch.randint(1, 97, (n + more,), generator=gen) for n in lengths]
    width = max(lengths)
    tokens = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for r, n in enumerate(lengths):  # padded on the left, as generation pads
        tokens[r, width - n:], mask[r, width - n:] = rows[r][:n], True
    with Decoder(model, batch=3, capacity=width + more) as decode:
        outs = [decode(tokens, mask)]
        for t in range(more):
            outs.append(decode(torch.stack([row[n + t] for row, n in zip(rows, lengths)])[:, None]))
    for r, n in enumerate(lengths):
        mine = torch.cat([outs[0][r:r + 1, width - n:]] + [o[r:r + 1] for o in outs[1:]], 1)
        close(mine, model(rows[r][None]))


@torch.no_grad()
def test_t5_decodes_its_decoder_against_a_fixed_encoder():
    model = family("t5", vocab=97, dim=32, depth=2, decoder_depth=2, heads=4, head_dim=8,
                   hidden=40, buckets=8, max_distance=16)
    gen = torch.Generator().manual_seed(3)
    enc, dec = torch.randint(0, 97, (2, 9), generator=gen), torch.randint(0, 97, (2, 8), generator=gen)
    enc_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4], dtype=torch.bool)
    full = model(enc, dec, enc_mask)
    with Decoder(model, batch=2, capacity=8, tokens=enc, mask=enc_mask) as decode:
        parts = [decode(dec[:, :3])] + [decode(dec[:, t:t + 1]) for t in range(3, 8)]
    close(torch.cat(parts, 1), full)


LOOKS_AHEAD = """nexus 0.1
modality text = bytes(code = 0)
model M(dim = 8) {
  input t: text[B, T]
  x = embed(t, dim)
  output y = unembed(x + attention(x, heads = 2, causal = CAUSAL) + POOL)
}
"""


@pytest.mark.parametrize("causal,pool,blocker", [
    ("false", "x", "attention at attention"),
    ("true", "mean(x, axis = T)", "mean at mean"),
])
def test_an_op_that_sees_the_whole_sequence_is_named(causal, pool, blocker):
    text = LOOKS_AHEAD.replace("CAUSAL", causal).replace("POOL", pool)
    assert decode_plan(nexusdsl.loads(text, "ahead.nx").elaborate()).blocker == blocker
