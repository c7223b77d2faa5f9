"""Convolution (family "core"): `conv`, a 1-d convolution over the sequence axis of tokens, or
over 1-3 named axes (`axes = [h, w]`: a ViT's patch embedding)."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, model_serializer

from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import (
    AxisRef,
    Bool,
    Int,
    PosInt,
    axis_label,
    fixed_width,
    new_axis,
    numel,
    operand,
    require_float,
    require_rank,
    resolve_axis,
    uniform,
    written_axis,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError
from nexusdsl.ops.decode import Decode
from nexusdsl.ops.traits import Traits

PerAxis = PosInt | list[PosInt]  # one value for every convolved axis, or one each
Padding = Annotated[Int, Field(ge=0)] | list[Annotated[Int, Field(ge=0)]]
MAX_AXES = 3  # torch's conv1d, conv2d and conv3d
# Attributes that came with `axes`: left out of the IR while unset, so that 1-d convolutions
# print and hash as before they existed.
_UNSET = {"axes": None, "padding": 0}


def _strided(axis: Axis, stride: int) -> Axis:
    """The sequence axis after a "same"-padded convolution: ceil(T / stride) long."""
    if stride == 1:
        return axis
    if axis.size is None:
        return Axis(name=f"{operand(axis)}/{stride}")
    return Axis(size=-(-axis.size // stride))


def _convolved(axis: Axis, kernel: int, stride: int, padding: int) -> Axis:
    """An axis after a convolution with explicit padding: floor((n + 2p - k) / s) + 1 long
    (the axis itself where that is n)."""
    if stride == 1 and 2 * padding == kernel - 1:
        return axis
    if axis.size is None:
        grown = f"{operand(axis)}+{2 * padding}" if padding else operand(axis)
        return Axis(name=f"({grown}-{kernel})//{stride}+1")
    length = axis.size + 2 * padding - kernel
    if length < 0:
        padded = f" padded by {padding} on each side" if padding else ""
        raise OpError(f"conv: {axis}{padded} is shorter than the kernel ({kernel})", about=(0,))
    return Axis(size=length // stride + 1)


def per_axis(what: str, value: int | list[int], count: int) -> list[int]:
    """`kernel = 16` as [16, 16] for two axes; a list must have one value per axis."""
    if isinstance(value, int):
        return [value] * count
    if len(value) != count:
        raise OpError(f"conv: {what} = {value} gives {len(value)} values for {count} "
                      f"axes; give one value, or one per axis")
    return list(value)


class Conv(Op):
    """A convolution: `conv(x, dim, kernel = 5, causal = true, groups = dim)` (a causal
    depthwise convolution over the sequence axis), `conv(pixels, dim, kernel = 16, stride =
    16, axes = [h, w])` (a ViT's patch embedding).

    Without `axes`, a 1-d convolution over the sequence axis of channels-last tokens:
    [*, T, C] -> [*, ceil(T / stride), out]. Padding is "same": (kernel-1)//2 zeros on the
    left and kernel//2 on the right (so an even kernel looks one step further ahead than
    back); with `causal = true` all kernel-1 zeros go on the left, so no output sees the
    future. An input of more than 3 axes needs `axes`.

    With `axes = [...]` (1 to 3 axes, by name or position), a convolution over those axes as
    torch's Conv1d/2d/3d computes it: `kernel`, `stride` and `padding` (zeros on both sides)
    are one number or one per axis. The channels are the last axis when it is not among
    `axes` (channels-last), else the axis just before the first of them (channels-first,
    PyTorch's [B, C, H, W]); the other axes are batch. The output keeps the layout, the
    channel axis resized to `out`, each convolved axis to floor((n + 2 padding - kernel) /
    stride) + 1. Weight [out, C / groups, *kernel] and bias [out] are initialised and laid
    out like nn.ConvNd's (a ViT's patch projection loads as it is)."""

    name = "conv"
    traits = Traits(projection_weights=True)
    parameters = {"weight": "[out, C // groups, *kernel] (C: the channels, d without axes)",
                  "bias": "[out] if bias"}

    layout = """Layout: `weight` is [out, in / groups, *kernel] as nn.Conv1d/2d/3d's, the kernel's
    axes in the order of `axes` (a ViT's patch projection loads as is)."""

    class Attrs(OpAttrs):
        out: PosInt
        kernel: PerAxis
        stride: PerAxis = 1
        groups: PosInt = 1
        causal: Bool = False
        bias: Bool = True
        axes: list[AxisRef] | None = None
        padding: Padding = Field(0, description="zeros on both sides of each convolved axis: "
                                 "a number, or one per axis")

        @model_serializer(mode="wrap")
        def _one_d_as_before(self, handler):
            data = handler(self)
            return {k: v for k, v in data.items() if k not in _UNSET or v != _UNSET[k]}

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        if attrs.axes is None:
            self._check_one_d(x, attrs)
            return attrs
        if attrs.causal:
            raise OpError("conv: `causal` applies to the 1-d convolution over the sequence "
                          "axis (without `axes`); with `axes`, pad explicitly")
        positions = self._positions(ctx, x, attrs.axes)
        count = len(positions)
        return attrs.model_copy(update={
            "axes": positions, "kernel": per_axis("kernel", attrs.kernel, count),
            "stride": per_axis("stride", attrs.stride, count),
            "padding": per_axis("padding", attrs.padding, count)})

    @staticmethod
    def _check_one_d(x: TensorType, attrs) -> None:
        for what, value in (("kernel", attrs.kernel), ("stride", attrs.stride)):
            if isinstance(value, list):
                raise OpError(f"conv: {what} = {value} lists one value per axis, which needs "
                              "the axes: `axes = [...]`")
        if attrs.padding != 0:
            raise OpError("conv: `padding` needs `axes = [...]`; without them conv pads the "
                          "sequence to keep its length (all on the left with causal = true)")
        if x.rank > 3:
            raise OpError(_ambiguous_layout(x), about=(0,))

    @staticmethod
    def _positions(ctx, x: TensorType, axes: list) -> list[int]:
        if not 1 <= len(axes) <= MAX_AXES:
            raise OpError(f"conv: axes = {axes} lists {len(axes)} axes; conv convolves 1 to "
                          f"{MAX_AXES}")
        refs = [written_axis(ctx, x, f"axes.{i}", ref) for i, ref in enumerate(axes)]
        positions = [resolve_axis("conv", x, ref, "axes") for ref in refs]
        for i, p in enumerate(positions):
            if p in positions[:i]:
                raise OpError(f"conv: {axis_label(x.axes[p], p)} is listed twice in axes")
        channel = channel_axis(x.rank, positions)
        if channel < 0:
            raise OpError(f"conv: axes = [{', '.join(map(str, axes))}] leave no channel axis "
                          f"in {x}: the channels are the last axis, or the one just before "
                          "the convolved axes when the last is convolved", about=(0,))
        return positions

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("conv", x)
        if attrs.axes is None:
            require_rank("conv", x, 2, "[*, T, C]")
            width = fixed_width("conv", x)
        else:
            width = self._channels(x, attrs.axes)
        for what, size in ((f"input width {x.axes[self._channel(x, attrs)]}", width),
                           (f"out = {attrs.out}", attrs.out)):
            if size % attrs.groups:
                raise OpError(f"conv: {what} is not divisible by groups = {attrs.groups}",
                              about=(0,))
        axes = list(x.axes)
        axes[self._channel(x, attrs)] = new_axis(ctx, "out", attrs.out)
        if attrs.axes is None:
            axes[-2] = _strided(x.axes[-2], attrs.stride)
            codes = x.codes if attrs.stride == 1 else None
        else:
            for p, k, s, pad in zip(attrs.axes, attrs.kernel, attrs.stride, attrs.padding):
                axes[p] = _convolved(x.axes[p], k, s, pad)
            codes = x.codes if axes[-2].same_extent(x.axes[-2]) else None
        return [x.with_axes(tuple(axes), codes=codes)]

    @staticmethod
    def _channel(x: TensorType, attrs) -> int:
        return x.rank - 1 if attrs.axes is None else channel_axis(x.rank, attrs.axes)

    @staticmethod
    def _channels(x: TensorType, positions: list[int]) -> int:
        c = channel_axis(x.rank, positions)
        if x.axes[c].size is None:
            raise OpError(f"conv: the channels, {axis_label(x.axes[c], c)} of {x}, need a "
                          "fixed size", about=(0,))
        return x.axes[c].size

    def params(self, ctx, inputs, attrs):
        x = inputs[0]
        width = x.axes[self._channel(x, attrs)].size
        kernel = [attrs.kernel] if attrs.axes is None else attrs.kernel
        fan_in = width // attrs.groups * math.prod(kernel)
        specs = {"weight": uniform((attrs.out, width // attrs.groups, *kernel), fan_in)}
        if attrs.bias:
            specs["bias"] = uniform((attrs.out,), fan_in)
        return specs

    def flops(self, inputs, outputs, attrs):
        x = inputs[0]
        kernel = [attrs.kernel] if attrs.axes is None else attrs.kernel
        width = x[-1] if attrs.axes is None else x[channel_axis(len(x), attrs.axes)]
        return numel(outputs[0]) * 2 * width // attrs.groups * math.prod(kernel)

    def lower(self, attrs):
        if attrs.axes is not None:
            return _lower_over_axes(attrs)
        import torch.nn.functional as F

        k = attrs.kernel
        padding = (k - 1, 0) if attrs.causal else ((k - 1) // 2, k // 2)

        def conv(m, x):
            lead, (T, C) = x.shape[:-2], x.shape[-2:]
            h = F.pad(x.reshape(-1, T, C).transpose(1, 2), padding)  # (N, C, T + k - 1)
            y = F.conv1d(h, m.weight, m.bias if attrs.bias else None, attrs.stride,
                         groups=attrs.groups)  # (N, out, T')
            return y.transpose(1, 2).reshape(*lead, y.shape[-1], attrs.out)

        return conv

    def decode(self, attrs, inputs):
        """A causal 1-d convolution of stride 1 over tokens [B, T, C] keeps its last kernel - 1
        inputs; any other sees later positions (or a grid) and cannot decode."""
        causal_tokens = attrs.axes is None and attrs.causal and inputs[0].rank == 3
        return _CausalConvDecode(attrs) if causal_tokens and attrs.stride == 1 else None

    def lower_portable(self, attrs):
        # torch-mlir's TOSA conversion has no grouped 3-d convolution: one per group instead
        if attrs.axes is None or len(attrs.axes) < 3 or attrs.groups == 1:
            return self.lower(attrs)
        return _lower_over_axes(attrs, one_group_at_a_time=True)


def channel_axis(rank: int, positions: list[int]) -> int:
    """The channels: the last axis when it is not convolved, else the one just before the
    first convolved axis (-1 when there is none)."""
    if rank - 1 not in positions:
        return rank - 1
    return min(positions) - 1


def _ambiguous_layout(x: TensorType) -> str:
    """Why a 1-d conv refuses an input of more than 3 axes, and the `axes` to write instead."""
    seq, last = x.rank - 2, x.rank - 1
    return (f"conv: without `axes`, conv convolves the second-last axis with the channels in "
            f"the last, as for tokens [*, T, C]: here {_described(x, seq)} with "
            f"{_described(x, last)} of {x}, which has {x.rank} axes; say which axes to "
            f"convolve: `axes = [{_written(x, seq)}]` keeps that reading, `axes = "
            f"[{_written(x, seq)}, {_written(x, last)}]` convolves both, the channels then "
            f"being {_described(x, seq - 1)}: channels-first, as PyTorch's [B, C, H, W]")


def _described(x: TensorType, index: int) -> str:
    axis = x.axes[index]
    label = axis_label(axis, index)
    return label if axis.size is None or axis.name else f"{label} (size {axis.size})"


def _written(x: TensorType, index: int) -> str:
    """An axis as `axes = [...]` may name it: its name, else its position."""
    return x.axes[index].name or str(index)


def _lower_over_axes(attrs, one_group_at_a_time: bool = False):
    """Conv1d/2d/3d over the listed axes: the channel and convolved axes are moved to the end
    (channels first among them), the other axes flattened into the batch."""
    import torch
    import torch.nn.functional as F

    positions, count = list(attrs.axes), len(attrs.axes)
    conv_nd = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[count]

    def grouped(h, weight, bias):
        if not one_group_at_a_time:
            return conv_nd(h, weight, bias, attrs.stride, attrs.padding, groups=attrs.groups)
        parts = zip(h.chunk(attrs.groups, 1), weight.chunk(attrs.groups, 0),
                    bias.chunk(attrs.groups) if bias is not None else [None] * attrs.groups)
        return torch.cat([conv_nd(x, w, b, attrs.stride, attrs.padding) for x, w, b in parts], 1)

    def conv(m, x):
        channel = channel_axis(x.dim(), positions)
        order = [i for i in range(x.dim()) if i != channel and i not in positions]
        order += [channel, *positions]
        h = x.permute(order)
        lead = h.shape[:x.dim() - count - 1]
        h = h.reshape(-1, *h.shape[len(lead):])  # (N, C, *spatial)
        y = grouped(h, m.weight, m.bias if attrs.bias else None)
        y = y.reshape(*lead, *y.shape[1:])
        return y.permute(_inverse(order))

    return conv


def _inverse(order: list[int]) -> list[int]:
    back = [0] * len(order)
    for i, p in enumerate(order):
        back[p] = i
    return back


class _CausalConvDecode(Decode):
    """Incremental causal convolution (ops/decode.py): the state is the last kernel - 1 inputs
    of every row ([B, kernel - 1, C], zeros at first: the forward's left padding). The inputs
    of padded positions are zeroed, so a left-padded row sees what its unpadded run sees
    before its first token: the forward's zero padding."""

    def __init__(self, attrs):
        self.attrs = attrs

    def init(self, m, ctx):
        import torch

        channels = m.weight.shape[1] * self.attrs.groups
        shape = (ctx.batch, self.attrs.kernel - 1, channels)
        return {"past": torch.zeros(shape, dtype=ctx.dtype, device=ctx.device)}

    def run(self, m, state, ctx, x):
        import torch
        import torch.nn.functional as F

        x = x * ctx.mask[..., None].to(x.dtype)
        seen = torch.cat([state["past"], x], dim=1)  # (B, kernel - 1 + new, C)
        y = F.conv1d(seen.transpose(1, 2), m.weight, m.bias if self.attrs.bias else None,
                     groups=self.attrs.groups)  # (B, out, new)
        state["past"].copy_(seen[:, seen.shape[1] - state["past"].shape[1]:])
        return y.transpose(1, 2)
