"""ViT (`stdlib/families/vit.nx`) against transformers' ViTModel."""

from __future__ import annotations

import torch
import transformers

from tests.families.harness import assert_close, count, family, hf, load


def vit_weights(reference) -> dict[str, torch.Tensor]:
    s = reference.state_dict()
    e = "embeddings."
    ours = {"patches.weight": s[e + "patch_embeddings.projection.weight"],
            "patches.bias": s[e + "patch_embeddings.projection.bias"],
            "cls.weight": s[e + "cls_token"][0], "pos.weight": s[e + "position_embeddings"][0],
            "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"],
            "pooler.weight": s["pooler.dense.weight"], "pooler.bias": s["pooler.dense.bias"]}
    for i in range(reference.config.num_hidden_layers):
        h, layer = f"layers.{i}.", f"blocks.{i}.vit_layer."
        for part in ("weight", "bias"):
            ours[layer + f"attention.qkv.{part}"] = torch.cat(
                [s[h + f"attention.{p}_proj.{part}"] for p in "qkv"])
            ours[layer + f"attention.out.{part}"] = s[h + f"attention.o_proj.{part}"]
            ours[layer + f"norm_before.{part}"] = s[h + f"layernorm_before.{part}"]
            ours[layer + f"norm_after.{part}"] = s[h + f"layernorm_after.{part}"]
            ours[layer + f"intermediate.{part}"] = s[h + f"mlp.fc1.{part}"]
            ours[layer + f"down.{part}"] = s[h + f"mlp.fc2.{part}"]
    return ours


def test_vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48)
    reference = hf(transformers.ViTModel, config)
    with torch.no_grad():  # the class token starts at zeros: make it count
        reference.embeddings.cls_token.normal_()
    ours = family("vit", size=16, patch=4, channels=3, dim=32, depth=2, heads=4, hidden=48)
    load(ours, vit_weights(reference))
    assert count(ours) == count(reference)
    pixels = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = reference(pixels)
        got = ours(pixels)
        assert_close(got["hidden"], want.last_hidden_state)
        assert_close(got["pooled"], want.pooler_output)
