"""The checkpoints transformers saves, as the open-weight families of stdlib/families read them
(`nexus import`, `nexus verify`, `nexus export --hf`; docs/families.md).

For each transformers `model_type`: the family file and its model, the class the family
computes as, how a `config.json` gives the model's hyperparameters (every one of them, or a
one-line error for a setting the family does not compute), which of the file's rule sets
(`weights hf ...`) bind the checkpoint, and the inverse: the `config.json` fields a model's
hyperparameters make, for a directory `from_pretrained` loads. Configs of both forms are read:
transformers v5's `rope_parameters` and the `rope_theta` / `rope_scaling` of earlier saves.

No torch here: this module only reads dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class FamilyError(ValueError):
    """A checkpoint's config that no family computes (one line, for the command line)."""


# What `nexus verify` feeds and compares: causal (tokens and mask -> logits), encoder
# (tokens, segment and mask -> hidden, pooled), vision (pixels -> hidden, pooled) and seq2seq
# (tokens, mask, decoder tokens -> logits).
KINDS = ("causal", "encoder", "vision", "seq2seq")


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    file: str  # stdlib/families/<file>.nx, imported as std.families.<file>
    model: str  # the family's model in that file
    architecture: str  # transformers' class the family computes as (config.json's architectures)
    kind: str  # one of KINDS
    hyper: Callable[[dict, set[str]], dict[str, Any]]  # (config, checkpoint keys) -> hyperparameters
    rules: Callable[[dict[str, Any], set[str]], list[str]]  # (hyperparameters, keys) -> rule sets
    config: Callable[[dict[str, Any]], dict[str, Any]]  # hyperparameters -> config.json fields

    @property
    def module(self) -> str:
        return f"std.families.{self.file}"


# ---------------------------------------------------------------------------- reading configs


def _get(config: dict, *names: str, default: Any = None) -> Any:
    """The first of `names` the config sets (not null), else `default`."""
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def _need(config: dict, *names: str) -> Any:
    value = _get(config, *names)
    if value is None:
        raise FamilyError(f"its config.json does not give {names[0]}")
    return value


def _expect(config: dict, name: str, allowed: tuple, default: Any, family: str,
            meaning: str) -> None:
    """A setting the family computes only one way (biases off, one activation)."""
    value = config.get(name, default)
    if value is None:
        value = default
    if value not in allowed:
        raise FamilyError(f"{name} = {value!r}: the {family} family computes {meaning} only "
                          f"({name} = {allowed[0]!r})")


