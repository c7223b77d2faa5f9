"""Mixtral, Qwen3-MoE and DeepSeek-V3 (`stdlib/families/`) against transformers' own classes."""

from __future__ import annotations

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
from tests.families.test_decoders import TINY, hyper_of


def experts(s: dict, theirs: str, ours: str, n: int) -> dict[str, torch.Tensor]:
    """transformers' fused experts (gate_up_proj [E, 2I, d]: gate rows, then up rows;
    down_proj [E, d, I]) as our per-expert SwiGLU linears."""
    out = {}
    for e in range(n):
        gate, up = s[theirs + "gate_up_proj"][e].chunk(2, dim=0)
        out |= {ours + f"{e}.swiglu.linear.weight": gate, ours + f"{e}.swiglu.linear_1.weight": up,
                ours + f"{e}.swiglu.linear_2.weight": s[theirs + "down_proj"][e]}
    return out


def swiglu(s: dict, theirs: str, ours: str) -> dict[str, torch.Tensor]:
    return {ours + "linear.weight": s[theirs + "gate_proj.weight"],
            ours + "linear_1.weight": s[theirs + "up_proj.weight"],
            ours + "linear_2.weight": s[theirs + "down_proj.weight"]}


def attention(s: dict, theirs: str, ours: str, qk_norm: bool) -> dict[str, torch.Tensor]:
    out = {ours + "qkv.weight": torch.cat([s[theirs + f"{p}_proj.weight"] for p in "qkv"]),
           ours + "out.weight": s[theirs + "o_proj.weight"]}
    if qk_norm:
        out |= {ours + "q_norm.weight": s[theirs + "q_norm.weight"],
                ours + "k_norm.weight": s[theirs + "k_norm.weight"]}
    return out


def top(s: dict) -> dict[str, torch.Tensor]:
    return {"tok.weight": s["model.embed_tokens.weight"], "norm.weight": s["model.norm.weight"],
            "head.weight": s["lm_head.weight"]}


def moe_weights(reference, qk_norm: bool, dense: set[int] = frozenset()) -> dict:
    s, config = reference.state_dict(), reference.config
    ours = top(s)
    for i in range(config.num_hidden_layers):
        h = f"model.layers.{i}."
        layer = f"blocks.{i}." + ("decoder_layer." if i in dense else "moe_layer.")
        ours |= {layer + "input_norm.weight": s[h + "input_layernorm.weight"],
                 layer + "post_norm.weight": s[h + "post_attention_layernorm.weight"]}
        ours |= attention(s, h + "self_attn.", layer + "attention.", qk_norm)
        if i in dense:
            ours |= swiglu(s, h + "mlp.", layer + "swiglu.")
        else:
            ours[layer + "moe.router.weight"] = s[h + "mlp.gate.weight"]
            ours |= experts(s, h + "mlp.experts.", layer + "moe.experts.", config.num_experts
                            if hasattr(config, "num_experts") else config.num_local_experts)
    return ours


def compare(reference, ours, vocab):
    assert count(ours) == count(reference)
    tokens = torch.randint(0, vocab, (2, 9))
    with torch.no_grad():
        assert_close(ours(tokens), reference(tokens).logits)
        tokens, mask = padded_batch(vocab, [9, 4, 6])
        check_padding(lambda t, m: ours(t, m), tokens, mask)


def test_mixtral():
    config = transformers.MixtralConfig(**{k: v for k, v in TINY.items()}, num_local_experts=4,
                                        num_experts_per_tok=2, rope_theta=1000000.0)
    reference = hf(transformers.MixtralForCausalLM, config)
    ours = family("mixtral", **hyper_of(config, n=4, k=2, theta=1000000.0))
    load(ours, moe_weights(reference, qk_norm=False))
    compare(reference, ours, config.vocab_size)


def test_qwen3_moe_with_a_dense_layer():
    config = transformers.Qwen3MoeConfig(**{**TINY, "rms_norm_eps": 1e-6, "num_hidden_layers": 3},
                                         num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=24, norm_topk_prob=True,
                                         mlp_only_layers=[1], rope_theta=1000000.0,
                                         tie_word_embeddings=False)
    reference = hf(transformers.Qwen3MoeForCausalLM, config)
    hyper = hyper_of(config, n=4, k=2, moe_hidden=24, dense=[1], theta=1000000.0)
    ours = family("qwen3_moe", **hyper)
    load(ours, moe_weights(reference, qk_norm=True, dense={1}))
    compare(reference, ours, config.vocab_size)


def deepseek_weights(reference) -> dict:
    s, config = reference.state_dict(), reference.config
    ours = top(s)
    for i in range(config.num_hidden_layers):
        h, layer = f"model.layers.{i}.", f"blocks.{i}.deepseek_layer."
        a, ours_a = h + "self_attn.", layer + "latent_attention."
        ours |= {layer + "input_norm.weight": s[h + "input_layernorm.weight"],
                 layer + "post_norm.weight": s[h + "post_attention_layernorm.weight"],
                 ours_a + "q_a.weight": s[a + "q_a_proj.weight"],
                 ours_a + "q_a_norm.weight": s[a + "q_a_layernorm.weight"],
                 ours_a + "q_b.weight": s[a + "q_b_proj.weight"],
                 ours_a + "kv_a.weight": s[a + "kv_a_proj_with_mqa.weight"],
                 ours_a + "kv_a_norm.weight": s[a + "kv_a_layernorm.weight"],
                 ours_a + "kv_b.weight": s[a + "kv_b_proj.weight"],
                 ours_a + "out.weight": s[a + "o_proj.weight"]}
        if i < config.first_k_dense_replace:
            ours |= swiglu(s, h + "mlp.", layer + "swiglu.")
        else:
            ours |= {layer + "moe.router.weight": s[h + "mlp.gate.weight"],
                     layer + "moe.router.bias": s[h + "mlp.gate.e_score_correction_bias"]}
            ours |= experts(s, h + "mlp.experts.", layer + "moe.experts.", config.n_routed_experts)
            ours |= swiglu(s, h + "mlp.shared_experts.", layer + "moe.shared.swiglu.")
    return ours


def test_deepseek_v3():
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 8, "beta_fast": 32.0, "beta_slow": 1.0,
            "mscale": 1.0, "mscale_all_dim": 1.0}
    config = transformers.DeepseekV3Config(
        vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=12,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2,
        n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
        q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=6,
        rope_parameters=yarn, rope_interleave=True, rms_norm_eps=1e-6,
        max_position_embeddings=64, tie_word_embeddings=False)
    reference = hf(transformers.DeepseekV3ForCausalLM, config)
    with torch.no_grad():  # a correction bias that changes choices
        for layer in reference.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.3)
    ours = family("deepseek_v3", vocab=97, dim=32, depth=3, dense=1, heads=4, q_rank=16,
                  kv_rank=8, nope_dim=6, rope_dim=4, v_dim=6, hidden=48, n=8, k=2,
                  moe_hidden=12, n_shared=1, groups=4, topk_groups=2, scale=2.5, eps=1e-6,
                  theta=10000.0, factor=4.0, original=8, mscale=1.0, mscale_all_dim=1.0)
    load(ours, deepseek_weights(reference))
    assert count(ours) == count(reference)
    tokens = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert_close(ours(tokens), reference(tokens).logits)
        tokens, mask = padded_batch(97, [9, 4, 6])
        check_padding(lambda t, m: ours(t, m), tokens, mask)
