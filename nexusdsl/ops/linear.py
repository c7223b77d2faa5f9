"""A dense projection of the last axis (family "core"): `linear`."""

from __future__ import annotations

from nexusdsl.ops.attrs import (
    Bool,
    PosInt,
    fixed_width,
    new_axis,
    numel,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, same_type_as
from nexusdsl.ops.traits import AxisMap, Traits


class Linear(Op):
    """A dense projection of the last axis: `x |> linear(256)`, `linear(x, d * 4, bias = false)`.

    [*, in] -> [*, out]; weight [out, in] and bias [out] initialised like nn.Linear."""

    name = "linear"
    traits = Traits(tokenwise=True, token_projection=True, projection_weights=True)
    parameters = {"weight": "[out, d]", "bias": "[out] if bias"}

    layout = """Layout: `weight` is [out, in] as nn.Linear's (a Conv1D of GPT-2 stores it
    transposed)."""

    class Attrs(OpAttrs):
        out: PosInt
        bias: Bool = True

    def infer(self, ctx, inputs, attrs):
        (x,) = inputs
        fixed_width("linear", x)
        return [same_type_as(x, (*x.axes[:-1], new_axis(ctx, "out", attrs.out)))]

    def params(self, ctx, inputs, attrs):
        width = inputs[0].axes[-1].size
        specs = {"weight": uniform((attrs.out, width), width)}
        if attrs.bias:
            specs["bias"] = uniform((attrs.out,), width)
        return specs

    def flops(self, inputs, outputs, attrs):
        return 2 * numel(inputs[0]) * attrs.out

    def axis_map(self, attrs, inputs):
        x = inputs[0]
        step = {"n": x.axes[-1].size, "to": attrs.out, "bias": attrs.bias, "causal": False}
        return AxisMap(axis=x.rank - 1, steps=(step,))

    def lower(self, attrs):
        import torch.nn.functional as F

        def linear(m, x):
            return F.linear(x, m.weight, m.bias if attrs.bias else None)

        return linear
