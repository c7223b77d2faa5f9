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
    """Joins tensors along one axis; every other axis must agree, and an operand with fewer
    axes is expanded over the leading axes it lacks.

    `concat(seen, words, axis = 1)` on `[B, 16, d]` and `[B, T, d]` gives `[B, 16+T, d]` (the
    joined axis is a new one: anonymous when fixed, named like `16+T` when symbolic). Along
    the sequence axis (the second last) the modal codes of the parts are concatenated too, so
    a router can still tell the tokens apart; they are dropped if some part has no modality.

    An operand with fewer axes is expanded over the leading axes it lacks (its axes lined up
    with the others' from the right), so `concat(param([1, d]), x, axis = 1)` puts one learned
    token before every sequence of a batch `[B, T, d]`. `axis` counts in the operands with
    the most axes."""

    name = "concat"
    inputs = ("xs",)
    variadic = True

    class Attrs(OpAttrs):
        axis: AxisRef = -2

    def resolve(self, ctx, inputs, attrs):
        axis = resolve_axis("concat", _widest(inputs), attrs.axis, ctx=ctx)
        return attrs.model_copy(update={"axis": axis})

    def infer(self, ctx, inputs, attrs):
        widest = _widest(inputs)
        for i in range(len(inputs)):
            self._check_agrees(inputs, i, attrs.axis)
        axes = list(widest.axes)
        axes[attrs.axis] = _joined_extent([_aligned(x, widest.rank)[attrs.axis] for x in inputs])
        modalities = {x.modality for x in inputs}
        modality = modalities.pop() if len(modalities) == 1 else None
        return [widest.with_axes(axes, modality=modality, codes=self._codes(ctx, inputs, attrs))]

    @staticmethod
    def _check_agrees(inputs: list[TensorType], i: int, axis: int) -> None:
        """Input i against the first input of the most axes (input 1 when ranks agree)."""
        x, widest = inputs[i], _widest(inputs)
        w = inputs.index(widest)
        if x.dtype != inputs[0].dtype:
            raise OpError(f"concat: input {i + 1} is {x.dtype}, but input 1 is {inputs[0].dtype}",
                          about=(0, i))
        if i == w:
            return
        lacking = widest.rank - x.rank
        if lacking:
            _check_expandable(x, i, widest, w, axis)
        for j, (a, b) in enumerate(zip(widest.axes[lacking:], x.axes), start=lacking):
            if j != axis and not a.same_extent(b):
                raise OpError(f"concat: {axis_label(a, j)} is {extent(a)} in input {w + 1} but "
                              f"{extent(b)} in input {i + 1}", about=(w, i))

    @staticmethod
    def _codes(ctx, inputs, attrs):
        rank = _widest(inputs).rank
        if rank < 2 or attrs.axis != rank - 2:
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

        def concat(m, *xs):
            rank = max(x.dim() for x in xs)
            widest = next(x for x in xs if x.dim() == rank)
            # an input with fewer axes is expanded (a view, no copy) over the leading ones
            xs = [x if x.dim() == rank else x.expand(*widest.shape[:rank - x.dim()], *x.shape)
                  for x in xs]
            return torch.cat(xs, dim=attrs.axis)

        return concat


def _check_expandable(x: TensorType, i: int, widest: TensorType, w: int, axis: int) -> None:
    """Input i, of fewer axes than input w, can be expanded over the leading axes it lacks:
    the joined axis is one of its own, and it has no axis named like one of those it lacks
    (a [B, d] is not the same [T, d] for every example of a [B, T, d])."""
    lacking = widest.axes[:widest.rank - x.rank]
    fewer = (f"concat: input {i + 1} {x} has {x.rank} axes, but input {w + 1} {widest} has "
             f"{widest.rank}; an input with fewer axes is expanded over the leading axes it lacks")
    if axis < len(lacking):
        raise OpError(f"{fewer}, so it has no {axis_label(widest.axes[axis], axis)} to join "
                      "along", about=(w, i))
    names = {a.name for a in lacking if a.name}
    clash = next((a for a in x.axes if a.name in names), None)
    if clash is not None:
        raise OpError(f"{fewer}, but it has axis {clash.name} itself; give both the same axes "
                      "(with layout, or by naming the axes alike)", about=(w, i))


def _widest(inputs: list[TensorType]) -> TensorType:
    """The first input of the most axes: the one whose axes the result has."""
    rank = max(x.rank for x in inputs)
    return next(x for x in inputs if x.rank == rank)


def _aligned(x: TensorType, rank: int) -> tuple[Axis | None, ...]:
    """x's axes lined up from the right with `rank` axes (None where it lacks one)."""
    return (None,) * (rank - x.rank) + x.axes


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
