"""Llama 3.x, Mistral and Qwen3 (`stdlib/families/`) against transformers' own classes."""

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

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-5)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def decoder_weights(reference, qk_norm: bool = False) -> dict[str, torch.Tensor]:
    """transformers' Llama-style state_dict under the family's names (q, k, v rows fused)."""
    s = reference.state_dict()
    ours = {"tok.weight": s["model.embed_tokens.weight"], "norm.weight": s["model.norm.weight"]}
    if "lm_head.weight" in s and not reference.config.tie_word_embeddings:
        ours["head.weight"] = s["lm_head.weight"]
    for i in range(reference.config.num_hidden_layers):
        hf_layer, layer = f"model.layers.{i}.", f"blocks.{i}.decoder_layer."
        attn = hf_layer + "self_attn."
        ours |= {
            layer + "input_norm.weight": s[hf_layer + "input_layernorm.weight"],
            layer + "post_norm.weight": s[hf_layer + "post_attention_layernorm.weight"],
            layer + "attention.qkv.weight": torch.cat(
                [s[attn + f"{p}_proj.weight"] for p in "qkv"]),
            layer + "attention.out.weight": s[attn + "o_proj.weight"],
            layer + "swiglu.linear.weight": s[hf_layer + "mlp.gate_proj.weight"],
            layer + "swiglu.linear_1.weight": s[hf_layer + "mlp.up_proj.weight"],
            layer + "swiglu.linear_2.weight": s[hf_layer + "mlp.down_proj.weight"],
        }
        if qk_norm:
            ours[layer + "attention.q_norm.weight"] = s[attn + "q_norm.weight"]
            ours[layer + "attention.k_norm.weight"] = s[attn + "k_norm.weight"]
    return ours


def hyper_of(config, **extra) -> dict:
    return dict(vocab=config.vocab_size, dim=config.hidden_size, depth=config.num_hidden_layers,
                heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                head_dim=config.head_dim, hidden=config.intermediate_size,
                eps=config.rms_norm_eps, **extra)


def compare(name, reference, ours, vocab):
    assert count(ours) == count(reference)
    tokens = torch.randint(0, vocab, (2, 11))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert_close(ours(tokens), expected)
        tokens, mask = padded_batch(vocab, [11, 6, 3])
        check_padding(lambda t, m: ours(t, m), tokens, mask)
        # and the padded batch equals transformers' on every real position
        got, want = ours(tokens, mask), reference(tokens, attention_mask=mask.long()).logits
        for row, length in enumerate(mask.sum(-1).tolist()):
            assert_close(got[row, :length], want[row, :length])


@pytest.mark.parametrize("tie", [False, True])
def test_llama(tie):
    config = transformers.LlamaConfig(**TINY, rope_parameters=LLAMA3, tie_word_embeddings=tie)
    reference = hf(transformers.LlamaForCausalLM, config)
    ours = family("llama", **hyper_of(config, factor=8.0, low=1.0, high=4.0, original=32,
                                      tie=tie))
    load(ours, decoder_weights(reference))
    compare("llama", reference, ours, config.vocab_size)


def test_mistral_with_its_sliding_window():
    config = transformers.MistralConfig(**TINY, sliding_window=4, rope_theta=10000.0)
    reference = hf(transformers.MistralForCausalLM, config)
    ours = family("mistral", **hyper_of(config, window=4, theta=10000.0))
    load(ours, decoder_weights(reference))
    compare("mistral", reference, ours, config.vocab_size)


def test_qwen3_with_its_query_and_key_norms():
    config = transformers.Qwen3Config(**{**TINY, "rms_norm_eps": 1e-6}, rope_theta=1000000.0,
                                      tie_word_embeddings=False)
    reference = hf(transformers.Qwen3ForCausalLM, config)
    with torch.no_grad():  # norms away from their initial ones, so they are tested
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    ours = family("qwen3", **hyper_of(config, theta=1000000.0))
    load(ours, decoder_weights(reference, qk_norm=True))
    compare("qwen3", reference, ours, config.vocab_size)
