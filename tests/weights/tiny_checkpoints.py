"""Tiny random transformers models of every family, saved as transformers saves them (sharded
with a small max_shard_size), the commands run in-process, and the outputs of a transformers
model and of a compiled `.nx` model on the same inputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from nexusdsl.cli import app

SHARD = "20KB"  # several files even for these models: the index is always read
TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 8, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}
DEEPSEEK = dict(vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=12,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                topk_group=2, routed_scaling_factor=2.5, kv_lora_rank=8, qk_nope_head_dim=6,
                qk_rope_head_dim=4, v_head_dim=6, max_position_embeddings=32)


@dataclass(frozen=True)
class Case:
    """One family checkpoint: transformers' class, its config, and what the import writes."""

    cls: str
    config: transformers.PretrainedConfig
    kind: str  # causal, encoder, vision, seq2seq
    rules: tuple[str, ...]  # the rule sets the import is expected to use
    kwargs: dict = field(default_factory=dict)  # for the class (add_pooling_layer)


T = transformers
CASES = {
    "llama": Case("LlamaForCausalLM", T.LlamaConfig(
        **TINY, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32}), "causal", ("llama.hf",)),
    "llama_tied": Case("LlamaForCausalLM", T.LlamaConfig(**TINY, tie_word_embeddings=True),
                       "causal", ("llama.hf_tied",)),
    "mistral": Case("MistralForCausalLM", T.MistralConfig(**TINY, sliding_window=4),
                    "causal", ("mistral.hf",)),
    "qwen3": Case("Qwen3ForCausalLM", T.Qwen3Config(**TINY, tie_word_embeddings=True),
                  "causal", ("qwen3.hf_tied",)),
    "gemma3": Case("Gemma3ForCausalLM", T.Gemma3TextConfig(
        **{**TINY, "num_hidden_layers": 6}, sliding_window=3, query_pre_attn_scalar=16,
        final_logit_softcapping=30.0,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "rope_theta": 1e6,
                                            "factor": 8.0}}), "causal", ("gemma3.hf",)),
    "gemma3_local_layers_only": Case("Gemma3ForCausalLM", T.Gemma3TextConfig(
        **TINY, sliding_window=3, query_pre_attn_scalar=16), "causal", ("gemma3.hf",)),
    "mixtral": Case("MixtralForCausalLM", T.MixtralConfig(**TINY, num_local_experts=4,
                                                          num_experts_per_tok=2),
                    "causal", ("mixtral.hf",)),
    "qwen3_moe": Case("Qwen3MoeForCausalLM", T.Qwen3MoeConfig(
        **{**TINY, "num_hidden_layers": 3}, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, norm_topk_prob=True, mlp_only_layers=[1],
        tie_word_embeddings=False), "causal", ("qwen3_moe.hf", "qwen3_moe.hf_dense_layers")),
    "deepseek_v3": Case("DeepseekV3ForCausalLM", T.DeepseekV3Config(
        **DEEPSEEK, first_k_dense_replace=1, q_lora_rank=16, rope_parameters=YARN,
        rope_interleave=True), "causal", ("deepseek_v3.hf", "deepseek_v3.hf_dense_layers")),
    "deepseek_v3_plain_query": Case("DeepseekV3ForCausalLM", T.DeepseekV3Config(
        **DEEPSEEK, first_k_dense_replace=0, q_lora_rank=None, tie_word_embeddings=True),
        "causal", ("deepseek_v3.hf_layers", "deepseek_v3.hf_query")),
    "gpt2": Case("GPT2LMHeadModel", T.GPT2Config(vocab_size=101, n_positions=32, n_embd=48,
                                                 n_layer=2, n_head=4, bos_token_id=0,
                                                 eos_token_id=0),
                 "causal", ("gpt2.hf",)),
    "bert": Case("BertModel", T.BertConfig(vocab_size=103, hidden_size=48, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=80,
                                           max_position_embeddings=40),
                 "encoder", ("bert.hf",)),
    "bert_no_pooler": Case("BertModel", T.BertConfig(
        vocab_size=103, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=80, max_position_embeddings=40), "encoder", ("bert.hf_encoder",),
        {"add_pooling_layer": False}),
    "vit": Case("ViTModel", T.ViTConfig(image_size=16, patch_size=4, num_channels=3,
                                        hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=48),
                "vision", ("vit.hf",)),
    "t5": Case("T5ForConditionalGeneration", T.T5Config(
        vocab_size=97, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16),
        "seq2seq", ("t5.hf",)),
}


