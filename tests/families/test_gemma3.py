"""Gemma 3 (`stdlib/families/gemma3.nx`) against transformers' Gemma3ForCausalLM."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.families.harness import (
    assert_close,
    check_padding,
    count,
    family,
    hf,
    load,
    padded_batch,
)


def gemma_weights(reference) -> dict[str, torch.Tensor]:
    s = reference.state_dict()
    ours = {"tok.weight": s["model.embed_tokens.weight"], "norm.weight": s["model.norm.weight"]}
    norms = {"input_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "pre_mlp_norm": "pre_feedforward_layernorm",
             "post_mlp_norm": "post_feedforward_layernorm"}
    for i in range(reference.config.num_hidden_layers):
        h, layer = f"model.layers.{i}.", f"blocks.{i}.gemma_layer."
        a = h + "self_attn."
        ours |= {layer + f"{ours_name}.weight": s[h + f"{theirs}.weight"]
                 for ours_name, theirs in norms.items()}
        ours |= {layer + "attention.qkv.weight": torch.cat([s[a + f"{p}_proj.weight"] for p in "qkv"]),
                 layer + "attention.out.weight": s[a + "o_proj.weight"],
                 layer + "attention.q_norm.weight": s[a + "q_norm.weight"],
                 layer + "attention.k_norm.weight": s[a + "k_norm.weight"],
                 layer + "gate.weight": s[h + "mlp.gate_proj.weight"],
                 layer + "up.weight": s[h + "mlp.up_proj.weight"],
                 layer + "down.weight": s[h + "mlp.down_proj.weight"]}
    return ours


@pytest.mark.parametrize("factor,softcap", [(1.0, None), (8.0, 30.0)])
def test_gemma3(factor, softcap):
    full = {"rope_type": "linear", "rope_theta": 1000000.0, "factor": factor}
    config = transformers.Gemma3TextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=3,
        query_pre_attn_scalar=16, rms_norm_eps=1e-6, final_logit_softcapping=softcap,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": full})
    reference = hf(transformers.Gemma3ForCausalLM, config)
    ours = family("gemma3", vocab=97, dim=32, depth=6, heads=4, kv_heads=2, head_dim=8,
                  hidden=48, window=3, query_scale=16, factor=factor,
                  final_softcap=softcap or 0.0)
    load(ours, gemma_weights(reference))
    assert count(ours) == count(reference)
    tokens = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert_close(ours(tokens), reference(tokens).logits)
        tokens, mask = padded_batch(97, [10, 4, 7])
        check_padding(lambda t, m: ours(t, m), tokens, mask)
