"""GPT-2 (`stdlib/families/gpt2.nx`) against transformers' GPT2LMHeadModel."""

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


def gpt2_weights(reference) -> dict[str, torch.Tensor]:
    """transformers' names under ours; its Conv1D layers store weights [in, out]: transposed."""
    s = reference.state_dict()
    ours = {"tok.weight": s["transformer.wte.weight"], "pos.weight": s["transformer.wpe.weight"],
            "ln_f.weight": s["transformer.ln_f.weight"], "ln_f.bias": s["transformer.ln_f.bias"]}
    for i in range(reference.config.n_layer):
        h, layer = f"transformer.h.{i}.", f"blocks.{i}.gpt2_layer."
        for norm in ("ln_1", "ln_2"):
            ours[layer + f"{norm}.weight"] = s[h + f"{norm}.weight"]
            ours[layer + f"{norm}.bias"] = s[h + f"{norm}.bias"]
        for ours_name, theirs in (("attention.qkv", "attn.c_attn"), ("attention.out", "attn.c_proj"),
                                  ("fc", "mlp.c_fc"), ("proj", "mlp.c_proj")):
            ours[layer + ours_name + ".weight"] = s[h + theirs + ".weight"].T
            ours[layer + ours_name + ".bias"] = s[h + theirs + ".bias"]
    return ours


def test_gpt2():
    config = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=2,
                                     n_head=4)
    reference = hf(transformers.GPT2LMHeadModel, config)
    ours = family("gpt2", vocab=101, dim=48, depth=2, heads=4, context=32)
    load(ours, gpt2_weights(reference))
    assert count(ours) == count(reference)
    tokens = torch.randint(0, 101, (2, 13))
    with torch.no_grad():
        assert_close(ours(tokens), reference(tokens).logits)
        tokens, mask = padded_batch(101, [13, 5, 9])
        check_padding(lambda t, m: ours(t, m), tokens, mask)
        got, want = ours(tokens, mask), reference(tokens, attention_mask=mask.long()).logits
        for row, length in enumerate(mask.sum(-1).tolist()):
            assert_close(got[row, :length], want[row, :length])