def rope_parameters(config: dict, kind: str | None = None) -> dict:
    """transformers v5's `rope_parameters` (of one attention kind, for Gemma 3), or the same
    read from an earlier save's `rope_theta` and `rope_scaling`."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params:
        if kind is not None and isinstance(params.get(kind), dict):
            params = params[kind]
        params = dict(params)
    else:
        params = dict(config.get("rope_scaling") or {})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        if config.get("rope_theta") is not None:
            params["rope_theta"] = config["rope_theta"]
    params.setdefault("rope_type", "default")
    return params


def _rope_type(params: dict, allowed: tuple[str, ...], family: str) -> str:
    kind = params["rope_type"]
    if kind not in allowed:
        raise FamilyError(f"rope type {kind!r}: the {family} family computes rope types "
                          f"{' and '.join(allowed)}")
    return kind


def _decoder(config: dict) -> dict[str, Any]:
    """What Llama-style decoders share."""
    dim, heads = _need(config, "hidden_size"), _need(config, "num_attention_heads")
    return {"vocab": _need(config, "vocab_size"), "dim": dim,
            "depth": _need(config, "num_hidden_layers"), "heads": heads,
            "kv_heads": _get(config, "num_key_value_heads", default=heads),
            "head_dim": _get(config, "head_dim", default=dim // heads),
            "hidden": _need(config, "intermediate_size")}


def _tie(config: dict, default: bool) -> bool:
    return bool(_get(config, "tie_word_embeddings", default=default))


def _plain_decoder_checks(config: dict, family: str) -> None:
    _expect(config, "hidden_act", ("silu",), "silu", family, "SwiGLU MLPs")
    _expect(config, "attention_bias", (False,), False, family, "attention without biases")
    _expect(config, "mlp_bias", (False,), False, family, "MLPs without biases")


def _decoder_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {"vocab_size": hyper["vocab"], "hidden_size": hyper["dim"],
            "num_hidden_layers": hyper["depth"], "num_attention_heads": hyper["heads"],
            "num_key_value_heads": hyper["kv_heads"], "head_dim": hyper["head_dim"],
            "intermediate_size": hyper["hidden"], "rms_norm_eps": hyper["eps"],
            "tie_word_embeddings": hyper["tie"], "hidden_act": "silu",
            "attention_bias": False}


def _hf(hyper: dict[str, Any], keys: set[str] = frozenset()) -> list[str]:
    return ["hf"]


def _tied(hyper: dict[str, Any], keys: set[str] = frozenset()) -> list[str]:
    return ["hf_tied" if hyper["tie"] else "hf"]


# ---------------------------------------------------------------------------- llama and kin


def _llama_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    _plain_decoder_checks(config, "llama")
    rope = rope_parameters(config)
    kind = _rope_type(rope, ("default", "llama3"), "llama")
    # the family always applies Llama 3's scaling: factor 1 leaves every frequency as it is
    scaled = kind == "llama3"
    return {**_decoder(config), "eps": _get(config, "rms_norm_eps", default=1e-6),
            "theta": float(rope.get("rope_theta", 10000.0)),
            "factor": float(rope["factor"]) if scaled else 1.0,
            "low": float(rope.get("low_freq_factor", 1.0)) if scaled else 1.0,
            "high": float(rope.get("high_freq_factor", 4.0)) if scaled else 4.0,
            "original": int(rope.get("original_max_position_embeddings", 8192)) if scaled else 8192,
            "tie": _tie(config, False)}


def _llama_config(hyper: dict[str, Any]) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": hyper["theta"]}
    if hyper["factor"] != 1.0:
        rope |= {"rope_type": "llama3", "factor": hyper["factor"],
                 "low_freq_factor": hyper["low"], "high_freq_factor": hyper["high"],
                 "original_max_position_embeddings": hyper["original"]}
    return {**_decoder_config(hyper), "mlp_bias": False, "rope_parameters": rope}


def _mistral_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    _plain_decoder_checks(config, "mistral")
    rope = rope_parameters(config)
    _rope_type(rope, ("default",), "mistral")
    return {**_decoder(config), "eps": _get(config, "rms_norm_eps", default=1e-6),
            "theta": float(rope.get("rope_theta", 10000.0)),
            "window": int(_get(config, "sliding_window", default=0)),
            "tie": _tie(config, False)}


def _mistral_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {**_decoder_config(hyper), "sliding_window": hyper["window"] or None,
            "rope_parameters": {"rope_type": "default", "rope_theta": hyper["theta"]}}


def _qwen3_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    _plain_decoder_checks(config, "qwen3")
    _expect(config, "use_sliding_window", (False,), False, "qwen3", "attention over the whole "
            "sequence")
    rope = rope_parameters(config)
    _rope_type(rope, ("default",), "qwen3")
    return {**_decoder(config), "eps": _get(config, "rms_norm_eps", default=1e-6),
            "theta": float(rope.get("rope_theta", 10000.0)), "tie": _tie(config, True)}


def _qwen3_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {**_decoder_config(hyper), "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": hyper["theta"]}}


# ---------------------------------------------------------------------------- mixtures of experts


def _mixtral_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    _plain_decoder_checks(config, "mixtral")
    rope = rope_parameters(config)
    _rope_type(rope, ("default",), "mixtral")
    return {**_decoder(config), "n": _need(config, "num_local_experts"),
            "k": _get(config, "num_experts_per_tok", default=2),
            "eps": _get(config, "rms_norm_eps", default=1e-5),
            "theta": float(rope.get("rope_theta", 1e6)),
            "window": int(_get(config, "sliding_window", default=0)),
            "tie": _tie(config, False)}


def _mixtral_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {**_decoder_config(hyper), "num_local_experts": hyper["n"],
            "num_experts_per_tok": hyper["k"], "sliding_window": hyper["window"] or None,
            "rope_parameters": {"rope_type": "default", "rope_theta": hyper["theta"]}}


def _qwen3_moe_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    _plain_decoder_checks(config, "qwen3_moe")
    _expect(config, "norm_topk_prob", (True,), False, "qwen3_moe",
            "routing weights renormalised over the chosen experts")
    _expect(config, "use_sliding_window", (False,), False, "qwen3_moe",
            "attention over the whole sequence")
    rope = rope_parameters(config)
    _rope_type(rope, ("default",), "qwen3_moe")
    return {**_decoder(config),
            # transformers v5 writes num_experts as num_local_experts
            "n": _need(config, "num_experts", "num_local_experts"),
            "k": _get(config, "num_experts_per_tok", default=8),
            "moe_hidden": _need(config, "moe_intermediate_size"),
            "every": _get(config, "decoder_sparse_step", default=1),
            "dense": list(_get(config, "mlp_only_layers", default=[])),
            "eps": _get(config, "rms_norm_eps", default=1e-6),
            "theta": float(rope.get("rope_theta", 10000.0)), "tie": _tie(config, False)}


def _qwen3_moe_dense(hyper: dict[str, Any]) -> list[int]:
    every, dense = hyper["every"], set(hyper["dense"])
    return [i for i in range(hyper["depth"]) if (i + 1) % every != 0 or i in dense]


def _qwen3_moe_rules(hyper: dict[str, Any], keys: set[str]) -> list[str]:
    return _tied(hyper) + (["hf_dense_layers"] if _qwen3_moe_dense(hyper) else [])


def _qwen3_moe_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {**_decoder_config(hyper), "num_experts": hyper["n"],
            "num_experts_per_tok": hyper["k"], "moe_intermediate_size": hyper["moe_hidden"],
            "decoder_sparse_step": hyper["every"], "mlp_only_layers": list(hyper["dense"]),
            "norm_topk_prob": True, "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": hyper["theta"]}}


def _deepseek_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    family = "deepseek_v3"
    _expect(config, "hidden_act", ("silu",), "silu", family, "SwiGLU MLPs")
    _expect(config, "attention_bias", (False,), False, family, "attention without biases")
    _expect(config, "norm_topk_prob", (True,), True, family,
            "routing weights renormalised over the chosen experts")
    _expect(config, "rope_interleave", (True,), True, family, "interleaved rotary pairs")
    rope = rope_parameters(config)
    kind = _rope_type(rope, ("default", "yarn"), family)
    yarn = kind == "yarn"
    # the family always applies yarn: factor 1 leaves every frequency and scale as they are;
    # an mscale of 0 is transformers' "not given"
    return {"vocab": _need(config, "vocab_size"), "dim": _need(config, "hidden_size"),
            "depth": _need(config, "num_hidden_layers"),
            "dense": _get(config, "first_k_dense_replace", default=3),
            "heads": _need(config, "num_attention_heads"),
            "q_rank": _get(config, "q_lora_rank", default=0),
            "kv_rank": _need(config, "kv_lora_rank"),
            "nope_dim": _need(config, "qk_nope_head_dim"),
            "rope_dim": _need(config, "qk_rope_head_dim"), "v_dim": _need(config, "v_head_dim"),
            "hidden": _need(config, "intermediate_size"),
            "n": _need(config, "n_routed_experts"),
            "k": _get(config, "num_experts_per_tok", default=8),
            "moe_hidden": _need(config, "moe_intermediate_size"),
            "n_shared": _get(config, "n_shared_experts", default=1),
            "groups": _get(config, "n_group", default=1),
            "topk_groups": _get(config, "topk_group", default=1),
            "scale": float(_get(config, "routed_scaling_factor", default=1.0)),
            "eps": _get(config, "rms_norm_eps", default=1e-6),
            "theta": float(rope.get("rope_theta", 10000.0)),
            "factor": float(rope["factor"]) if yarn else 1.0,
            "original": int(rope.get("original_max_position_embeddings") or
                            _get(config, "max_position_embeddings", default=4096))
            if yarn else 4096,
            "beta_fast": float(rope.get("beta_fast") or 32.0) if yarn else 32.0,
            "beta_slow": float(rope.get("beta_slow") or 1.0) if yarn else 1.0,
            "mscale": float(rope.get("mscale") or 0.0) if yarn else 0.0,
            "mscale_all_dim": float(rope.get("mscale_all_dim") or 0.0) if yarn else 0.0,
            "tie": _tie(config, False)}


def _deepseek_rules(hyper: dict[str, Any], keys: set[str]) -> list[str]:
    if hyper["q_rank"]:
        sets = _tied(hyper)
    else:
        sets = ["hf_layers", "hf_query"] + ([] if hyper["tie"] else ["hf_head"])
    return sets + (["hf_dense_layers"] if hyper["dense"] else [])


def _deepseek_config(hyper: dict[str, Any]) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": hyper["theta"]}
    if hyper["factor"] != 1.0:
        rope |= {"rope_type": "yarn", "factor": hyper["factor"],
                 "original_max_position_embeddings": hyper["original"],
                 "beta_fast": hyper["beta_fast"], "beta_slow": hyper["beta_slow"]}
        rope |= {k: hyper[k] for k in ("mscale", "mscale_all_dim") if hyper[k]}
    return {"vocab_size": hyper["vocab"], "hidden_size": hyper["dim"],
            "num_hidden_layers": hyper["depth"], "first_k_dense_replace": hyper["dense"],
            "num_attention_heads": hyper["heads"], "num_key_value_heads": hyper["heads"],
            "q_lora_rank": hyper["q_rank"] or None, "kv_lora_rank": hyper["kv_rank"],
            "qk_nope_head_dim": hyper["nope_dim"], "qk_rope_head_dim": hyper["rope_dim"],
            "v_head_dim": hyper["v_dim"], "intermediate_size": hyper["hidden"],
            "n_routed_experts": hyper["n"], "num_experts_per_tok": hyper["k"],
            "moe_intermediate_size": hyper["moe_hidden"], "n_shared_experts": hyper["n_shared"],
            "n_group": hyper["groups"], "topk_group": hyper["topk_groups"],
            "routed_scaling_factor": hyper["scale"], "norm_topk_prob": True,
            "rms_norm_eps": hyper["eps"], "rope_interleave": True, "rope_parameters": rope,
            "hidden_act": "silu", "attention_bias": False,
            "tie_word_embeddings": hyper["tie"]}


# ---------------------------------------------------------------------------- gemma 3


def _gemma_pattern(config: dict, depth: int) -> int:
    """The family's `pattern` (every pattern-th layer global) from transformers' layer_types,
    which must follow it."""
    kinds = config.get("layer_types")
    pattern = _get(config, "sliding_window_pattern", "_sliding_window_pattern", default=6)
    if not kinds:
        return int(pattern)
    if "full_attention" in kinds:
        pattern = kinds.index("full_attention") + 1
    elif len(kinds) >= pattern:
        pattern = len(kinds) + 1  # no global layer at all
    for i, kind in enumerate(kinds):
        if (kind == "full_attention") != ((i + 1) % pattern == 0):
            raise FamilyError(f"layer_types {kinds}: the gemma3 family makes every "
                              f"{pattern}th layer global and the others local")
    return int(pattern)


def _gemma3_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    family = "gemma3"
    _expect(config, "hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh", family,
            "tanh-GELU gated MLPs")
    _expect(config, "attention_bias", (False,), False, family, "attention without biases")
    _expect(config, "attn_logit_softcapping", (None,), None, family,
            "attention scores without a softcap")
    _expect(config, "use_bidirectional_attention", (False,), False, family, "causal attention")
    local = rope_parameters(config, "sliding_attention")
    full = rope_parameters(config, "full_attention")
    if not isinstance((config.get("rope_parameters") or {}).get("sliding_attention"), dict):
        # an earlier save: one rope_theta for global layers, rope_local_base_freq for local
        local = {"rope_type": "default",
                 "rope_theta": _get(config, "rope_local_base_freq", default=10000.0)}
    _rope_type(local, ("default",), family)
    kind = _rope_type(full, ("default", "linear"), family)
    decoder = _decoder(config)
    return {**decoder, "eps": _get(config, "rms_norm_eps", default=1e-6),
            "window": int(_get(config, "sliding_window", default=4096)),
            "pattern": _gemma_pattern(config, decoder["depth"]),
            "local_theta": float(local.get("rope_theta", 10000.0)),
            "theta": float(full.get("rope_theta", 1e6)),
            "factor": float(full["factor"]) if kind == "linear" else 1.0,
            "query_scale": _get(config, "query_pre_attn_scalar", default=256),
            "final_softcap": float(_get(config, "final_logit_softcapping", default=0.0))}


def _gemma3_config(hyper: dict[str, Any]) -> dict[str, Any]:
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": hyper["theta"]}
    if hyper["factor"] != 1.0:
        full |= {"rope_type": "linear", "factor": hyper["factor"]}
    pattern = hyper["pattern"]
    return {"vocab_size": hyper["vocab"], "hidden_size": hyper["dim"],
            "num_hidden_layers": hyper["depth"], "num_attention_heads": hyper["heads"],
            "num_key_value_heads": hyper["kv_heads"], "head_dim": hyper["head_dim"],
            "intermediate_size": hyper["hidden"], "rms_norm_eps": hyper["eps"],
            "sliding_window": hyper["window"],
            "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                            for i in range(hyper["depth"])],
            "rope_parameters": {"sliding_attention": {"rope_type": "default",
                                                      "rope_theta": hyper["local_theta"]},
                                "full_attention": full},
            "query_pre_attn_scalar": hyper["query_scale"],
            "final_logit_softcapping": hyper["final_softcap"] or None,
            "attn_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True}


# ---------------------------------------------------------------------------- gpt-2, bert, vit, t5


def _gpt2_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    family = "gpt2"
    _expect(config, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new",
            family, "tanh-GELU MLPs")
    _expect(config, "scale_attn_by_inverse_layer_idx", (False,), False, family,
            "attention scaled by the head size alone")
    _expect(config, "scale_attn_weights", (True,), True, family, "scaled attention")
    _expect(config, "add_cross_attention", (False,), False, family, "decoders without "
            "cross-attention")
    _expect(config, "tie_word_embeddings", (True,), True, family, "a head tied to the embedding")
    dim = _need(config, "n_embd", "hidden_size")
    _expect(config, "n_inner", (None, 4 * dim), None, family, "MLPs four times the width")
    return {"vocab": _need(config, "vocab_size"), "dim": dim,
            "depth": _need(config, "n_layer", "num_hidden_layers"),
            "heads": _need(config, "n_head", "num_attention_heads"),
            "context": _need(config, "n_positions", "max_position_embeddings"),
            "eps": _get(config, "layer_norm_epsilon", default=1e-5)}


def _gpt2_rules(hyper: dict[str, Any], keys: set[str]) -> list[str]:
    """transformers' GPT2LMHeadModel saves `transformer.wte.weight`; GPT2Model (and the hub's
    own `gpt2`) `wte.weight`."""
    return ["hf_base"] if "wte.weight" in keys else ["hf"]


def _gpt2_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {"vocab_size": hyper["vocab"], "n_embd": hyper["dim"], "n_layer": hyper["depth"],
            "n_head": hyper["heads"], "n_positions": hyper["context"],
            "layer_norm_epsilon": hyper["eps"], "activation_function": "gelu_new",
            "n_inner": None, "tie_word_embeddings": True}


def _bert_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    family = "bert"
    _expect(config, "hidden_act", ("gelu",), "gelu", family, "exact-GELU MLPs")
    _expect(config, "position_embedding_type", ("absolute",), "absolute", family,
            "learned absolute positions")
    _expect(config, "is_decoder", (False,), False, family, "bidirectional encoders")
    return {"vocab": _need(config, "vocab_size"), "dim": _need(config, "hidden_size"),
            "depth": _need(config, "num_hidden_layers"),
            "heads": _need(config, "num_attention_heads"),
            "hidden": _need(config, "intermediate_size"),
            "context": _get(config, "max_position_embeddings", default=512),
            "segments": _get(config, "type_vocab_size", default=2),
            "eps": _get(config, "layer_norm_eps", default=1e-12),
            "pooler": "pooler.dense.weight" in keys}


def _pooled(hyper: dict[str, Any], keys: set[str]) -> list[str]:
    return ["hf" if hyper["pooler"] else "hf_encoder"]


def _bert_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {"vocab_size": hyper["vocab"], "hidden_size": hyper["dim"],
            "num_hidden_layers": hyper["depth"], "num_attention_heads": hyper["heads"],
            "intermediate_size": hyper["hidden"], "max_position_embeddings": hyper["context"],
            "type_vocab_size": hyper["segments"], "layer_norm_eps": hyper["eps"],
            "hidden_act": "gelu"}


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise FamilyError(f"{name} = {list(value)}: the vit family takes square images "
                              "and patches")
        value = value[0]
    return int(value)


def _vit_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    family = "vit"
    _expect(config, "hidden_act", ("gelu",), "gelu", family, "exact-GELU MLPs")
    _expect(config, "qkv_bias", (True,), True, family, "attention with biases")
    _expect(config, "pooler_act", ("tanh",), "tanh", family, "a tanh pooler")
    dim = _need(config, "hidden_size")
    _expect(config, "pooler_output_size", (None, dim), None, family, "a pooler as wide as "
            "the model")
    return {"size": _square(_get(config, "image_size", default=224), "image_size"),
            "patch": _square(_get(config, "patch_size", default=16), "patch_size"),
            "channels": _get(config, "num_channels", default=3), "dim": dim,
            "depth": _need(config, "num_hidden_layers"),
            "heads": _need(config, "num_attention_heads"),
            "hidden": _need(config, "intermediate_size"),
            "eps": _get(config, "layer_norm_eps", default=1e-12),
            "pooler": "pooler.dense.weight" in keys}


def _vit_config(hyper: dict[str, Any]) -> dict[str, Any]:
    return {"image_size": hyper["size"], "patch_size": hyper["patch"],
            "num_channels": hyper["channels"], "hidden_size": hyper["dim"],
            "num_hidden_layers": hyper["depth"], "num_attention_heads": hyper["heads"],
            "intermediate_size": hyper["hidden"], "layer_norm_eps": hyper["eps"],
            "hidden_act": "gelu", "qkv_bias": True, "pooler_act": "tanh"}


def _t5_hyper(config: dict, keys: set[str]) -> dict[str, Any]:
    family = "t5"
    _expect(config, "feed_forward_proj", ("relu",), "relu", family, "T5 v1.0's ReLU MLPs")
    # T5 v1.1 and later save tie_word_embeddings = false: unscaled outputs, gated MLPs
    _expect(config, "tie_word_embeddings", (True,), True, family, "T5 v1.0's tied, scaled head")
    depth = _need(config, "num_layers")
    return {"vocab": _need(config, "vocab_size"), "dim": _need(config, "d_model"),
            "depth": depth, "decoder_depth": _get(config, "num_decoder_layers", default=depth),
            "heads": _need(config, "num_heads"), "head_dim": _need(config, "d_kv"),
            "hidden": _need(config, "d_ff"),
            "buckets": _get(config, "relative_attention_num_buckets", default=32),
            "max_distance": _get(config, "relative_attention_max_distance", default=128),
            "eps": _get(config, "layer_norm_epsilon", default=1e-6), "tie": True}


def _t5_rules(hyper: dict[str, Any], keys: set[str] = frozenset()) -> list[str]:
    if not hyper["tie"]:
        raise FamilyError("tie = false: transformers' T5 always ties its head to the shared "
                          "embedding")
    return ["hf"]


def _t5_config(hyper: dict[str, Any]) -> dict[str, Any]:
    _t5_rules(hyper)
    return {"vocab_size": hyper["vocab"], "d_model": hyper["dim"], "num_layers": hyper["depth"],
            "num_decoder_layers": hyper["decoder_depth"], "num_heads": hyper["heads"],
            "d_kv": hyper["head_dim"], "d_ff": hyper["hidden"],
            "relative_attention_num_buckets": hyper["buckets"],
            "relative_attention_max_distance": hyper["max_distance"],
            "layer_norm_epsilon": hyper["eps"], "feed_forward_proj": "relu",
            "tie_word_embeddings": True, "is_encoder_decoder": True,
            "decoder_start_token_id": 0}


# ---------------------------------------------------------------------------- the table


FAMILIES: dict[str, Family] = {f.model_type: f for f in [
    Family("llama", "llama", "Llama", "LlamaForCausalLM", "causal", _llama_hyper,
           _tied, _llama_config),
    Family("mistral", "mistral", "Mistral", "MistralForCausalLM", "causal", _mistral_hyper,
           _tied, _mistral_config),
    Family("qwen3", "qwen3", "Qwen3", "Qwen3ForCausalLM", "causal", _qwen3_hyper,
           _tied, _qwen3_config),
    Family("gemma3_text", "gemma3", "Gemma3", "Gemma3ForCausalLM", "causal", _gemma3_hyper,
           _hf, _gemma3_config),
    Family("mixtral", "mixtral", "Mixtral", "MixtralForCausalLM", "causal", _mixtral_hyper,
           _tied, _mixtral_config),
    Family("qwen3_moe", "qwen3_moe", "Qwen3Moe", "Qwen3MoeForCausalLM", "causal",
           _qwen3_moe_hyper, _qwen3_moe_rules, _qwen3_moe_config),
    Family("deepseek_v3", "deepseek_v3", "DeepseekV3", "DeepseekV3ForCausalLM", "causal",
           _deepseek_hyper, _deepseek_rules, _deepseek_config),
    Family("gpt2", "gpt2", "GPT2", "GPT2LMHeadModel", "causal", _gpt2_hyper, _gpt2_rules,
           _gpt2_config),
    Family("bert", "bert", "Bert", "BertModel", "encoder", _bert_hyper, _pooled, _bert_config),
    Family("vit", "vit", "ViT", "ViTModel", "vision", _vit_hyper, _pooled, _vit_config),
    Family("t5", "t5", "T5", "T5ForConditionalGeneration", "seq2seq", _t5_hyper, _t5_rules,
           _t5_config),
]}


def family_for(config: dict) -> Family:
    """The family computing a checkpoint's model, from its config.json."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    found = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if found is None:
        what = architectures[0] if architectures else "its architecture"
        named = f"{what} (model_type {model_type})" if model_type else f"{what} (no model_type)"
        families = ", ".join(f"{f.model_type} ({f.architecture})" for f in FAMILIES.values())
        raise FamilyError(f"{named} has no family in stdlib/families; there are {families}")
    return found


