"""Axis wiring (family "axis"): the multidimensional layers of the Modular Neural Networks paper.

A `layout` gives a tensor named grid axes (`b (i j k) d -> b i j k d`); `mix` then connects the
nodes of that grid. Each node of the grid is one element; every axis that is not mixed (batch,
channels, the other grid axes when they are not listed) is shared over, like the batch of a
matmul:

    y = mix(g, axis = i)                                  # dense along i
    y = mix(g, axis = i, to = 32)                         # resize axis i
    y = mix(g, axes = [i, j, k], wiring = axial, share = axis)
    y = mix(g, axes = [i, j], wiring = full)              # dense over the flattened i*j
    y = mix(g, axes = [i, j], wiring = local(3))          # n-d convolution over i and j
    y = mix(g, axes = [i, j], wiring = random(density = 0.1, seed = 0))

Wirings: `axial` connects each node to every node differing from it in exactly one coordinate,
one matrix per axis (`order = parallel` sums the per-axis products of one input, `sequential`
chains them: mode-n products); `full` is one matrix over the flattened axes; `local(k)` connects
the nodes of a k^n neighbourhood (a single-channel n-d convolution, "same" padding); `random`
is `full` times a fixed mask with exactly the requested density. `causal = true` keeps only
connections from nodes at or before each node in row-major order, so a grid laid out from a
sequence stays causal.

Sharing (axial and local): `share = axis` one matrix per axis, `none` a separate matrix for
every row along each axis (for local: a locally connected layer), `all` one matrix for every
axis (equal sizes). A list gives one value per axis. Parameter counts for a `[10, 10]` grid
without bias: 2000 / 200 / 100.
"""

from __future__ import annotations

import math
import string
from typing import Any

