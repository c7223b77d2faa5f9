"""Joining and splitting tensors along an axis (family "core"): `concat` and `split`."""

from __future__ import annotations

from nexusdsl.ir.types import Axis, CodeSegment, TensorType
from nexusdsl.ops.attrs import (
    AxisRef,
    PosInt,
    axis_label,
    extent,
    operand,
    resolve_axis,
)
from nexusdsl.ops.base import InferContext, Op, OpAttrs, OpError


def _joined_extent(parts: list[Axis]) -> Axis:
    """The concatenated axis: a fixed sum, or a symbolic axis named like `T+196`."""
    if all(p.size is not None for p in parts):
        return Axis(size=sum(p.size for p in parts))
    return Axis(name="+".join(operand(p) for p in parts))


def _segments(ctx: InferContext, x: TensorType) -> tuple[CodeSegment, ...] | None:
    """The modal codes of x's tokens: recorded by `tag`, else all tokens carry x's modality."""
    if x.codes is not None:
        return x.codes
    spec = ctx.modalities.get(x.modality) if x.modality else None
    if spec is None:
        return None
    return (CodeSegment(code=spec.code, modality=spec.name, length=x.axes[-2]),)


class Concat(Op):
    """Joins tensors along one axis; every other axis must agree.

    `concat(seen, words, axis = 1)` on `[B, 16, d]` and `[B, T, d]` gives `[B, 16+T, d]` (the
    joined axis is a new one: anonymous when fixed, named like `16+T` when symbolic). Along
    the sequence axis (the second last) the modal codes of the parts are concatenated too, so
    a router can still tell the tokens apart; they are dropped if some part has no modality."""

    name = "concat"
    inputs = ("xs",)
    variadic = True

    class Attrs(OpAttrs):
        axis: AxisRef = -2

    def resolve(self, ctx, inputs, attrs):
        return attrs.model_copy(update={"axis": resolve_axis("concat", inputs[0], attrs.axis, ctx=ctx)})

    def infer(self, ctx, inputs, attrs):
        first = inputs[0]
        for i, x in enumerate(inputs[1:], start=1):
            self._check_agrees(first, x, i, attrs.axis)
        axes = list(first.axes)
        axes[attrs.axis] = _joined_extent([x.axes[attrs.axis] for x in inputs])
        modalities = {x.modality for x in inputs}
        modality = modalities.pop() if len(modalities) == 1 else None
        return [first.with_axes(axes, modality=modality, codes=self._codes(ctx, inputs, attrs))]

    @staticmethod
    def _check_agrees(first: TensorType, x: TensorType, i: int, axis: int) -> None:
        if x.rank != first.rank:
            raise OpError(f"concat: input {i + 1} {x} has {x.rank} axes, "
                          f"but input 1 {first} has {first.rank}", about=(0, i))
        if x.dtype != first.dtype:
            raise OpError(f"concat: input {i + 1} is {x.dtype}, but input 1 is {first.dtype}",
                          about=(0, i))
        for j, (a, b) in enumerate(zip(first.axes, x.axes)):
            if j != axis and not a.same_extent(b):
                raise OpError(f"concat: {axis_label(a, j)} is {extent(a)} in input 1 but "
                              f"{extent(b)} in input {i + 1}", about=(0, i))

    @staticmethod
    def _codes(ctx, inputs, attrs):
        if inputs[0].rank < 2 or attrs.axis != inputs[0].rank - 2:
            same = all(x.codes == inputs[0].codes for x in inputs)
            return inputs[0].codes if same else None
        parts = [_segments(ctx, x) for x in inputs]
        if any(p is None for p in parts):
            return None
        return tuple(seg for part in parts for seg in part)

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        import torch

        return lambda m, *xs: torch.cat(xs, dim=attrs.axis)


class Split(Op):
    """Splits one axis into parts, giving several outputs:
    `q, k = split(x, 2)` (equal halves of the last axis), `split(x, [64, 192], axis = d)`.

    After resolution `sizes` is always the explicit list of part sizes."""

    name = "split"

    class Attrs(OpAttrs):
        sizes: PosInt | list[PosInt]
        axis: AxisRef = -1

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        axis = resolve_axis("split", x, attrs.axis, ctx=ctx)
        return attrs.model_copy(update={"axis": axis, "sizes": self._parts(x, axis, attrs.sizes)})

    @staticmethod
    def _parts(x: TensorType, axis: int, sizes: int | list[int]) -> list[int]:
        a = x.axes[axis]
        label = axis_label(a, axis)
        if a.size is None:
            raise OpError(f"split: cannot split {label}: its size is symbolic")
        if isinstance(sizes, int):
            if a.size % sizes:
                raise OpError(f"split: cannot split {label} of size {a.size} into "
                              f"{sizes} equal parts", about=(0,))
            return [a.size // sizes] * sizes
        if sum(sizes) != a.size:
            raise OpError(f"split: sizes {sizes} add up to {sum(sizes)}, "
                          f"but {label} has size {a.size}", about=(0,))
        return list(sizes)

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        # Splitting the sequence axis cuts through the modal code segments: drop them.
        codes = None if attrs.axis == x.rank - 2 else x.codes
        outputs = []
        for size in attrs.sizes:
            axes = list(x.axes)
            axes[attrs.axis] = Axis(size=size)
            outputs.append(x.with_axes(axes, codes=codes))
        return outputs

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        import torch

        return lambda m, x: tuple(torch.split(x, attrs.sizes, dim=attrs.axis))
