"""1-d convolution over the sequence axis (family "core"): `conv`."""

from __future__ import annotations

from nexusdsl.ir.types import Axis
from nexusdsl.ops.attrs import (
    Bool,
    PosInt,
    fixed_width,
    new_axis,
    numel,
    operand,
    require_float,
    require_rank,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError
from nexusdsl.ops.traits import Traits


def _strided(axis: Axis, stride: int) -> Axis:
    """The sequence axis after a "same"-padded convolution: ceil(T / stride) long."""
    if stride == 1:
        return axis
    if axis.size is None:
        return Axis(name=f"{operand(axis)}/{stride}")
    return Axis(size=-(-axis.size // stride))


class Conv(Op):
    """A 1-d convolution over the sequence axis of channels-last tokens:
    `conv(x, dim, kernel = 5, causal = true, groups = dim)` (a causal depthwise convolution).

    [*, T, C] -> [*, ceil(T / stride), out]. Padding is "same": (kernel-1)//2 zeros on the
    left and kernel//2 on the right (so an even kernel looks one step further ahead than
    back); with `causal = true` all kernel-1 zeros go on the left, so no output sees the
    future. Weight [out, C / groups, kernel] and bias [out] are initialised like nn.Conv1d."""

    name = "conv"
    traits = Traits(projection_weights=True)
    parameters = {"weight": "[out, d // groups, kernel]", "bias": "[out] if bias"}

    class Attrs(OpAttrs):
        out: PosInt
        kernel: PosInt
        stride: PosInt = 1
        groups: PosInt = 1
        causal: Bool = False
        bias: Bool = True

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("conv", x, 2, "[*, T, C]")
        require_float("conv", x)
        width = fixed_width("conv", x)
        for what, size in ((f"input width {x.axes[-1]}", width), (f"out = {attrs.out}", attrs.out)):
            if size % attrs.groups:
                raise OpError(f"conv: {what} is not divisible by groups = {attrs.groups}",
                              about=(0,))
        axes = (*x.axes[:-2], _strided(x.axes[-2], attrs.stride), new_axis(ctx, "out", attrs.out))
        codes = x.codes if attrs.stride == 1 else None
        return [x.with_axes(axes, codes=codes)]

    def params(self, ctx, inputs, attrs):
        fan_in = inputs[0].axes[-1].size // attrs.groups * attrs.kernel
        shape = (attrs.out, inputs[0].axes[-1].size // attrs.groups, attrs.kernel)
        specs = {"weight": uniform(shape, fan_in)}
        if attrs.bias:
            specs["bias"] = uniform((attrs.out,), fan_in)
        return specs

    def flops(self, inputs, outputs, attrs):
        per_output = 2 * inputs[0][-1] // attrs.groups * attrs.kernel
        return numel(outputs[0]) * per_output

    def lower(self, attrs):
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