def family_of_model(file_stem: str, model: str) -> Family | None:
    """The family whose file and model these are (a model alias's target), if any."""
    for family in FAMILIES.values():
        if family.file == file_stem and family.model == model:
            return family
    return None


def import_plan(config: dict, keys: set[str]) -> tuple[Family, dict[str, Any], list[str]]:
    """(family, hyperparameters, rule sets) for a checkpoint: what `nexus import` writes."""
    family = family_for(config)
    architectures = config.get("architectures") or []
    if architectures and family.architecture not in architectures:
        raise FamilyError(f"{architectures[0]}: the {family.file} family is transformers' "
                          f"{family.architecture}, whose checkpoints name their tensors "
                          f"otherwise (a {architectures[0]} adds a head or a prefix)")
    try:
        hyper = family.hyper(config, keys)
        rules = family.rules(hyper, keys)
    except (TypeError, ValueError, KeyError) as err:
        if isinstance(err, FamilyError):
            raise
        raise FamilyError(f"its config.json is not one transformers' {family.architecture} "
                          f"reads ({type(err).__name__}: {err})") from None
    return family, hyper, rules


def export_config(family: Family, hyper: dict[str, Any], dtype: str) -> dict[str, Any]:
    """config.json for `from_pretrained`: the family's class, its model_type, the fields the
    hyperparameters make and the weights' dtype (float32, bfloat16, ...)."""
    fields = family.config(hyper)
    return {"architectures": [family.architecture], "model_type": family.model_type,
            **fields, "dtype": dtype}
