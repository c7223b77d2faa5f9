"""Arithmetic (family "core"): `a + b`, `a - b`, `a * b` between tensors broadcast by axis name
(`add`, `sub`, `mul`), and a tensor times or plus a number (`scale`, `shift`). The elaborator
makes these nodes from the operators; they are not called by name."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_serializer

from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import (
    FLOAT_DTYPES,
    Choice,
    Float,
    axis_label,
    extent,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.traits import Traits


def promote(left: str, right: str) -> str:
    """The dtype of `left op right`, as torch promotes: floats win, the wider float wins."""
    if left == right:
        return left
    floats = [d for d in FLOAT_DTYPES if d in (left, right)]
    return floats[-1] if floats else "i64"


def _mismatch(left: Axis, right: Axis, index: int) -> OpError:
    # `index` counts from the right (-1 is the last axis): broadcasting aligns from the right.
    other = f"axis {right.name} is " if right.name and right.name != left.name else ""
    return OpError(f"shape mismatch: {axis_label(left, index)} is {extent(left)} on the left, "
                   f"{other}{extent(right)} on the right", about=(0, 1))


def broadcast_axis(left: Axis | None, right: Axis | None, index: int) -> Axis:
    """One output axis of numpy-style broadcasting: the axis that gives the size (the left one
    unless it is missing or 1), named by the left where both agree and the left has a name."""
    if left is None or right is None:
        return left or right
    if left.size == 1 and right.size != 1:
        return right
    if right.size == 1 or left.same_extent(right):
        return left if left.name or right.size == 1 else right
    raise _mismatch(left, right, index)


def broadcast(a: TensorType, b: TensorType) -> tuple[Axis, ...]:
    rank = max(a.rank, b.rank)
    left = (None,) * (rank - a.rank) + a.axes
    right = (None,) * (rank - b.rank) + b.axes
    return tuple(broadcast_axis(lt, rt, i - rank) for i, (lt, rt) in enumerate(zip(left, right)))


class Binary(Op):
    """Elementwise arithmetic between two tensors, broadcast by axis name: the operand of
    lower rank is aligned with the other by its axes' names, so `x + mean(x, axis = T)` adds
    a `[B, d]` to every position of a `[B, T, d]`. Where the names do not decide (anonymous
    axes, names the other operand lacks), numpy's rules apply: aligned from the right.

    The result keeps the left operand's modality and modal codes (the right one's when the
    left has none: `position(x) + x` is still a token stream)."""

    inputs = ("a", "b")
    symbol: ClassVar[str] = "+"
    public = False  # written `a + b`, `a - b`, `a * b`
    traits = Traits(tokenwise=True)

    class Attrs(OpAttrs):
        # how `operand` is aligned by axis name where that differs from numpy's alignment from
        # the right: its axes reordered (`permute`, a torch permutation), then size-1 axes
        # inserted at these positions of the result (`expand`)
        permute: list[int] = Field(default_factory=list)
        expand: list[int] = Field(default_factory=list)
        operand: Choice("a", "b") = "b"

        @model_serializer(mode="wrap")
        def _only_when_aligned(self, handler):
            # the common case prints (and hashes) as before: no attributes at all
            data = handler(self)
            return data if data.get("expand") or data.get("permute") else {}

    def resolve(self, ctx, inputs, attrs):
        a, b = inputs
        big, small, which = (b, a, "a") if b.rank > a.rank else (a, b, "b")
        found = _alignment_by_name(big, small)
        if found is None:
            return attrs  # the names do not decide: numpy's alignment
        order, positions = found
        permute = order if order != list(range(small.rank)) else []
        right_aligned = positions == list(range(big.rank - small.rank, big.rank))
        if not permute and right_aligned:
            return attrs
        expand = [i for i in range(big.rank) if i not in positions]
        return attrs.model_copy(update={"permute": permute, "expand": expand, "operand": which})

    def infer(self, ctx, inputs, attrs):
        a, b = (_aligned(t, attrs) if name == attrs.operand else t
                for name, t in zip("ab", inputs))
        axes = broadcast(a, b)
        carrier = a if a.modality or a.codes or not (b.modality or b.codes) else b
        return [carrier.with_axes(axes, dtype=promote(a.dtype, b.dtype))]

    def lower(self, attrs):
        import operator

        fn = {"+": operator.add, "-": operator.sub, "*": operator.mul}[self.symbol]
        if not (attrs.expand or attrs.permute):
            return lambda m, a, b: fn(a, b)

        def aligned(m, a, b):
            small = a if attrs.operand == "a" else b
            if attrs.permute:
                small = small.permute(*attrs.permute)
            for position in attrs.expand:  # ascending: each lands where the result has it
                small = small.unsqueeze(position)
            return fn(small, b) if attrs.operand == "a" else fn(a, small)

        return aligned


def _alignment_by_name(big: TensorType, small: TensorType) -> tuple[list[int], list[int]] | None:
    """How `small` lines up with `big` by axis name: (the order of small's axes that follows
    big's, the positions in big they land at), or None when the names do not decide (an
    anonymous axis, a name big lacks, a name given twice)."""
    found: list[int] = []
    for axis in small.axes:
        index = big.axis_index(axis.name) if axis.name else None
        if index is None or index in found:
            return None
        found.append(index)
    order = sorted(range(len(found)), key=found.__getitem__)
    return order, sorted(found)


def _aligned(t: TensorType, attrs) -> TensorType:
    axes = [t.axes[i] for i in attrs.permute] if attrs.permute else list(t.axes)
    for position in attrs.expand:
        axes.insert(position, Axis(size=1))
    return t.with_axes(tuple(axes))


class Add(Binary):
    """`a + b`, e.g. a residual connection: `x = x + attention(rmsnorm(x), heads = 4)`."""

    name = "add"
    symbol = "+"


class Sub(Binary):
    """`a - b`."""

    name = "sub"
    symbol = "-"


class Mul(Binary):
    """`a * b`, e.g. gating: `linear(x, h) * silu(linear(x, h))`."""

    name = "mul"
    symbol = "*"


def _float_result(x: TensorType) -> TensorType:
    return same_type_as(x, dtype=x.dtype if x.dtype in FLOAT_DTYPES else "f32")


class Scale(Op):
    """A tensor times a number: `0.5 * x` and `x / 2` elaborate to `scale(x, factor)`."""

    name = "scale"
    public = False  # written `0.5 * x`, `x / 2`
    traits = Traits(elementwise=True, tokenwise=True)

    class Attrs(OpAttrs):
        factor: Float

    def infer(self, ctx, inputs, attrs):
        return [_float_result(inputs[0])]

    def no_op(self, attrs):
        return attrs.factor == 1.0

    def compose(self, first, second):
        return {"factor": first.factor * second.factor}

    def lower(self, attrs):
        return lambda m, x: x * attrs.factor


class Shift(Op):
    """A tensor plus a number: `x + 1.0` and `x - 1` elaborate to `shift(x, value)`."""

    name = "shift"
    public = False  # written `x + 1.0`, `x - 1`
    traits = Traits(elementwise=True, tokenwise=True)

    class Attrs(OpAttrs):
        value: Float

    def infer(self, ctx, inputs, attrs):
        return [_float_result(inputs[0])]

    def no_op(self, attrs):
        return attrs.value == 0.0

    def compose(self, first, second):
        return {"value": first.value + second.value}

    def lower(self, attrs):
        return lambda m, x: x + attrs.value
