"""Each family's model, at its defaults (the published configuration), has as many parameters
as transformers' own class built from that configuration on the meta device."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers as T

from nexusdsl.compiler.summary import count_params
from tests.conftest import family_program
from tests.families.harness import FAMILIES

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
PUBLISHED = {
    "llama": (T.LlamaForCausalLM, lambda: T.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
        rope_parameters=LLAMA3)),
    "mistral": (T.MistralForCausalLM, lambda: T.MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, sliding_window=4096)),
    "mixtral": (T.MixtralForCausalLM, lambda: T.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
        num_experts_per_tok=2)),
    "qwen3": (T.Qwen3ForCausalLM, lambda: T.Qwen3Config(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)),
    "qwen3_moe": (T.Qwen3MoeForCausalLM, lambda: T.Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        num_experts=128, num_experts_per_tok=8, tie_word_embeddings=False)),
    "gemma3": (T.Gemma3ForCausalLM, lambda: T.Gemma3TextConfig(
        vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256)),
    "deepseek_v3": (T.DeepseekV3ForCausalLM, lambda: T.DeepseekV3Config(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
        n_shared_experts=1, n_routed_experts=256, num_experts_per_tok=8,
        first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_group=8, topk_group=4)),
    "t5": (T.T5ForConditionalGeneration, lambda: T.T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)),
    "gpt2": (T.GPT2LMHeadModel, lambda: T.GPT2Config()),
    "bert": (T.BertModel, lambda: T.BertConfig()),
    "vit": (T.ViTModel, lambda: T.ViTConfig()),
}


def transformers_count(name: str) -> int:
    cls, config = PUBLISHED[name]
    with torch.device("meta"):
        model = cls(config())
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_published_configuration_counts_as_transformers_does(name):
    graph = family_program(name).elaborate()
    assert count_params(graph)["total"] == transformers_count(name)


def test_every_family_has_a_published_count():
    assert {p.stem for p in FAMILIES.glob("*.nx")} == set(PUBLISHED)


def test_nexus_compile_on_the_meta_device_prints_the_count():
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "compile",
                          str(FAMILIES / "gemma3.nx"), "--device", "meta"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"{transformers_count('gemma3'):,}" in run.stdout
