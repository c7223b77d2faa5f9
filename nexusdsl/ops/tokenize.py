"""THANN's adaptive tokenization (family "mixers"): `learned_tokenizer`.

    x = embed(tokens, dim) as tok
    x = learned_tokenizer(x, kernels = [3, 5, 7], dropout = 0.1)

Parallel 1-d convolutions of several widths over the sequence see spans of 3, 5, 7 tokens; their
outputs are concatenated back to the input width, refined by self-attention (with a residual
connection), then dropped out while training. The original design gave each of its n
convolutions `width // n` channels, so at width 2048 the concatenation had 2046 channels and
the attention that followed crashed; here the widths are checked when the model is built, and a
width that does not add up is a located shape error.
"""

from __future__ import annotations

from nexusdsl.ops.attrs import (
    Bool,
    PosInt,
    Probability,
    axis_label,
    fixed_width,
    numel,
    require_float,
    require_rank,
    uniform,
)
from nexusdsl.ops.base import REGISTRY, Op, OpAttrs, OpError, same_type_as


def _plus(widths: list[int]) -> str:
    return " + ".join(map(str, widths))


def _even_split(width: int, parts: int) -> list[int]:
    """`width` as `parts` channel counts that differ by at most one (the larger ones first)."""
    return [width // parts + (1 if i < width % parts else 0) for i in range(parts)]


class LearnedTokenizer(Op):
    """`learned_tokenizer(x, kernels = [3, 5, 7], dropout = 0.1)` on `[*, T, d]` tokens:
    convolution i (weight `conv.i.weight` [w_i, d, k_i], bias `conv.i.bias`) maps the tokens to
    w_i channels with "same" padding (all on the left with `causal = true`); the concatenation
    [*, T, w_1 + ... + w_n] must have the input width d back; then `y = h + attention(h)`
    (`heads` heads, parameters `attention.qkv`, `attention.out` as in `attention`, causal with
    `causal = true`) and dropout. `widths` defaults to d // n channels per convolution, as the
    original design did (also when `widths = []`); give it explicitly when n does not divide d."""

    name = "learned_tokenizer"
    family = "mixers"
    parameters = {"conv.<i>.weight": "[widths[i], d, kernels[i]] for each kernel i",
                  "conv.<i>.bias": "[widths[i]] if bias",
                  "attention.qkv.weight": "[3 * d, d]", "attention.out.weight": "[d, d]",
                  "attention.qkv.bias": "[3 * d] if bias", "attention.out.bias": "[d] if bias"}

    class Attrs(OpAttrs):
        kernels: list[PosInt] = [3, 5, 7]
        dropout: Probability = 0.1
        heads: PosInt = 8
        widths: list[PosInt] | None = None
        causal: Bool = False
        bias: Bool = True

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("learned_tokenizer", x, 2, "[*, T, d]")
        require_float("learned_tokenizer", x)
        if not attrs.kernels:
            raise OpError("learned_tokenizer: kernels must list at least one convolution width")
        if not attrs.widths:  # none given (or `widths = []` from a block's default)
            d = fixed_width("learned_tokenizer", x)
            widths = [d // len(attrs.kernels)] * len(attrs.kernels)
            return attrs.model_copy(update={"widths": widths})
        if len(attrs.widths) != len(attrs.kernels):
            raise OpError(f"learned_tokenizer: widths = {attrs.widths} gives {len(attrs.widths)} "
                          f"channel counts for the {len(attrs.kernels)} kernels {attrs.kernels}")
        return attrs

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        d = fixed_width("learned_tokenizer", x)
        total = sum(attrs.widths)
        if total != d:
            n = len(attrs.kernels)
            fix = f"`widths = {_even_split(d, n)}`"
            raise OpError(f"learned_tokenizer: shape mismatch: the {n} convolutions (kernels "
                          f"{attrs.kernels}) give {_plus(attrs.widths)} = {total} channels, but "
                          f"the input's {axis_label(x.axes[-1], x.rank - 1)} is {d}, which the "
                          f"concatenation must give back; write {fix} (or a width divisible by "
                          f"{n})", about=(0,))
        if d % attrs.heads:
            raise OpError(f"learned_tokenizer: width {x.axes[-1]} is not divisible by "
                          f"heads = {attrs.heads}", about=(0,))
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d = inputs[0].axes[-1].size
        specs = {}
        for i, (k, w) in enumerate(zip(attrs.kernels, attrs.widths)):
            specs[f"conv.{i}.weight"] = uniform((w, d, k), d * k)
            if attrs.bias:
                specs[f"conv.{i}.bias"] = uniform((w,), d * k)
        attention = REGISTRY["attention"]
        inner = attention.params(ctx, inputs, self._attention_attrs(attrs))
        return specs | {f"attention.{k}": v for k, v in inner.items()}

    @staticmethod
    def _attention_attrs(attrs):
        return REGISTRY["attention"].Attrs(heads=attrs.heads, causal=attrs.causal,
                                           bias=attrs.bias)

    def flops(self, inputs, outputs, attrs):
        tokens = numel(inputs[0]) // inputs[0][-1]
        convs = 2 * tokens * inputs[0][-1] * sum(w * k for w, k in zip(attrs.widths, attrs.kernels))
        attention = REGISTRY["attention"].flops(inputs, outputs, self._attention_attrs(attrs))
        return convs + attention + numel(outputs[0])

    def lower(self, attrs):
        import torch
        import torch.nn.functional as F

        attend = REGISTRY["attention"].lower(self._attention_attrs(attrs))
        pads = [(k - 1, 0) if attrs.causal else ((k - 1) // 2, k // 2) for k in attrs.kernels]

        def learned_tokenizer(m, x):
            lead, (T, d) = x.shape[:-2], x.shape[-2:]
            u = x.reshape(-1, T, d).transpose(1, 2)  # (N, d, T)
            parts = []
            for i, pad in enumerate(pads):
                conv = getattr(m.conv, str(i))
                parts.append(F.conv1d(F.pad(u, pad), conv.weight,
                                      conv.bias if attrs.bias else None))  # (N, w_i, T)
            h = torch.cat(parts, dim=1).transpose(1, 2)  # (N, T, d)
            y = h + attend(m.attention, h)
            return F.dropout(y, attrs.dropout, m.training).reshape(*lead, T, d)

        return learned_tokenizer
