"""Picking one position of an axis (family "core"): `select(x, 0)` is the first token."""

from __future__ import annotations

from nexusdsl.ops.attrs import AxisRef, Int, axis_label, resolve_axis
from nexusdsl.ops.base import Op, OpAttrs, OpError
from nexusdsl.ops.traits import Traits


class Select(Op):
    """One position of an axis, the axis removed: `select(x, 0)` takes the first token of
    `[B, T, d]` (BERT's and ViT's class token, `[B, d]`), `select(x, -1)` the last,
    `select(x, 2, axis = i)` position 2 of axis i. A negative index counts from the end."""

    name = "select"
    traits = Traits()

    class Attrs(OpAttrs):
        index: Int = 0
        axis: AxisRef = -2

    def resolve(self, ctx, inputs, attrs):
        return attrs.model_copy(update={"axis": resolve_axis("select", inputs[0], attrs.axis,
                                                             ctx=ctx)})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        axis = x.axes[attrs.axis]
        if axis.size is not None and not -axis.size <= attrs.index < axis.size:
            raise OpError(f"select: index {attrs.index} is outside {axis_label(axis, attrs.axis)}"
                          f" of {axis.size} positions", about=(0,))
        axes = x.axes[:attrs.axis] + x.axes[attrs.axis + 1:]
        if attrs.axis >= x.rank - 2:  # a token picked out of a stream is no stream
            return [x.with_axes(axes, modality=None, codes=None)]
        return [x.with_axes(axes)]

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        return lambda m, x: x.select(attrs.axis, attrs.index)
