"""Attribute types and small helpers shared by every op family.

Attribute types are strict where pydantic's lax parsing would surprise a user (`true` is not a
size, "4" is not a number) and lenient where users expect it (a size written 4.0 is 4).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, Strict

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.base import InferContext, OpError, check_last_axis

# ---------------------------------------------------------------------------- attribute types


def as_integer(value: Any) -> Any:
    # pydantic's lax int would take `true` and "4"; a size written as 4.0 is still a size.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("should be an integer")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("should be a number")
    return float(value)


def _option_name(value: Any) -> Any:
    # A bare option value that is also an op's name (`approx = tanh`) arrives as that op.
    if isinstance(value, dict) and set(value) <= {"op", "attrs"} and not value.get("attrs"):
        return value.get("op")
    return value


def Choice(*options: str) -> Any:
    """One of a few bare identifiers, e.g. `approx: Choice("none", "tanh")`."""
    return Annotated[Literal[options], BeforeValidator(_option_name)]


Int = Annotated[int, BeforeValidator(as_integer)]
PosInt = Annotated[Int, Field(gt=0)]
Float = Annotated[float, BeforeValidator(_number)]
Bool = Annotated[bool, Strict()]
AxisRef = Int | str  # an axis by position (may be negative) or by name
Probability = Annotated[Float, Field(ge=0.0, lt=1.0)]

FLOAT_DTYPES = ("f16", "bf16", "f32", "f64")


def set_by_compiler(**default: Any) -> Any:
    """An attribute the compiler fills in when it resolves a call, which users do not write
    (docs/ops.md leaves it out): `labels: list[str] | None = set_by_compiler(default=None)`."""
    return Field(**default, json_schema_extra={"set_by_compiler": True})


# ---------------------------------------------------------------------------- helpers


def numel(sizes: tuple[int, ...]) -> int:
    return math.prod(sizes)


def resolve_axis(what: str, x: TensorType, ref: int | str, arg: str = "axis",
                 ctx: InferContext | None = None) -> int:
    """An axis given by name or (negative) position, as a non-negative position in x. With
    the call's `ctx`, a plain name that names an axis of x is that axis even where the name
    is also bound to the axis's size (`x: [B, T=16, d]` binds T = 16; `axis = T` means T)."""
    written = ctx.hints.get(arg) if ctx is not None else None
    if written is not None:
        ref = written_axis(ctx, x, arg, ref)
    index = x.axis_index(ref)
    if index is not None:
        return index
    if isinstance(ref, str):
        raise OpError(f"{what}: {arg} = {ref} names no axis of {x}")
    if written is not None:  # a name holding a number: neither an axis name nor a position
        raise OpError(f"{what}: {arg} = {written} names no axis of {x}, and as a position "
                      f"({written} = {ref}) it is out of range ({x.rank} axes)")
    raise OpError(f"{what}: {arg} = {ref} is out of range for {x}, which has {x.rank} axes")


def axis_label(axis: Axis, index: int) -> str:
    """How a message names an axis: by name, else by its position."""
    return f"axis {axis.name}" if axis.name else f"axis {index}"


def extent(axis: Axis) -> str:
    """An axis's size in a message: a number, or `symbolic T`."""
    return str(axis.size) if axis.size is not None else f"symbolic {axis.name}"


def require_float(what: str, x: TensorType) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise OpError(f"{what} needs a float tensor, got {x.dtype} {x} (embed integer ids first)")


def require_rank(what: str, x: TensorType, rank: int, shape: str) -> None:
    if x.rank < rank:
        raise OpError(f"{what} needs a tensor of shape {shape}, got {x} ({x.rank} axes)")


def fixed_width(what: str, x: TensorType) -> int:
    """The size of x's last (channel) axis, which must be fixed."""
    return check_last_axis(x, what).size


def uniform(shape: tuple[int, ...], fan_in: int) -> ParamSpec:
    """nn.Linear / nn.Conv1d default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return ParamSpec(shape=shape, init="uniform", std=1.0 / math.sqrt(fan_in))


def normal(shape: tuple[int, ...], std: float = 0.02) -> ParamSpec:
    return ParamSpec(shape=shape, init="normal", std=std)


def operand(axis: Axis) -> str:
    """An axis as an operand in the name of a symbolic axis made from it: `(T+S)/2`."""
    if axis.size is not None:
        return str(axis.size)
    return f"({axis.name})" if any(c in axis.name for c in "+-*/") else axis.name


def new_axis(ctx: InferContext, attr: str, size: int) -> Axis:
    """A new axis sized by `attr`, named after the user's hyperparameter when it was one."""
    return Axis(name=ctx.axis_name(attr), size=size)


def written_axis(ctx: InferContext, x: TensorType, key: str, ref):
    """An axis argument as the user wrote it: a plain name that names an axis of x is that
    axis, even where the name is also bound to the axis's size (`x: [B, i=4, d]` binds i = 4)."""
    hint = ctx.hints.get(key)
    if hint is not None and not isinstance(ref, str) and x.axis_index(hint) is not None:
        return hint
    return ref
