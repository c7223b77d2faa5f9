"""T5 (`stdlib/families/t5.nx`) against transformers' T5ForConditionalGeneration."""

from __future__ import annotations

import torch
import transformers

from tests.families.harness import assert_close, count, family, hf, load, padded_batch


def t5_weights(reference) -> dict[str, torch.Tensor]:
    s, config = reference.state_dict(), reference.config
    ours = {"tok.weight": s["shared.weight"],
            "encoder_bias.weight": s["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
            "decoder_bias.weight": s["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
            "encoder_norm.weight": s["encoder.final_layer_norm.weight"],
            "decoder_norm.weight": s["decoder.final_layer_norm.weight"]}

    def attention(theirs: str, ours_name: str, cross: bool) -> dict:
        qkv = [s[theirs + f"{p}.weight"] for p in "qkv"]
        out = {ours_name + "out.weight": s[theirs + "o.weight"]}
        if cross:
            return out | {ours_name + "q.weight": qkv[0], ours_name + "kv.weight": torch.cat(qkv[1:])}
        return out | {ours_name + "qkv.weight": torch.cat(qkv)}

    for i in range(config.num_layers):
        h, layer = f"encoder.block.{i}.layer.", f"blocks.{i}.t5_encoder_layer."
        ours |= attention(h + "0.SelfAttention.", layer + "attention.", cross=False)
        ours |= {layer + "attention_norm.weight": s[h + "0.layer_norm.weight"],
                 layer + "mlp_norm.weight": s[h + "1.layer_norm.weight"],
                 layer + "wi.weight": s[h + "1.DenseReluDense.wi.weight"],
                 layer + "wo.weight": s[h + "1.DenseReluDense.wo.weight"]}
    for i in range(config.num_decoder_layers):
        h, layer = f"decoder.block.{i}.layer.", f"blocks_1.{i}.t5_decoder_layer."
        ours |= attention(h + "0.SelfAttention.", layer + "attention.", cross=False)
        ours |= attention(h + "1.EncDecAttention.", layer + "cross.", cross=True)
        ours |= {layer + "attention_norm.weight": s[h + "0.layer_norm.weight"],
                 layer + "cross_norm.weight": s[h + "1.layer_norm.weight"],
                 layer + "mlp_norm.weight": s[h + "2.layer_norm.weight"],
                 layer + "wi.weight": s[h + "2.DenseReluDense.wi.weight"],
                 layer + "wo.weight": s[h + "2.DenseReluDense.wo.weight"]}
    return ours


def test_t5():
    config = transformers.T5Config(vocab_size=97, d_model=32, d_kv=6, d_ff=40, num_layers=2,
                                   num_decoder_layers=3, num_heads=4,
                                   relative_attention_num_buckets=8,
                                   relative_attention_max_distance=16)
    reference = hf(transformers.T5ForConditionalGeneration, config)
    ours = family("t5", vocab=97, dim=32, depth=2, decoder_depth=3, heads=4, head_dim=6,
                  hidden=40, buckets=8, max_distance=16)
    load(ours, t5_weights(reference))
    assert count(ours) == count(reference)
    tokens = torch.randint(0, 97, (2, 11))
    targets = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        want = reference(input_ids=tokens, decoder_input_ids=targets).logits
        assert_close(ours(tokens, targets), want)
        # a padded encoder batch: each row's decoder logits equal the unpadded row's
        tokens, mask = padded_batch(97, [11, 4, 8])
        targets = torch.randint(0, 97, (3, 7))
        got = ours(tokens, targets, mask)
        want = reference(input_ids=tokens, attention_mask=mask.long(), decoder_input_ids=targets)
        assert_close(got, want.logits)
        for row, length in enumerate(mask.sum(-1).tolist()):
            alone = ours(tokens[row:row + 1, :length], targets[row:row + 1])
            assert_close(got[row:row + 1], alone)
