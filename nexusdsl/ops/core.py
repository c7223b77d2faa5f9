"""Core ops (family "core"): projections, normalisation, arithmetic, shape plumbing."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, model_serializer

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, CodeSegment, TensorType
from nexusdsl.ops.attrs import (
    FLOAT_DTYPES,
    AxisRef,
    Bool,
    Choice,
    Float,
    PosInt,
    Probability,
    as_integer,
    axis_label,
    extent,
    fixed_width,
    new_axis,
    normal,
    numel,
    operand,
    require_float,
    require_rank,
    resolve_axis,
    uniform,
)
from nexusdsl.ops.base import InferContext, Op, OpAttrs, OpError, same_type_as

# ---------------------------------------------------------------------------- projections


class Linear(Op):
    """A dense projection of the last axis: `x |> linear(256)`, `linear(x, d * 4, bias = false)`.

    [*, in] -> [*, out]; weight [out, in] and bias [out] initialised like nn.Linear."""

    name = "linear"

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

    def lower(self, attrs):
        import torch.nn.functional as F

        def linear(m, x):
            return F.linear(x, m.weight, m.bias if attrs.bias else None)

        return linear


class LayerNorm(Op):
    """Layer normalisation over the last axis: `layernorm(x, eps = 1e-5)`, `bias = false`
    drops the shift (weight initialised to ones, bias to zeros, as nn.LayerNorm)."""

    name = "layernorm"

    class Attrs(OpAttrs):
        eps: Annotated[Float, Field(gt=0)] = 1e-5
        bias: Bool = True

    def infer(self, ctx, inputs, attrs):
        require_float("layernorm", inputs[0])
        fixed_width("layernorm", inputs[0])
        return [same_type_as(inputs[0])]

    def params(self, ctx, inputs, attrs):
        width = inputs[0].axes[-1].size
        specs = {"weight": ParamSpec(shape=(width,), init="ones")}
        if attrs.bias:
            specs["bias"] = ParamSpec(shape=(width,), init="zeros")
        return specs

    def flops(self, inputs, outputs, attrs):
        return 8 * numel(inputs[0])

    def lower(self, attrs):
        import torch.nn.functional as F

        def layernorm(m, x):
            bias = m.bias if attrs.bias else None
            return F.layer_norm(x, (x.shape[-1],), m.weight, bias, attrs.eps)

        return layernorm


class RMSNorm(Op):
    """Root-mean-square normalisation over the last axis with a learned gain:
    `x |> rmsnorm`, `rmsnorm(x, eps = 1e-5)` (weight initialised to ones, as nn.RMSNorm)."""

    name = "rmsnorm"

    class Attrs(OpAttrs):
        eps: Annotated[Float, Field(gt=0)] = 1e-6

    def infer(self, ctx, inputs, attrs):
        require_float("rmsnorm", inputs[0])
        fixed_width("rmsnorm", inputs[0])
        return [same_type_as(inputs[0])]

    def params(self, ctx, inputs, attrs):
        return {"weight": ParamSpec(shape=(inputs[0].axes[-1].size,), init="ones")}

    def flops(self, inputs, outputs, attrs):
        return 4 * numel(inputs[0])

    def lower(self, attrs):
        import torch.nn.functional as F

        def rmsnorm(m, x):
            return F.rms_norm(x, (x.shape[-1],), m.weight, attrs.eps)

        return rmsnorm


class Dropout(Op):
    """Zeroes elements with probability p while training: `x |> dropout(0.1)`."""

    name = "dropout"

    class Attrs(OpAttrs):
        p: Probability = 0.1

    def infer(self, ctx, inputs, attrs):
        require_float("dropout", inputs[0])
        return [same_type_as(inputs[0])]

    def lower(self, attrs):
        import torch.nn.functional as F

        def dropout(m, x):
            return F.dropout(x, attrs.p, m.training)

        return dropout


class Identity(Op):
    """Returns its input: `x |> identity` (a placeholder where a block expects an op)."""

    name = "identity"

    class Attrs(OpAttrs):
        pass

    def infer(self, ctx, inputs, attrs):
        return [inputs[0]]

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        return lambda m, x: x


# ---------------------------------------------------------------------------- arithmetic


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

    class Attrs(OpAttrs):
        factor: Float

    def infer(self, ctx, inputs, attrs):
        return [_float_result(inputs[0])]

    def lower(self, attrs):
        return lambda m, x: x * attrs.factor


class Shift(Op):
    """A tensor plus a number: `x + 1.0` and `x - 1` elaborate to `shift(x, value)`."""

    name = "shift"
    public = False  # written `x + 1.0`, `x - 1`

    class Attrs(OpAttrs):
        value: Float

    def infer(self, ctx, inputs, attrs):
        return [_float_result(inputs[0])]

    def lower(self, attrs):
        return lambda m, x: x + attrs.value


# ---------------------------------------------------------------------------- concat / split


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


# ---------------------------------------------------------------------------- reductions


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


# ---------------------------------------------------------------------------- convolution


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


# ---------------------------------------------------------------------------- positions


class Position(Op):
    """The position embeddings of x's sequence axis, to be added: `x + position(x, max = 1024)`.

    [*, T, d] -> [T, d]. `kind = learned` (default) owns a table weight [max, d] and returns
    its first T rows; `kind = sinusoidal` has no parameters and returns the sin/cos table of
    Vaswani et al. (sin in even channels, cos in odd ones)."""

    name = "position"

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

# ---------------------------------------------------------------------------- layout (einops)

ELLIPSIS = "..."
_PATTERN_TOKEN = re.compile(r"\.\.\.|[()]|[A-Za-z_][A-Za-z0-9_]*|[^\s()]+")
Item = str | tuple[str, ...]  # an axis name, "...", or a parenthesised group of names


def _parse_side(text: str, side: str) -> list[Item]:
    items: list[Item] = []
    group: list[str] | None = None
    for token in _PATTERN_TOKEN.findall(text):
        if token == "(" and group is None:
            group = []
        elif token == ")" and group:
            items.append(tuple(group))
            group = None
        elif token.isidentifier() or (token == ELLIPSIS and group is None):
            (items if group is None else group).append(token)
        else:
            raise OpError(f"layout: unexpected `{token}` on the {side} of the pattern")
    if group is not None:
        raise OpError(f"layout: a `(` on the {side} of the pattern is not closed")
    return items


def _names(items: list[Item]) -> list[str]:
    return [n for item in items for n in ((item,) if isinstance(item, str) else item)
            if n != ELLIPSIS]


def _flat(items: list[Item]) -> list[str]:
    """Names and `...` in the order their elements are laid out."""
    return [n for item in items for n in ((item,) if isinstance(item, str) else item)]


def parse_pattern(pattern: str) -> tuple[list[Item], list[Item]]:
    """`"b (i j) d -> b i j d"` as (left items, right items), checked for consistency."""
    if pattern.count("->") != 1:
        raise OpError(f'layout: a pattern reads like "b (i j) d -> b i j d", got "{pattern}"')
    left, right = (_parse_side(text, side)
                   for text, side in zip(pattern.split("->"), ("left", "right")))
    for items, side in ((left, "left"), (right, "right")):
        names = _names(items)
        for name in names:
            if names.count(name) > 1:
                raise OpError(f"layout: axis {name} appears twice on the {side} of the pattern")
        if items.count(ELLIPSIS) > 1:
            raise OpError(f"layout: `...` appears twice on the {side} of the pattern")
    if (ELLIPSIS in left) != (ELLIPSIS in right):
        raise OpError("layout: `...` must appear on both sides of the pattern or on neither")
    for name in _names(right):
        if name not in _names(left):
            raise OpError(f"layout: axis {name} on the right of the pattern is not on the left")
    for name in _names(left):
        if name not in _names(right):
            raise OpError(f"layout: axis {name} on the left of the pattern is missing on the "
                          "right (reduce it with mean or sum first)")
    return left, right


def _bind_name(name: str, axis: Axis, sizes: dict[str, int], pos: int) -> Axis:
    # A fixed axis takes the pattern's name; a symbolic one is known by its own name.
    if name in sizes and axis.size != sizes[name]:
        raise OpError(f"layout: {name} = {sizes[name]}, but {axis_label(axis, pos)} "
                      f"is {extent(axis)}")
    return axis if axis.size is None else Axis(name=name, size=axis.size)


def _bind_group(group: tuple[str, ...], axis: Axis, sizes: dict[str, int], pos: int):
    """Sizes for the names of a group `(i j k)` that decomposes one input axis."""
    label, unknown = axis_label(axis, pos), [n for n in group if n not in sizes]
    known = math.prod(sizes[n] for n in group if n in sizes)
    if len(unknown) > 1 or (axis.size is None and not unknown):
        raise OpError(f"layout: cannot split {label} of size {extent(axis)} into "
                      f"({' '.join(group)}): give the sizes of all but one of them")
    if axis.size is None:  # the one unknown part stays symbolic, known by its pattern name
        return {n: Axis(name=n, size=sizes.get(n)) for n in group}
    given = "*".join(n for n in group if n in sizes)
    if unknown and axis.size % known:
        raise OpError(f"layout: {label} of size {axis.size} is not divisible by "
                      f"{given} = {known}", about=(0,))
    if not unknown and known != axis.size:
        raise OpError(f"layout: {label} has size {axis.size}, but {given} = {known}", about=(0,))
    solved = {unknown[0]: axis.size // known} if unknown else {}
    return {n: Axis(name=n, size=sizes.get(n, solved.get(n))) for n in group}


def _composed(parts: list[Axis]) -> Axis:
    """An output axis `(a b)` composed of several: anonymous when fixed (a new axis), named
    like `B*16` when symbolic (a symbolic axis needs a name to be identified by)."""
    if len(parts) == 1:
        return parts[0]
    if all(p.size is not None for p in parts):
        return Axis(size=math.prod(p.size for p in parts))
    return Axis(name="*".join(operand(p) for p in parts))


class Layout(Op):
    """Rearranges axes in einops notation; the pattern's names become the axis names, so later
    ops can refer to them: `g = layout(x, "b (i j k) d -> b i j k d", i = 16, j = 16)` then
    `mix(g, axis = i)`.

    The left side names the input's axes, a group `(i j k)` decomposes one (sizes from the
    keywords, one may be inferred); `...` stands for leading axes passed through. On the right
    a plain name keeps that axis (a fixed axis named by the pattern, a symbolic one like B by
    its own name); a group `(a b)` merges axes into an anonymous new axis (named `B*16` when
    symbolic), except that a group written exactly as on the left gives back that input axis.
    Modality and modal codes survive if the sequence axis (the second last) stays in place."""

    name = "layout"

    class Attrs(OpAttrs):
        model_config = ConfigDict(extra="allow")  # the keywords are axis sizes
        pattern: str

    def resolve(self, ctx, inputs, attrs):
        names = _names([item for side in parse_pattern(attrs.pattern) for item in side])
        sizes = {}
        for key, value in (attrs.model_extra or {}).items():
            try:
                sizes[key] = as_integer(value)
            except ValueError:
                sizes[key] = 0
            if sizes[key] <= 0:
                raise OpError(f"layout: size {key} = {value!r} is not a positive integer")
            if key not in names:
                raise OpError(f"layout: {key} = {value} is given, but the pattern has no "
                              f"axis {key}")
        return attrs.model_copy(update=sizes)

    def infer(self, ctx, inputs, attrs):
        x, (left, right) = inputs[0], parse_pattern(attrs.pattern)
        bound, groups, lead = self._bind(x, left, attrs)
        axes: list[Axis] = []
        for item in right:
            if item == ELLIPSIS:
                axes.extend(lead)
            elif isinstance(item, str):
                axes.append(bound[item])
            else:
                axes.append(groups.get(item) or _composed([bound[n] for n in item]))
        # Tokens stay tokens (and keep their codes) if the sequence axis keeps its place.
        seq = left[-2] if len(left) >= 2 else None
        token_wise = isinstance(seq, str) and seq != ELLIPSIS and right[-2:-1] == [seq]
        return [x.with_axes(axes) if token_wise else x.with_axes(axes, modality=None, codes=None)]

    @staticmethod
    def _bind(x: TensorType, left: list[Item], attrs):
        count = len([item for item in left if item != ELLIPSIS])
        if (x.rank < count) if ELLIPSIS in left else (x.rank != count):
            raise OpError(f'layout: the left side of "{attrs.pattern}" has {count} axes, '
                          f"but the input {x} has {x.rank}", about=(0,))
        sizes, lead_count = dict(attrs.model_extra or {}), x.rank - count
        bound: dict[str, Axis] = {}
        groups: dict[tuple[str, ...], Axis] = {}
        lead: tuple[Axis, ...] = ()
        pos = 0
        for item in left:
            if item == ELLIPSIS:
                lead, pos = x.axes[pos:pos + lead_count], pos + lead_count
                continue
            if isinstance(item, str):
                bound[item] = _bind_name(item, x.axes[pos], sizes, pos)
            else:
                bound.update(_bind_group(item, x.axes[pos], sizes, pos))
                groups[item] = x.axes[pos]
            pos += 1
        return bound, groups, lead

    def flops(self, inputs, outputs, attrs):
        return 0

    def bytes(self, inputs, outputs, attrs):
        """A layout that keeps the order of the axes' elements is a view: it moves nothing."""
        left, right = (_flat(side) for side in parse_pattern(attrs.pattern))
        return 0 if left == right else super().bytes(inputs, outputs, attrs)

    def lower(self, attrs):
        import einops

        sizes = dict(attrs.model_extra or {})
        return lambda m, x: einops.rearrange(x, attrs.pattern, **sizes)