from pydantic import Field

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import (
    AxisRef,
    Bool,
    PosInt,
    axis_label,
    extent,
    numel,
    require_float,
    resolve_axis,
    set_by_compiler,
    written_axis,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.cost import Cost, copy, elementwise, gemm, traffic
from nexusdsl.ops.traits import AxisMap, Traits

SHARES = ("none", "axis", "all")
WIRINGS = ("axial", "full", "local", "random")
# Axis names that would clash with nn.Module attributes if used as a parameter's module name.
_RESERVED = {"op", "training", "forward", "weight", "bias", "regions", "body"}


# ---------------------------------------------------------------------------- attribute parsing


def _option(value: Any) -> Any:
    """A bare option value: a name, or an op value {"op": name} with no settings."""
    if isinstance(value, dict) and set(value) <= {"op", "attrs"} and not value.get("attrs"):
        return value.get("op")
    return value


def _wiring_call(value: Any) -> tuple[str, list, dict]:
    value = _option(value)
    if isinstance(value, str):
        return value, [], {}
    if isinstance(value, dict) and "fn" in value and set(value) <= {"fn", "args", "kwargs"}:
        return value["fn"], list(value.get("args") or []), dict(value.get("kwargs") or {})
    if isinstance(value, dict) and "fn" in value:  # the canonical form, {"fn": "local", "k": 3}
        return value["fn"], [], {k: v for k, v in value.items() if k != "fn"}
    raise OpError(f"mix: wiring = {value!r} is not a wiring (use axial, full, local(k) or "
                  "random(density, seed))")


def _bind_call(fn: str, args: list, kwargs: dict, names: tuple[str, ...]) -> dict:
    """The arguments of `local(3)` / `random(density = 0.1, seed = 0)` by name."""
    if len(args) > len(names):
        raise OpError(f"mix: {fn}(...) takes at most {len(names)} arguments ({', '.join(names)})")
    bound = dict(zip(names, args))
    for key, v in kwargs.items():
        if key not in names:
            raise OpError(f"mix: {fn}(...) has no argument `{key}` (it takes {', '.join(names)})")
        if key in bound:
            raise OpError(f"mix: {fn}(...) gets `{key}` twice")
        bound[key] = v
    return bound


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def canonical_wiring(value: Any) -> str | dict:
    """`axial`, `full`, `local(3)`, `random(0.1, seed = 0)` validated, as the IR keeps them:
    "axial", "full", {"fn": "local", "k": 3}, {"fn": "random", "density": 0.1, "seed": 0}."""
    fn, args, kwargs = _wiring_call(value)
    if fn not in WIRINGS:
        raise OpError(f"mix: unknown wiring `{fn}` (use axial, full, local(k) or "
                      "random(density, seed))")
    if fn in ("axial", "full"):
        if args or kwargs:
            raise OpError(f"mix: wiring {fn} takes no settings")
        return fn
    if fn == "local":
        bound = _bind_call(fn, args, kwargs, ("k",))
        k = bound.get("k")
        if not _is_int(k) or k < 1:
            raise OpError(f"mix: local(k) needs a positive integer neighbourhood size k, got "
                          f"{k if k is not None else 'none'}: write local(3)")
        return {"fn": fn, "k": k}
    bound = _bind_call(fn, args, kwargs, ("density", "seed"))
    density, seed = bound.get("density"), bound.get("seed", 0)
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise OpError(f"mix: random(density, seed) needs a density in (0, 1], got {density}")
    if not _is_int(seed):
        raise OpError(f"mix: random(density, seed) needs an integer seed, got {seed!r}")
    return {"fn": fn, "density": float(density), "seed": seed}


def wiring_fn(wiring: str | dict) -> str:
    """The name of a canonical wiring: axial, full, local or random."""
    return wiring if isinstance(wiring, str) else wiring["fn"]


def _label(x: TensorType, pos: int) -> str:
    """The module name of an axis's parameters: `i.weight` for axis i, `axis2.weight` when
    the axis has no usable name."""
    name = x.axes[pos].name
    if name and name.isidentifier() and not name.startswith("_") and name not in _RESERVED:
        return name
    return f"axis{pos}"


# ---------------------------------------------------------------------------- the op


class Mix(Op):
    """Mixing along named grid axes (the MNN multidimensional layer; docs/axes.md and this
    module's docstring describe the wirings and the sharing).

    `mix(g, axis = i)`, `mix(g, axis = i, to = 32)`, `mix(g, axes = [i, j], wiring = full)`,
    `share = none | axis | all` (or a list), `separate = true` (= `share = none`),
    `order = parallel | sequential`, `bias = false` by default, as in the paper, and
    `causal = false`. Weights are initialised like nn.Linear, with fan-in the number of
    inputs each node receives."""

    name = "mix"
    family = "axis"
    traits = Traits(projection_weights=True)
    parameters = {
        "<axis>.weight": "[to, n] for each mixed axis (n its size), with the axial wiring and "
                         "share = axis; share = none puts the other grid axes' sizes in front "
                         "(one matrix per row); share = all makes one `weight`",
        "<axis>.bias": "[to] if bias, shaped and shared like the weight",
        "weight": "[cells, cells] with wiring = full or random (cells: the product of the "
                  "mixed axes' sizes); local(k): [k, ..., k], one k per mixed axis",
        "bias": "[*grid] if bias (grid: the mixed axes' sizes; local: [1])"}

    class Attrs(OpAttrs):
        axis: AxisRef | None = None
        axes: list[AxisRef] | None = None
        to: PosInt | list[PosInt] | None = None
        wiring: Any = Field("axial", description="axial | full | local(k) | random(density, seed)")
        order: str | dict = Field("parallel", description="parallel | sequential")
        share: Any = Field(None, description="none | axis | all, or a list of one per axis")
        separate: Bool | None = None
        bias: Bool = False
        causal: Bool = False
        labels: list[str] | None = set_by_compiler(default=None)  # parameter names per axis

    # -- normalisation ------------------------------------------------------------------
    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        positions = self._positions(ctx, x, attrs)
        wiring = canonical_wiring(attrs.wiring)
        order = _option(attrs.order)
        if order not in ("parallel", "sequential"):
            raise OpError(f"mix: order = {order} is not parallel or sequential")
        share = self._share(attrs, wiring_fn(wiring), len(positions))
        to = self._to(x, attrs, positions, wiring_fn(wiring), order)
        return attrs.model_copy(update={
            "axis": None, "axes": positions, "wiring": wiring, "order": order, "share": share,
            "separate": None, "to": to, "labels": [_label(x, p) for p in positions]})

    @staticmethod
    def _positions(ctx, x: TensorType, attrs) -> list[int]:
        if (attrs.axis is None) == (attrs.axes is None):
            raise OpError("mix: give the axis to mix along, `axis = i`, or several, "
                          "`axes = [i, j]` (one of the two)")
        if attrs.axis is not None:
            refs = [written_axis(ctx, x, "axis", attrs.axis)]
        else:
            refs = [written_axis(ctx, x, f"axes.{n}", r) for n, r in enumerate(attrs.axes)]
        if not refs:
            raise OpError("mix: axes = [] lists no axis")
        positions = [resolve_axis("mix", x, r, "axis" if attrs.axis is not None else "axes")
                     for r in refs]
        for i, p in enumerate(positions):
            if p in positions[:i]:
                raise OpError(f"mix: {axis_label(x.axes[p], p)} is listed twice in axes")
            if x.axes[p].size is None:
                raise OpError(f"mix: {axis_label(x.axes[p], p)} has a symbolic size; mixing "
                              "along it needs a fixed size (give it one with layout)", about=(0,))
        return positions

    @staticmethod
    def _share(attrs, wiring: str, count: int) -> list[str]:
        share = attrs.share
        if attrs.separate is not None:
            implied = "none" if attrs.separate else "axis"
            if share is not None and [_option(s) for s in _as_list(share, count)] != [implied] * count:
                raise OpError(f"mix: separate = {str(attrs.separate).lower()} contradicts "
                              f"share = {share}")
            share = implied
        if share is not None and wiring in ("full", "random"):
            raise OpError(f"mix: share applies to the axial and local wirings, not {wiring} "
                          "(one matrix over the flattened axes)")
        values = [_option(s) for s in _as_list(share if share is not None else "axis", count)]
        if len(values) != count:
            raise OpError(f"mix: share lists {len(values)} values for {count} axes")
        for v in values:
            if v not in SHARES:
                raise OpError(f"mix: share = {v} is not one of none, axis, all")
        return values

    @staticmethod
    def _to(x, attrs, positions, wiring, order) -> list[int]:
        sizes = [x.axes[p].size for p in positions]
        if attrs.to is None:
            return sizes
        to = list(attrs.to) if isinstance(attrs.to, list) else [attrs.to]
        if wiring != "axial" or (len(positions) > 1 and order != "sequential"):
            raise OpError("mix: `to` resizes with one axis (`axis = i, to = n`) or with "
                          "`order = sequential` (one size per axis); parallel, full, local and "
                          "random mixes keep the grid's shape")
        if len(to) != len(positions):
            raise OpError(f"mix: to lists {len(to)} sizes for {len(positions)} axes")
        if attrs.causal and to != sizes:
            raise OpError("mix: causal = true needs square maps, but `to` resizes "
                          + ", ".join(f"{axis_label(x.axes[p], p)} from {n} to {t}"
                                      for p, n, t in zip(positions, sizes, to) if n != t))
        return to

    # -- shapes and parameters ------------------------------------------------------------
    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("mix", x)
        self._check_all_equal(x, attrs)
        axes = list(x.axes)
        for p, t in zip(attrs.axes, attrs.to):
            axes[p] = Axis(name=x.axes[p].name, size=t)
        resized = axes != list(x.axes)
        seq = x.rank - 2
        if resized and seq in attrs.axes:
            return [x.with_axes(axes, codes=None)]
        return [same_type_as(x, axes)]

    @staticmethod
    def _check_all_equal(x: TensorType, attrs) -> None:
        shared = [(p, n, t) for p, s, n, t in zip(attrs.axes, attrs.share,
                                                  [x.axes[p].size for p in attrs.axes], attrs.to)
                  if s == "all"]
        for p, n, t in shared[1:]:
            p0, n0, t0 = shared[0]
            if (n, t) != (n0, t0):
                a, b = x.axes[p0], x.axes[p]
                raise OpError(f"mix: share = all uses one matrix for every axis, but "
                              f"{axis_label(a, p0)} is {extent(a)} and {axis_label(b, p)} is "
                              f"{extent(b)}" + (f" (to {t0} and {t})" if (t0, t) != (n0, n) else ""),
                              about=(0,))

    def params(self, ctx, inputs, attrs):
        return plan(inputs[0].sizes, attrs).specs()

    def flops(self, inputs, outputs, attrs):
        return plan(inputs[0], attrs).flops(numel(inputs[0]))

    def bytes(self, inputs, outputs, attrs):
        return running_cost(inputs[0], attrs).bytes

    def kernels(self, inputs, attrs):
        return running_cost(inputs[0], attrs).kernels

    def axis_map(self, attrs, inputs):
        if wiring_fn(attrs.wiring) != "axial":
            return None
        return one_axis_map(inputs[0], attrs)

    def lower(self, attrs):
        from nexusdsl.ops import axis_torch

        return axis_torch.lower_mix(attrs)


def _as_list(value: Any, count: int) -> list:
    return list(value) if isinstance(value, list) else [value] * count


# ---------------------------------------------------------------------------- the plan


class MixPlan:
    """What a resolved mix computes, independent of torch: its matrices, their shapes and
    parameter names, fan-ins and FLOPs. `sizes` are the input's sizes (None if symbolic)."""

    def __init__(self, sizes, attrs):
        self.sizes = tuple(sizes)
        self.attrs = attrs
        self.axes = list(attrs.axes)
        self.grid = sorted(self.axes)  # grid axes in position (row-major) order
        self.n = [self.sizes[p] for p in self.axes]
        self.to = list(attrs.to)


class AxialPlan(MixPlan):
    def matrix_key(self, i: int) -> str:
        """The parameter module of the i-th listed axis: `i` for one matrix per axis or per
        row, the shared `` for share = all."""
        return "" if self.attrs.share[i] == "all" else self.attrs.labels[i]

    def others(self, i: int) -> list[int]:
        """Grid axes other than the i-th listed one, in position order: the rows of share=none."""
        return [p for p in self.grid if p != self.axes[i]]

    def weight_shape(self, i: int) -> tuple[int, ...]:
        rows = self._row_sizes(i) if self.attrs.share[i] == "none" else ()
        return (*rows, self.to[i], self.n[i])

    def bias_shape(self, i: int) -> tuple[int, ...]:
        rows = self._row_sizes(i) if self.attrs.share[i] == "none" else ()
        return (*rows, self.to[i])

    def _row_sizes(self, i: int) -> tuple[int, ...]:
        # Sequential order: axes listed before i are already resized when i's matrix applies.
        current = dict(zip(self.axes, self.n))
        if self.attrs.order == "sequential":
            current.update({p: t for p, t in zip(self.axes[:i], self.to[:i])})
        return tuple(current[p] for p in self.others(i))

    def fan_in(self, i: int) -> int:
        if self.attrs.order == "parallel":
            return sum(self.n)
        return self.n[i]

    def specs(self) -> dict[str, ParamSpec]:
        specs: dict[str, ParamSpec] = {}
        for i in range(len(self.axes)):
            key = self.matrix_key(i)
            prefix = f"{key}." if key else ""
            if prefix + "weight" in specs:
                continue  # share = all: the first listed axis owns the matrix
            std = 1.0 / math.sqrt(self.fan_in(i))
            specs[prefix + "weight"] = ParamSpec(shape=self.weight_shape(i), init="uniform", std=std)
            if self.attrs.bias:
                specs[prefix + "bias"] = ParamSpec(shape=self.bias_shape(i), init="uniform", std=std)
        return specs

    def flops(self, count: int) -> int:
        total, current = 0, count
        for i in range(len(self.axes)):
            out = current // self.n[i] * self.to[i]
            total += 2 * out * self.n[i]
            if self.attrs.order == "sequential":
                current = out
        if self.attrs.order == "parallel" and len(self.axes) > 1:
            total += count * (len(self.axes) - 1)  # summing the per-axis products
        return total


class FullPlan(MixPlan):
    @property
    def cells(self) -> int:
        return math.prod(self.sizes[p] for p in self.grid)

    def fan_in(self) -> int:
        if wiring_fn(self.attrs.wiring) == "random":
            return max(1, round(self.attrs.wiring["density"] * self.cells))
        return self.cells

    def specs(self) -> dict[str, ParamSpec]:
        std = 1.0 / math.sqrt(self.fan_in())
        specs = {"weight": ParamSpec(shape=(self.cells, self.cells), init="uniform", std=std)}
        if self.attrs.bias:
            specs["bias"] = ParamSpec(shape=tuple(self.sizes[p] for p in self.grid),
                                      init="uniform", std=std)
        return specs

    def flops(self, count: int) -> int:
        return 2 * count * self.cells  # the masked matrix runs dense until pruned


class LocalPlan(MixPlan):
    @property
    def k(self) -> int:
        return self.attrs.wiring["k"]

    @property
    def separate(self) -> bool:
        return "none" in self.attrs.share

    def specs(self) -> dict[str, ParamSpec]:
        kernel = (self.k,) * len(self.grid)
        rows = tuple(self.sizes[p] for p in self.grid) if self.separate else ()
        std = 1.0 / math.sqrt(self.k ** len(self.grid))
        specs = {"weight": ParamSpec(shape=(*rows, *kernel), init="uniform", std=std)}
        if self.attrs.bias:
            specs["bias"] = ParamSpec(shape=rows or (1,), init="uniform", std=std)
        return specs

    def flops(self, count: int) -> int:
        return 2 * count * self.k ** len(self.grid)


def plan(sizes, attrs) -> MixPlan:
    fn = wiring_fn(attrs.wiring)
    if fn == "axial":
        return AxialPlan(sizes, attrs)
    if fn == "local":
        if len(set(attrs.share)) > 1:
            raise OpError("mix: a local wiring shares all of its axes alike (share = none for "
                          "a locally connected layer, axis or all for a convolution)")
        return LocalPlan(sizes, attrs)
    return FullPlan(sizes, attrs)


def random_mask_count(cells_out: int, cells_in: int, density: float, causal: bool) -> int:
    """The exact number of connections a `random(density)` mask keeps: density times the
    connections allowed (all of them, or the lower triangle when causal), rounded."""
    allowed = cells_out * cells_in
    if causal:
        allowed = cells_out * (cells_out + 1) // 2
    return max(1, round(density * allowed))


LETTERS = string.ascii_letters


# ---------------------------------------------------------------------------- how it runs


def one_axis_map(x: TensorType, attrs) -> AxisMap | None:
    """An axial mix (or axial_mix) of one axis with one matrix for it, as an AxisMap."""
    if len(attrs.axes) != 1 or attrs.share[0] == "none":
        return None
    p = attrs.axes[0]
    key = "" if attrs.share[0] == "all" else attrs.labels[0]
    step = {"n": x.axes[p].size, "to": attrs.to[0], "bias": attrs.bias, "causal": attrs.causal}
    return AxisMap(axis=p, steps=(step,), key=key)


def axial_costs(shape: tuple[int, ...], attrs) -> dict[str, Cost]:
    """What an axial mix costs run each way: `einsum` (as written: each axis's product
    permutes the input in and out), `products` (batched matmuls on views, `axial_mix`) and,
    where possible, `dense` (one matrix over the flattened grid)."""
    total = math.prod(shape)
    costs = {"einsum": Cost(), "products": Cost()}
    current = list(shape)
    for p, to in zip(attrs.axes, attrs.to):
        lead, n, rest = math.prod(current[:p]), current[p], math.prod(current[p + 1:])
        product = gemm(to, n, rest, batch=lead)
        costs["products"] += product
        costs["einsum"] += product + copy(total).scaled(2)  # permute in and out
        if attrs.order == "sequential":
            current[p] = to
    if attrs.order == "parallel" and len(attrs.axes) > 1:
        costs["products"] += elementwise(total, 3).scaled(len(attrs.axes) - 1)
        costs["einsum"] += elementwise(total, 3).scaled(len(attrs.axes) - 1)
    if dense_possible(attrs):
        grid = sorted(attrs.axes)
        cells = math.prod(shape[p] for p in grid)
        cells_out = math.prod(attrs.to)
        lead, rest = math.prod(shape[:grid[0]]), math.prod(shape[grid[-1] + 1:])
        # per axis two Kronecker products (each a few reshapes and a multiply), identities,
        # the sum, and their backward passes: about eight small kernels per axis (measured)
        build = elementwise(cells * cells_out, 2).scaled(8 * len(grid) + 2)
        costs["dense"] = build + gemm(cells_out, cells, rest, batch=lead)
    return costs


def dense_possible(attrs) -> bool:
    """Whether an axial mix can run as one matrix over its flattened grid: several adjacent
    axes, no bias, a matrix per axis (not per row)."""
    grid = sorted(attrs.axes)
    adjacent = grid == list(range(grid[0], grid[0] + len(grid)))
    return (len(grid) > 1 and adjacent and not attrs.bias
            and all(s != "none" for s in attrs.share))


def running_cost(shape: tuple[int, ...], attrs) -> Cost:
    """A mix as ops/axis_torch.py runs it, at concrete sizes."""
    fn = wiring_fn(attrs.wiring)
    if fn == "axial":
        return axial_costs(shape, attrs)["einsum"]
    total = math.prod(shape)
    grid = sorted(attrs.axes)
    if fn == "local":  # grid axes moved last and padded, one convolution, moved back
        taps = attrs.wiring["k"] ** len(grid)
        conv = Cost(2.0 * total * taps, traffic(8.0 * total, 4.0 * total), 1)
        return copy(total).scaled(3) + conv
    cells = math.prod(shape[p] for p in grid)
    # one einsum over the flattened grid with its operands copied in and out, and the
    # weight masked (random, or causal) first
    return gemm(cells, cells, total // cells) + copy(total).scaled(2) + elementwise(cells * cells)



def invertible_mix(x: TensorType, attrs) -> str | None:
    """Why a resolved mix cannot be inverted in closed form (for reversible recursion), or
    None when it can: square axial maps applied one axis at a time, or a square full map."""
    fn = wiring_fn(attrs.wiring)
    if fn in ("local", "random"):
        return f"a {fn} wiring is not invertible in general"
    for p, t in zip(attrs.axes, attrs.to):
        if x.axes[p].size != t:
            return f"it resizes {axis_label(x.axes[p], p)} from {x.axes[p].size} to {t}"
    if fn == "axial" and attrs.order == "parallel" and len(attrs.axes) > 1:
        return ("a parallel axial mix over several axes (a Kronecker sum) has no closed-form "
                "inverse; use order = sequential")
    return None
