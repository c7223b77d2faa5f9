"""Rearranging axes in einops notation (family "core"): `layout`, and the pattern parsing that
`layout-cancel` reuses."""

from __future__ import annotations

import math
import re

from pydantic import ConfigDict, Field

from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import (
    as_integer,
    axis_label,
    extent,
    operand,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError

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
        pattern: str = Field(description="an einops pattern: \"b (i j) d -> b i j d\"")

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

    @staticmethod
    def is_view(attrs) -> bool:
        """Whether the layout keeps the order of the axes' elements (only regroups them): a
        view, which moves nothing."""
        left, right = (_flat(side) for side in parse_pattern(attrs.pattern))
        return left == right

    def bytes(self, inputs, outputs, attrs):
        return 0 if self.is_view(attrs) else super().bytes(inputs, outputs, attrs)

    def lower(self, attrs):
        import einops

        sizes = dict(attrs.model_extra or {})
        return lambda m, x: einops.rearrange(x, attrs.pattern, **sizes)
