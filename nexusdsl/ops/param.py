"""A free learned tensor (family "core"): `param([1, dim])`, a ViT's class token or a learned
position table, used where it is needed and broadcast over the batch there."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_serializer, model_validator

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import Float, PosInt
from nexusdsl.ops.base import Op, OpAttrs

# Each way to initialise, with its one setting (None: none) and that setting's default.
INITS: dict[str, tuple[str | None, float | None]] = {
    "normal": ("std", 0.02), "uniform": ("bound", None), "zeros": (None, None),
    "ones": (None, None)}


class Init(OpAttrs):
    """How `param` initialises its weight: N(0, std), U(-bound, bound), zeros or ones."""

    kind: Literal["normal", "uniform", "zeros", "ones"]
    std: Annotated[Float, Field(gt=0)] | None = None
    bound: Annotated[Float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _settings_of_the_kind(self):
        setting = INITS[self.kind][0]
        for other in ("std", "bound"):
            if other != setting and getattr(self, other) is not None:
                raise ValueError(f"{self.kind} takes no `{other}`")
        if setting is not None and getattr(self, setting) is None:
            raise ValueError(f"{self.kind}(...) needs `{setting}`: {self.kind}({setting} = ...)")
        return self

    @model_serializer(mode="wrap")
    def _only_given(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


def _init_value(value: Any) -> Any:
    """`zeros` (a bare name) or `normal(std = 0.01)` (a call, as {"fn", "args", "kwargs"}) as
    Init's fields, with the default of a setting left out; what the IR stores ({"kind": ...})
    passes through."""
    if isinstance(value, str):
        value = {"kind": value}
    elif isinstance(value, dict) and "fn" in value:
        value = _called(value["fn"], list(value.get("args") or []), dict(value.get("kwargs") or {}))
    if isinstance(value, dict) and value.get("kind") in INITS:
        setting, default = INITS[value["kind"]]
        if setting is not None and default is not None and setting not in value:
            value = {**value, setting: default}
    return value


def _called(name: str, args: list, kwargs: dict) -> dict:
    if name not in INITS or INITS[name][0] is None:
        raise ValueError(f"should be normal(std), uniform(bound), zeros or ones, got `{name}(...)`")
    setting = INITS[name][0]
    if len(args) > 1:
        raise ValueError(f"{name}(...) takes one setting, `{setting}`")
    if args and setting in kwargs:
        raise ValueError(f"{name}(...): `{setting}` is given twice")
    return {"kind": name, **({setting: args[0]} if args else {}), **kwargs}


def _sizes(value: Any) -> Any:
    """The sizes of a shape, in words a user reads: a symbolic axis arrives as its name (a
    table needs its size when it is made)."""
    if not isinstance(value, list):
        return value
    if not value:
        raise ValueError("should list at least one size, e.g. [1, dim]")
    for item in value:
        if isinstance(item, str):
            raise ValueError(f"should list fixed sizes (integers), but `{item}` has none")
        if isinstance(item, (int, float)) and not isinstance(item, bool) and item <= 0:
            raise ValueError(f"should list positive sizes, but one is {item:g}")
    return value


class Param(Op):
    """A learned tensor of the given shape, with no input and no batch axis:
    `cls = param([1, dim])` is [1, dim], `x + param([16, dim])` adds a learned table to
    every example of a batch (axes aligned from the right) and `concat(param([1, dim]), x,
    axis = 1)` puts a class token before each sequence (concat expands an operand of fewer
    axes over the leading ones). An axis sized by a plain hyperparameter name is named after
    it. `init = normal(std = 0.02)` (default), `uniform(bound)`, `zeros` or `ones`."""

    name = "param"
    inputs = ()
    parameters = {"weight": "[*shape]"}

    class Attrs(OpAttrs):
        shape: Annotated[list[PosInt], BeforeValidator(_sizes)]
        init: Annotated[Init, BeforeValidator(_init_value)] = Field(
            default={"fn": "normal", "kwargs": {"std": 0.02}}, validate_default=True,
            description="normal(std) | uniform(bound) | zeros | ones")

    def infer(self, ctx, inputs, attrs):
        axes = tuple(Axis(name=ctx.axis_name(f"shape.{i}"), size=n)
                     for i, n in enumerate(attrs.shape))
        return [TensorType(dtype="f32", axes=axes)]

    def params(self, ctx, inputs, attrs):
        init = attrs.init
        spread = {"normal": init.std, "uniform": init.bound}.get(init.kind)  # U(-bound, bound)
        settings = {"std": spread} if spread is not None else {}
        return {"weight": ParamSpec(shape=tuple(attrs.shape), init=init.kind, **settings)}

    def flops(self, inputs, outputs, attrs):
        return 0

    def bytes(self, inputs, outputs, attrs):
        return 0  # the cost model counts the parameter itself

    def kernels(self, inputs, attrs):
        return 0.2  # an attribute read, no kernel

    def lower(self, attrs):
        return lambda m: m.weight
