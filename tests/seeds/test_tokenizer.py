"""`learned_tokenizer`: widths that do not add up are located shape errors (THANN's 2048 / 3),
and the op equals a hand-written PyTorch module (nn.Conv1d + nn.MultiheadAttention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nexusdsl

SOURCE = """nexus 0.1
model Tok(dim = 12, heads = 3, causal = false) {{
  input x: float[B, T, dim]
  output y = learned_tokenizer(x, {args}heads = heads, causal = causal)
}}
"""


def program(args: str = ""):
    return nexusdsl.loads(SOURCE.format(args=args), "tok.nx")


def test_thann_width_is_a_located_shape_error():
    src = """nexus 0.1
modality words = ids(vocab = 100, code = 0)
model THANN(dim = 2048) {
  input tokens: words[B, T]
  x = embed(tokens, dim)
  output y = learned_tokenizer(x, kernels = [3, 5, 7], dropout = 0.1)
}
"""
    with pytest.raises(nexusdsl.NexusError) as err:
        nexusdsl.loads(src, "thann.nx")
    text = str(err.value)
    first = text.splitlines()[0]
    assert first.startswith("thann.nx:6:14: error: learned_tokenizer: shape mismatch"), first
    assert "682 + 682 + 682 = 2046 channels" in first and "axis dim is 2048" in first
    assert "`widths = [683, 683, 682]`" in first
    assert "note: x was made at thann.nx:5:7" in text


@pytest.mark.parametrize("args,message", [
    ("widths = [4, 4, 5], ", "4 + 4 + 5 = 13 channels"),
    ("widths = [6, 6], ", "gives 2 channel counts for the 3 kernels"),
    ("kernels = [], ", "at least one convolution"),
])
def test_wrong_widths_are_located(args, message):
    with pytest.raises(nexusdsl.NexusError) as err:
        program(args)
    assert str(err.value).startswith("tok.nx:4:14:") and message in str(err.value)


def test_explicit_widths_that_add_up_work():
    src = SOURCE.format(args="widths = [5, 4, 3], ").replace("dim = 12", "dim = 12")
    m = nexusdsl.compile(nexusdsl.loads(src, "tok.nx"))
    assert m.learned_tokenizer.conv.get_submodule("0").weight.shape == (5, 12, 3)
    assert m(torch.randn(2, 7, 12)).shape == (2, 7, 12)


class Reference(nn.Module):
    """THANN's adaptive tokenization with the widths fixed: parallel "same" convolutions,
    concatenation, self-attention refinement with a residual connection."""

    def __init__(self, dim, widths, kernels, heads, causal):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, w, k, padding=0 if causal else "same")
                                   for w, k in zip(widths, kernels))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.causal = causal

    def _conv(self, conv, x):  # x (B, d, T); causal: all kernel - 1 zeros on the left
        k = conv.kernel_size[0]
        return conv(nn.functional.pad(x, (k - 1, 0)) if self.causal else x)

    def forward(self, x):
        u = x.transpose(1, 2)
        h = torch.cat([self._conv(c, u) for c in self.convs], dim=1).transpose(1, 2)
        T, causal = h.shape[1], self.causal
        mask = torch.ones(T, T).triu(1).bool() if causal else None
        return h + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]


def copy_weights(ref: Reference, m) -> None:
    op = m.learned_tokenizer
    with torch.no_grad():
        for i, conv in enumerate(ref.convs):
            conv.weight.copy_(op.conv.get_submodule(str(i)).weight)
            conv.bias.copy_(op.conv.get_submodule(str(i)).bias)
        ref.attention.in_proj_weight.copy_(op.attention.qkv.weight)
        ref.attention.in_proj_bias.copy_(op.attention.qkv.bias)
        ref.attention.out_proj.weight.copy_(op.attention.out.weight)
        ref.attention.out_proj.bias.copy_(op.attention.out.bias)


@pytest.mark.parametrize("causal", [False, True])
def test_equals_a_hand_written_module(causal):
    m = nexusdsl.compile(program(), causal=causal).eval()  # eval: no dropout
    ref = Reference(12, [4, 4, 4], [3, 5, 7], 3, causal).eval()
    copy_weights(ref, m)
    x = torch.randn(2, 9, 12)
    assert torch.allclose(m(x), ref(x), atol=1e-5)


def test_causal_tokenizer_never_looks_ahead():
    m = nexusdsl.compile(program(), causal=True).eval()
    x = torch.randn(1, 10, 12, requires_grad=True)
    y = m(x)
    for t in range(9):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1:].abs().max() == 0


def test_dropout_only_while_training():
    m = nexusdsl.compile(program("dropout = 0.5, "))
    x = torch.randn(2, 8, 12)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert (m(x) == 0).float().mean() > 0.3
