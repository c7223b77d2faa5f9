"""std.moe: the MoE transformer block."""

from __future__ import annotations

import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params

MODEL = """
import std.nn
import std.moe
modality text = bytes(code = 0)
model S(dim = 32) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = BLOCK
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""


def params(block: str) -> int:
    return count_params(nexusdsl.loads(MODEL.replace("BLOCK", block), "s.nx").elaborate())["total"]


def test_moe_block_is_a_transformer_block_with_n_experts_and_a_router():
    dense = params("transformer_block(x, heads = 4, mult = 2)")
    sparse = params("moe_block(x, heads = 4, n = 4, k = 2, mult = 2)")
    d, h = 32, 64
    mlp = d * h + h + h * d + d
    assert sparse - dense == 3 * mlp + 4 * d  # three more experts and the gate [4, d]


def test_moe_blocks_train_and_report_their_balance_loss():
    program = nexusdsl.loads(MODEL.replace(
        "BLOCK", "knn_moe_block(moe_block(x, heads = 4, n = 4, mult = 2), heads = 4, n = 3)"),
        "s.nx")
    model = nexusdsl.compile(program).train()
    logits = model(torch.randint(0, 256, (2, 9)))
    losses = [m.aux_loss for m in model.modules() if getattr(m, "aux_loss", None) is not None]
    assert logits.shape == (2, 9, 256) and len(losses) == 2
    (logits.mean() + sum(losses)).backward()
    assert model.moe_block.moe.router.weight.grad.abs().sum() > 0
