"""Position embeddings (family "core"): `position`."""

from __future__ import annotations

import math

from nexusdsl.ir.types import TensorType
from nexusdsl.ops.attrs import (
    Choice,
    PosInt,
    axis_label,
    fixed_width,
    normal,
    require_rank,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError
from nexusdsl.ops.decode import Decode


class Position(Op):
    """The position embeddings of x's sequence axis, to be added: `x + position(x, max = 1024)`.

    [*, T, d] -> [T, d]. `kind = learned` (default) owns a table weight [max, d] and returns
    its first T rows; `kind = sinusoidal` has no parameters and returns the sin/cos table of
    Vaswani et al. (sin in even channels, cos in odd ones)."""

    name = "position"
    parameters = {"weight": "[max, d] if kind = learned"}

    class Attrs(OpAttrs):
        max: PosInt
        kind: Choice("learned", "sinusoidal") = "learned"

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("position", x, 2, "[*, T, d]")
        fixed_width("position", x)
        seq = x.axes[-2]
        if seq.size is not None and seq.size > attrs.max:
            raise OpError(f"position: {axis_label(seq, x.rank - 2)} has {seq.size} positions, "
                          f"but max = {attrs.max}", about=(0,))
        return [TensorType(dtype="f32", axes=(seq, x.axes[-1]))]

    def params(self, ctx, inputs, attrs):
        if attrs.kind != "learned":
            return {}
        return {"weight": normal((attrs.max, inputs[0].axes[-1].size))}

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        if attrs.kind == "sinusoidal":
            return _sinusoidal_positions(attrs.max)

        def learned(m, x):
            T = x.shape[-2]
            if T > attrs.max:
                raise ValueError(f"position: the sequence has {T} positions, but max = {attrs.max}")
            return m.weight[:T]

        return learned

    def decode(self, attrs, inputs):
        return _PositionDecode(attrs)

    def lower_portable(self, attrs):
        if attrs.kind != "sinusoidal":
            return self.lower(attrs)
        return _sinusoidal_positions(attrs.max, portable=True)


def _sinusoidal_positions(limit: int, portable: bool = False):
    import torch

    def sinusoidal(m, x):
        T, d = x.shape[-2], x.shape[-1]
        if T > limit:
            raise ValueError(f"position: the sequence has {T} positions, but max = {limit}")
        t = torch.arange(T, device=x.device, dtype=torch.float32)[:, None]  # (T, 1)
        if portable:  # torch-mlir's StableHLO runs out of memory on strided writes: select
            i = torch.arange(d, device=x.device)
            angle = t * torch.exp((i - i % 2) * (-math.log(10000.0) / d))  # (T, d)
            table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
            return table.to(x.dtype) if x.dtype.is_floating_point else table
        rates = torch.exp(torch.arange(0, d, 2, device=x.device) * (-math.log(10000.0) / d))
        table = torch.zeros(T, d, device=x.device)
        table[:, 0::2] = torch.sin(t * rates)
        table[:, 1::2] = torch.cos(t * rates[: d // 2])
        return table.to(x.dtype) if x.dtype.is_floating_point else table

    return sinusoidal


class _PositionDecode(Decode):
    """The new tokens' rows of the table at each row's own positions (ops/decode.py):
    [B, new, d], which broadcasts onto the new tokens like the whole table does."""

    def __init__(self, attrs):
        self.attrs = attrs

    def init(self, m, ctx):
        return None

    def run(self, m, state, ctx, x):
        import torch

        positions = ctx.positions
        if self.attrs.kind == "learned":
            return m.weight[positions.clamp(max=self.attrs.max - 1)]
        d = x.shape[-1]
        i = torch.arange(d, device=x.device)
        angle = positions[..., None].to(torch.float32) * torch.exp(
            (i - i % 2) * (-math.log(10000.0) / d))
        table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
        return table.to(x.dtype)
