"""What a binding rule computes from checkpoint tensors: a small tree of reads and transforms,
whose shape is known from the safetensors headers before any byte is read.

Transforms (docs/language.md, "Weights from checkpoints"): `concat(a, b, ..., axis = 0)`,
`split(a, parts, index, axis = 0)` (piece `index` of `parts` equal pieces, or of the sizes
listed), `transpose(a)` (a matrix), `permute(a, [dims])`, `reshape(a, [sizes])` (one size may be
-1), `slice(a, start, end, axis = 0)`, `select(a, index, axis = 0)` (one position, the axis
removed: expert e of a fused [E, ...] tensor), `rotary_halves(a, heads)` (each head's rows from
interleaved rotary pairs to transformers' half-split layout, as Meta's checkpoints need).
A key used by several rules is copied into each (eight experts from one dense MLP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nexusdsl.weights.checkpoints import Source, TensorInfo, read, read_into


class TransformError(ValueError):
    """A transform that does not fit its inputs (the elaborator locates it at the rule)."""


class Tree:
    shape: tuple[int, ...]
    dtype: str

    def reads(self) -> list[tuple[Source, TensorInfo]]:
        raise NotImplementedError

    def compute(self):
        """The tensor (CPU)."""
        raise NotImplementedError

    def fill(self, target) -> None:
        """Write the result into `target` (a CPU tensor of this shape)."""
        result = self.compute()
        target.copy_(result)


@dataclass
class Read(Tree):
    source: Source
    info: TensorInfo

    @property
    def shape(self):
        return self.info.shape

    @property
    def dtype(self):
        return self.info.dtype

    def reads(self):
        return [(self.source, self.info)]

    def compute(self):
        return read(self.info)

    def fill(self, target) -> None:
        from nexusdsl.weights.checkpoints import torch_dtype

        if target.is_contiguous() and target.dtype == torch_dtype(self.dtype):
            read_into(self.info, target)  # no intermediate copy
        else:
            target.copy_(self.compute())

    def __str__(self):
        return f"{self.info.key} {list(self.shape)}"


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise TransformError(f"axis {axis} is out of range for {rank} axes")
    return axis % rank


@dataclass
class Concat(Tree):
    parts: list[Tree]
    axis: int = 0

    def __post_init__(self):
        ranks = {len(p.shape) for p in self.parts}
        if len(ranks) != 1:
            raise TransformError("concat: the tensors have different numbers of axes: " +
                                 ", ".join(str(p) for p in self.parts))
        rank = ranks.pop()
        self.axis = _axis(self.axis, rank)
        for p in self.parts:
            other = [s for i, s in enumerate(p.shape) if i != self.axis]
            first = [s for i, s in enumerate(self.parts[0].shape) if i != self.axis]
            if other != first:
                raise TransformError("concat: the tensors differ off the joined axis: " +
                                     ", ".join(str(p) for p in self.parts))
        shape = list(self.parts[0].shape)
        shape[self.axis] = sum(p.shape[self.axis] for p in self.parts)
        self.shape, self.dtype = tuple(shape), self.parts[0].dtype

    def reads(self):
        return [r for p in self.parts for r in p.reads()]

    def compute(self):
        import torch

        return torch.cat([p.compute().to(_dtype(self.parts[0])) for p in self.parts], self.axis)

    def fill(self, target) -> None:
        offset = 0
        for p in self.parts:  # each piece straight into its rows
            size = p.shape[self.axis]
            p.fill(target.narrow(self.axis, offset, size))
            offset += size

    def __str__(self):
        return f"concat({', '.join(map(str, self.parts))}, axis = {self.axis})"


def _dtype(tree: Tree):
    from nexusdsl.weights.checkpoints import torch_dtype

    return torch_dtype(tree.dtype)


@dataclass
class Unary(Tree):
    """A transform of one tensor, its result shape worked out before reading."""

    x: Tree
    name: str
    settings: dict[str, Any]

    def __post_init__(self):
        self.shape, self.dtype = _RESULT[self.name](self.x.shape, **self.settings), self.x.dtype

    def reads(self):
        return self.x.reads()

    def compute(self):
        return _APPLY[self.name](self.x.compute(), **self.settings)

    def __str__(self):
        extra = "".join(f", {k} = {v}" for k, v in self.settings.items())
        return f"{self.name}({self.x}{extra})"


def _split_sizes(n: int, parts) -> list[int]:
    if isinstance(parts, int):
        if parts < 1 or n % parts:
            raise TransformError(f"split: {n} does not split into {parts} equal parts")
        return [n // parts] * parts
    if sum(parts) != n:
        raise TransformError(f"split: the sizes {parts} do not add up to {n}")
    return list(parts)


def _split_shape(shape, parts, index: int, axis: int = 0):
    a = _axis(axis, len(shape))
    sizes = _split_sizes(shape[a], parts)
    if not 0 <= index < len(sizes):
        raise TransformError(f"split: index {index} is out of range for {len(sizes)} parts")
    return (*shape[:a], sizes[index], *shape[a + 1:])


def _split(x, parts, index: int, axis: int = 0):
    a = _axis(axis, x.dim())
    sizes = _split_sizes(x.shape[a], parts)
    return x.narrow(a, sum(sizes[:index]), sizes[index]).contiguous()


def _transpose_shape(shape):
    if len(shape) != 2:
        raise TransformError(f"transpose: takes a matrix, got {list(shape)} (use permute)")
    return (shape[1], shape[0])


def _permute_shape(shape, dims):
    if sorted(dims) != list(range(len(shape))):
        raise TransformError(f"permute: {dims} is not an order of {len(shape)} axes")
    return tuple(shape[d] for d in dims)


def _reshape_shape(shape, sizes):
    total = math.prod(shape)
    if sizes.count(-1) > 1:
        raise TransformError("reshape: at most one size may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known == 0 or total % known:
            raise TransformError(f"reshape: {list(shape)} cannot become {sizes}")
        sizes = [total // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != total:
        raise TransformError(f"reshape: {list(shape)} ({total} values) cannot become {sizes}")
    return tuple(sizes)


def _slice_shape(shape, start: int, end: int, axis: int = 0):
    a = _axis(axis, len(shape))
    if not 0 <= start < end <= shape[a]:
        raise TransformError(f"slice: [{start}, {end}) is outside an axis of {shape[a]}")
    return (*shape[:a], end - start, *shape[a + 1:])


def _select_shape(shape, index: int, axis: int = 0):
    a = _axis(axis, len(shape))
    if not -shape[a] <= index < shape[a]:
        raise TransformError(f"select: index {index} is outside an axis of {shape[a]}")
    return (*shape[:a], *shape[a + 1:])


def _rotary_shape(shape, heads: int):
    if len(shape) not in (1, 2) or heads < 1 or shape[0] % (2 * heads):
        raise TransformError(f"rotary_halves: {list(shape)} does not hold {heads} heads of "
                             "rotary pairs (rows = heads x an even head size)")
    return tuple(shape)


def _rotary(x, heads: int):
    """Rows of each head from (x0, x1, x2, x3, ...) pairs to (x0, x2, ..., x1, x3, ...)."""
    size = x.shape[0] // heads
    rest = x.shape[1:]
    return x.reshape(heads, size // 2, 2, *rest).transpose(1, 2).reshape(x.shape).contiguous()


_RESULT = {"split": _split_shape, "transpose": _transpose_shape, "permute": _permute_shape,
           "reshape": lambda shape, sizes: _reshape_shape(shape, list(sizes)),
           "slice": _slice_shape, "select": _select_shape, "rotary_halves": _rotary_shape}
_APPLY = {"split": _split, "transpose": lambda x: x.t().contiguous(),
          "permute": lambda x, dims: x.permute(*dims).contiguous(),
          "reshape": lambda x, sizes: x.reshape(*sizes).contiguous(),
          "slice": lambda x, start, end, axis=0: x.narrow(_axis(axis, x.dim()), start,
                                                            end - start).contiguous(),
          "select": lambda x, index, axis=0: x.select(_axis(axis, x.dim()), index).contiguous(),
          "rotary_halves": _rotary}

# name: (positional settings in order, {setting: default}); the tensor comes first
TRANSFORMS = {
    "split": (("parts", "index", "axis"), {"axis": 0}),
    "transpose": ((), {}),
    "permute": (("dims",), {}),
    "reshape": (("sizes",), {}),
    "slice": (("start", "end", "axis"), {"axis": 0}),
    "select": (("index", "axis"), {"axis": 0}),
    "rotary_halves": (("heads",), {}),
}