def reference(case: Case, seed: int = 0) -> torch.nn.Module:
    """transformers' model of the case: random weights, float32, eval. Norms, biases, the
    class token and the routers' correction biases start at constants: made random so that
    they count."""
    torch.manual_seed(seed)
    model = getattr(transformers, case.cls)(case.config, **case.kwargs).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias") or "cls_token" in name:
                p.normal_(float(p.mean()), 0.2)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.3)
    return model


def save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder, max_shard_size=SHARD)
    assert (folder / "model.safetensors.index.json").is_file()  # sharded, as asked
    return folder


def nexus(*args: str):
    """`nexus ARGS` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# ---------------------------------------------------------------------------- outputs


def inputs(kind: str, config, seed: int = 1) -> dict[str, torch.Tensor]:
    """The case's inputs under transformers' names: two rows, the second right-padded."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "vision":
        size = config.image_size
        return {"pixel_values": torch.randn(2, config.num_channels, size, size, generator=gen)}
    tokens = torch.randint(0, config.vocab_size, (2, 10), generator=gen)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    found = {"input_ids": tokens, "attention_mask": mask}
    if kind == "encoder":
        found["token_type_ids"] = torch.randint(0, 2, (2, 10), generator=gen)
    if kind == "seq2seq":
        found["decoder_input_ids"] = torch.randint(0, config.vocab_size, (2, 7), generator=gen)
    return found


OURS = {"input_ids": "tokens", "attention_mask": "mask", "token_type_ids": "segment",
        "decoder_input_ids": "decoder_tokens", "pixel_values": "pixels"}


def theirs(model, kind: str, given: dict) -> dict[str, torch.Tensor]:
    """transformers' outputs under the family's output names."""
    with torch.no_grad():
        result = model(**given)
    if kind in ("causal", "seq2seq"):
        return {"logits": result.logits}
    found = {"hidden": result.last_hidden_state}
    if getattr(result, "pooler_output", None) is not None:
        found["pooled"] = result.pooler_output
    return found


def ours(module, given: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        result = module(**{OURS[k]: (v.bool() if k == "attention_mask" else v)
                           for k, v in given.items()})
    return result if isinstance(result, dict) else {"logits": result, "hidden": result}


def assert_same(got: dict, want: dict, given: dict, tolerance: float = 1e-5) -> None:
    """Every output of `want` in `got`, equal to `tolerance` of its largest magnitude at the
    real (unpadded) positions."""
    mask = given.get("attention_mask")
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
        if mask is not None and expected.shape[:2] == mask.shape:
            actual, expected = actual[mask.bool()], expected[mask.bool()]
        error = ((actual - expected).abs().max() / expected.abs().max()).item()
        assert error <= tolerance, f"{name}: relative error {error:.3g} > {tolerance}"


# ---------------------------------------------------------------------------- checkpoints


def perturbed_copy(folder: Path, to: Path) -> str:
    """A copy of a checkpoint with one weight changed; returns its key."""
    shutil.copytree(folder, to)
    index = json.loads((to / "model.safetensors.index.json").read_text())
    key = next(k for k in sorted(index["weight_map"]) if k.endswith("weight")
               and "norm" not in k.lower())
    file = to / index["weight_map"][key]
    tensors = load_file(file)
    tensors[key] = tensors[key] + 0.5 * torch.randn_like(tensors[key])
    save_file(tensors, file, metadata={"format": "pt"})
    return key
