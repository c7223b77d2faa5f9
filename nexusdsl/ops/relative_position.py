"""Bucketed relative position biases (T5): `b = relative_position(x, heads = 8, buckets = 32,
max_distance = 128, bidirectional = true)`, added to attention scores with
`attention(..., position_bias = b)`.

T5 computes the bias once per stack, in its first layer, and every layer adds the same one:
make it once before the `repeat` and pass it to every layer."""

from __future__ import annotations

import math
from typing import Literal

from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import Bool, PosInt, fixed_width, normal, require_rank, set_by_compiler
from nexusdsl.ops.base import Op, OpAttrs, OpError
from nexusdsl.ops.decode import Decode
from nexusdsl.ops.traits import Traits


class RelativePosition(Op):
    """An additive attention bias from the distance between query and key positions, read
    from a learned table per bucket of distances: `relative_position(x, heads, buckets = 32,
    max_distance = 128, bidirectional = true)` on `[*, T, d]` queries gives `[heads, T, T]`;
    with `kv = y` (`[*, S, e]`) `[heads, T, S]`. Half the buckets count distances one by
    one, the other half grow logarithmically up to `max_distance` (T5's
    `_relative_position_bucket`); bidirectional uses half the buckets for keys after the
    query. Parameter `weight` [buckets, heads] (T5's `relative_attention_bias`)."""

    name = "relative_position"
    family = "mixers"
    optional_inputs = ("kv",)
    traits = Traits()
    parameters = {"weight": "[buckets, heads]"}

    layout = """Layout: `weight[b, h]` is head h's bias for bucket b (T5's relative_attention_bias,
    as is)."""

    class Attrs(OpAttrs):
        heads: PosInt
        buckets: PosInt = 32
        max_distance: PosInt = 128
        bidirectional: Bool = True
        given: list[Literal["kv"]] = set_by_compiler(default=[])

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("relative_position", x, 2, "[*, T, d]")
        fixed_width("relative_position", x)
        keys = inputs[1] if "kv" in attrs.given else x
        exact = attrs.buckets // (2 if attrs.bidirectional else 1) // 2
        if exact < 1 or attrs.max_distance <= exact:
            raise OpError(f"relative_position: {attrs.buckets} buckets leave {exact} exact "
                          f"distances; max_distance ({attrs.max_distance}) must exceed them "
                          "and there must be at least one")
        heads = Axis(name=ctx.axis_name("heads"), size=attrs.heads)
        return [TensorType(dtype="f32", axes=(heads, x.axes[-2], keys.axes[-2]))]

    def params(self, ctx, inputs, attrs):
        return {"weight": normal((attrs.buckets, attrs.heads))}

    def flops(self, inputs, outputs, attrs):
        return 0

    def decode(self, attrs, inputs):
        return None if "kv" in attrs.given else _RelativeDecode(attrs)

    def lower(self, attrs):
        import torch.nn.functional as F

        def relative_position(m, x, *kv):
            T = x.shape[-2]
            S = kv[0].shape[-2] if kv else T
            buckets = relative_buckets(T, S, attrs.buckets, attrs.max_distance,
                                       attrs.bidirectional, x.device)
            return F.embedding(buckets, m.weight).permute(2, 0, 1).to(x.dtype)

        return relative_position


def relative_buckets(T: int, S: int, buckets: int, max_distance: int, bidirectional: bool,
                     device):
    """[T, S] bucket of each (query i, key j), from the distance j - i (T5's rule)."""
    import torch

    distance = (torch.arange(S, device=device)[None, :] - torch.arange(T, device=device)[:, None])
    return _buckets(distance, buckets, max_distance, bidirectional)


def _buckets(distance, buckets: int, max_distance: int, bidirectional: bool):
    """The bucket of each distance j - i (key position minus query position)."""
    import torch

    result = torch.zeros_like(distance)
    if bidirectional:
        buckets //= 2
        result += (distance > 0).to(torch.long) * buckets
        distance = distance.abs()
    else:
        distance = -torch.clamp(distance, max=0)
    exact = buckets // 2
    large = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).to(torch.long)
    large = torch.clamp(large, max=buckets - 1)
    return result + torch.where(distance < exact, distance, large)


class _RelativeDecode(Decode):
    """The bias of the new tokens (at their cache slots) against every slot a key can take:
    [heads, new, capacity]; attention's decoding picks the columns of the keys it holds."""

    def __init__(self, attrs):
        self.attrs = attrs

    def run(self, m, state, ctx, x):
        import torch
        import torch.nn.functional as F

        slots = ctx.slots(x.shape[-2])
        keys = torch.arange(ctx.capacity, device=x.device)
        a = self.attrs
        buckets = _buckets(keys[None, :] - slots[:, None], a.buckets, a.max_distance,
                           a.bidirectional)
        return F.embedding(buckets, m.weight).permute(2, 0, 1).to(x.dtype)
