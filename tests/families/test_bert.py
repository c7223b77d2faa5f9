"""BERT (`stdlib/families/bert.nx`) against transformers' BertModel."""

from __future__ import annotations

import torch
import transformers

from tests.families.harness import assert_close, count, family, hf, load, padded_batch


def bert_weights(reference) -> dict[str, torch.Tensor]:
    s = reference.state_dict()
    e = "embeddings."
    ours = {"tok.weight": s[e + "word_embeddings.weight"],
            "pos.weight": s[e + "position_embeddings.weight"],
            "seg.weight": s[e + "token_type_embeddings.weight"],
            "embed_norm.weight": s[e + "LayerNorm.weight"], "embed_norm.bias": s[e + "LayerNorm.bias"],
            "pooler.weight": s["pooler.dense.weight"], "pooler.bias": s["pooler.dense.bias"]}
    for i in range(reference.config.num_hidden_layers):
        h, layer = f"encoder.layer.{i}.", f"blocks.{i}.bert_layer."
        a = h + "attention."
        for part in ("weight", "bias"):
            ours[layer + f"attention.qkv.{part}"] = torch.cat(
                [s[a + f"self.{p}.{part}"] for p in ("query", "key", "value")])
            ours[layer + f"attention.out.{part}"] = s[a + f"output.dense.{part}"]
            ours[layer + f"attention_norm.{part}"] = s[a + f"output.LayerNorm.{part}"]
            ours[layer + f"intermediate.{part}"] = s[h + f"intermediate.dense.{part}"]
            ours[layer + f"down.{part}"] = s[h + f"output.dense.{part}"]
            ours[layer + f"output_norm.{part}"] = s[h + f"output.LayerNorm.{part}"]
    return ours


def test_bert():
    config = transformers.BertConfig(vocab_size=103, hidden_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=80,
                                     max_position_embeddings=40)
    reference = hf(transformers.BertModel, config)
    ours = family("bert", vocab=103, dim=48, depth=2, heads=4, hidden=80, context=40)
    load(ours, bert_weights(reference))
    assert count(ours) == count(reference)
    tokens, mask = padded_batch(103, [12, 7, 3])
    segments = torch.randint(0, 2, tokens.shape)
    with torch.no_grad():
        want = reference(tokens, token_type_ids=segments)
        got = ours(tokens, segments)
        assert_close(got["hidden"], want.last_hidden_state)
        assert_close(got["pooled"], want.pooler_output)
        # a padded batch: every real token as transformers (and as the row alone) computes it
        want = reference(tokens, token_type_ids=segments, attention_mask=mask.long())
        got = ours(tokens, segments, mask)
        assert_close(got["pooled"], want.pooler_output)
        for row, length in enumerate(mask.sum(-1).tolist()):
            assert_close(got["hidden"][row, :length], want.last_hidden_state[row, :length])
            alone = ours(tokens[row:row + 1, :length], segments[row:row + 1, :length])
            assert_close(got["hidden"][row:row + 1, :length], alone["hidden"])
