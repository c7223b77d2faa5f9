"""Reductions over one axis (family "core"): `mean` and `sum`."""

from __future__ import annotations

from nexusdsl.ops.attrs import (
    AxisRef,
    numel,
    require_float,
    resolve_axis,
)
from nexusdsl.ops.base import Op, OpAttrs


class Reduce(Op):
    """Removes one axis by reducing over it. Reducing the sequence axis pools the tokens, so
    the result is no longer a token stream (no modality, no codes)."""

    class Attrs(OpAttrs):
        axis: AxisRef = -2

    def resolve(self, ctx, inputs, attrs):
        return attrs.model_copy(update={"axis": resolve_axis(self.name, inputs[0], attrs.axis, ctx=ctx)})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        axes = x.axes[:attrs.axis] + x.axes[attrs.axis + 1:]
        if attrs.axis >= x.rank - 2:
            return [x.with_axes(axes, modality=None, codes=None)]
        return [x.with_axes(axes)]

    def flops(self, inputs, outputs, attrs):
        return numel(inputs[0])


class Mean(Reduce):
    """Mean over one axis (mean pooling): `mean(x)` pools the tokens of `[B, T, d]` to `[B, d]`,
    `mean(x, axis = i)`."""

    name = "mean"

    def infer(self, ctx, inputs, attrs):
        require_float("mean", inputs[0])
        return super().infer(ctx, inputs, attrs)

    def lower(self, attrs):
        return lambda m, x: x.mean(dim=attrs.axis)


class Sum(Reduce):
    """Sum over one axis: `sum(x, axis = i)`."""

    name = "sum"

    def lower(self, attrs):
        return lambda m, x: x.sum(dim=attrs.axis)
