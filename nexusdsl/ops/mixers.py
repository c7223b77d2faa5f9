"""Sequence mixers (family "mixers"): ops that let tokens exchange information."""

from __future__ import annotations

from nexusdsl.ops.attrs import (
    AxisRef,
    Bool,
    PosInt,
    Probability,
    axis_label,
    fixed_width,
    numel,
    require_float,
    require_rank,
    resolve_axis,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.traits import Traits


class Attention(Op):
    """Multi-head self-attention over the sequence axis of `[*, T, d]` tokens:
    `x + attention(rmsnorm(x), heads = 4, causal = true)`.

    With `axis = i` it attends along that axis instead, every other axis but the channels
    being batch: `attention(g, axis = i, heads = 4)` on a `layout` grid.

    Parameters as in nanoGPT: a fused `qkv` projection [3d, d] (q, k, v in that order) and an
    `out` projection [d, d], with biases unless `bias = false`. `dropout` applies to the
    attention weights while training."""

    name = "attention"
    family = "mixers"
    traits = Traits(projection_weights=True)
    parameters = {"qkv.weight": "[3 * d, d]", "out.weight": "[d, d]",
                  "qkv.bias": "[3 * d] if bias", "out.bias": "[d] if bias"}

    class Attrs(OpAttrs):
        heads: PosInt
        causal: Bool = False
        axis: AxisRef | None = None
        bias: Bool = True
        dropout: Probability = 0.0

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("attention", x, 2, "[*, T, d]")
        if attrs.axis is None:
            return attrs
        axis = resolve_axis("attention", x, attrs.axis, ctx=ctx)
        if axis == x.rank - 1:
            raise OpError(f"attention: {axis_label(x.axes[-1], axis)} holds the channels; "
                          "attend along another axis")
        return attrs.model_copy(update={"axis": axis})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("attention", x)
        width = fixed_width("attention", x)
        if width % attrs.heads:
            raise OpError(f"attention: width {x.axes[-1]} is not divisible by "
                          f"heads = {attrs.heads}", about=(0,))
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d = inputs[0].axes[-1].size
        specs = {"qkv.weight": uniform((3 * d, d), d), "out.weight": uniform((d, d), d)}
        if attrs.bias:
            specs |= {"qkv.bias": uniform((3 * d,), d), "out.bias": uniform((d,), d)}
        return specs

    def flops(self, inputs, outputs, attrs):
        sizes = inputs[0]
        T = sizes[-2 if attrs.axis is None else attrs.axis]
        d = sizes[-1]
        batch = numel(sizes) // (T * d)
        mixing = 2 * T * T * d * 2 // (2 if attrs.causal else 1)  # scores + weighted sum
        return batch * (2 * T * d * 3 * d + mixing + 2 * T * d * d)

    def lower(self, attrs):
        return attention_forward(attrs)


def attention_forward(attrs, head_dim: int | None = None):
    """fn(m, x) of multi-head attention (PyTorch's fused SDPA) along the sequence axis or
    `attrs.axis`: qkv projection, heads of `head_dim` channels (the width / heads unless
    given: `pruned_attention` keeps fewer heads of the original size), output projection."""
    import torch.nn.functional as F

    heads, axis = attrs.heads, attrs.axis

    def attention(m, x):
        if axis is not None:
            x = x.movedim(axis, -2)
        size = head_dim or x.shape[-1] // heads
        inner = heads * size
        qkv = F.linear(x, m.qkv.weight, m.qkv.bias if attrs.bias else None)  # (*, T, 3 inner)
        q, k, v = (t.unflatten(-1, (heads, size)).transpose(-2, -3)
                   for t in qkv.split(inner, dim=-1))  # (*, H, T, size)
        p = attrs.dropout if m.training else 0.0
        lead = q.shape[:-3]  # SDPA on (batch, heads, T, size): torch.compile miscomputed more
        q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))  # leading axes (an axis=)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=attrs.causal)
        y = y.reshape(*lead, *y.shape[-3:])
        y = F.linear(y.transpose(-2, -3).flatten(-2), m.out.weight,
                     m.out.bias if attrs.bias else None)  # (*, T, d)
        return y if axis is None else y.movedim(-2, axis)

    return attention
