"""Activations (family "activations"): parameter-free functions applied token by token,
written `x |> gelu` or `gelu(x, approx = tanh)`.

Each op's `torch_fn(attrs)` builds the plain tensor function; `partial` reuses it to apply
an elementwise activation to some of the channels only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationError

from nexusdsl.ops.attrs import (
    AxisRef,
    Choice,
    Float,
    fixed_width,
    numel,
    require_float,
    resolve_axis,
)
from nexusdsl.ops.base import REGISTRY, Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.traits import Traits


class Activation(Op):
    """A float -> float function that keeps the shape, modality and codes of its input."""

    family = "activations"
    traits = Traits(activation=True, elementwise=True, tokenwise=True)

    class Attrs(OpAttrs):
        pass

    def infer(self, ctx, inputs, attrs):
        require_float(self.name, inputs[0])
        self.check(inputs[0], attrs)
        return [same_type_as(inputs[0])]

    def check(self, x, attrs) -> None:
        """Extra shape or attribute rules."""

    def torch_fn(self, attrs) -> Callable:
        raise NotImplementedError

    def lower(self, attrs):
        fn = self.torch_fn(attrs)
        return lambda m, x: fn(x)


# Activations that combine channels of a token (sort2 pairs them, softmax and modnorm
# normalise over them): still token by token, but not element by element.
NOT_ELEMENTWISE = Traits(activation=True, tokenwise=True)


class ReLU(Activation):
    """`x |> relu`: max(x, 0)."""

    name = "relu"

    def torch_fn(self, attrs):
        import torch

        return torch.relu


class LeakyReLU(Activation):
    """`leaky_relu(x, alpha = 0.25)`: x where x >= 0, alpha * x elsewhere."""

    name = "leaky_relu"

    class Attrs(OpAttrs):
        alpha: Float = 0.25

    def torch_fn(self, attrs):
        import torch.nn.functional as F

        return lambda x: F.leaky_relu(x, attrs.alpha)


class HardTanh(Activation):
    """`hardtanh(x, min = -1.0, max = 1.0)`: x clipped to [min, max]."""

    name = "hardtanh"

    class Attrs(OpAttrs):
        min: Float = -1.0
        max: Float = 1.0

    def check(self, x, attrs):
        if attrs.min >= attrs.max:
            raise OpError(f"hardtanh: min = {attrs.min} must be below max = {attrs.max}")

    def torch_fn(self, attrs):
        import torch.nn.functional as F

        return lambda x: F.hardtanh(x, attrs.min, attrs.max)


class ELU(Activation):
    """`elu(x, alpha = 1.0)`: x where x > 0, alpha * (exp(x) - 1) elsewhere."""

    name = "elu"

    class Attrs(OpAttrs):
        alpha: Float = 1.0

    def torch_fn(self, attrs):
        import torch.nn.functional as F

        return lambda x: F.elu(x, attrs.alpha)


class MELU(Activation):
    """`x |> melu`: x * exp(min(x, 0)), smooth and non-monotonic below zero."""

    name = "melu"

    def torch_fn(self, attrs):
        import torch

        return lambda x: x * torch.exp(torch.clamp(x, max=0.0))


class GELU(Activation):
    """`x |> gelu` (exact, with erf) or `gelu(x, approx = tanh)` (GPT-2's approximation)."""

    name = "gelu"

    class Attrs(OpAttrs):
        approx: Choice("none", "tanh") = "none"

    def torch_fn(self, attrs):
        import torch.nn.functional as F

        return lambda x: F.gelu(x, approximate=attrs.approx)

    def lower_portable(self, attrs):
        # torch-mlir's linalg lowering of aten.gelu(approximate="tanh") is off by up to 5e-5
        # (measured on [-6, 6]); the formula written out goes through its exact tanh.
        if attrs.approx != "tanh":
            return self.lower(attrs)
        import torch

        c = math.sqrt(2.0 / math.pi)
        return lambda m, x: 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * x * x * x)))


class SiLU(Activation):
    """`x |> silu`: x * sigmoid(x) (swish)."""

    name = "silu"

    def torch_fn(self, attrs):
        import torch.nn.functional as F

        return F.silu


class Tanh(Activation):
    """`x |> tanh`."""

    name = "tanh"

    def torch_fn(self, attrs):
        import torch

        return torch.tanh


class Sigmoid(Activation):
    """`x |> sigmoid`."""

    name = "sigmoid"

    def torch_fn(self, attrs):
        import torch

        return torch.sigmoid


class Sort2(Activation):
    """`x |> sort2`: GroupSort with groups of two (Anil et al. 2019). Each adjacent pair of
    channels (x[2i], x[2i+1]) becomes (min, max); a gradient-norm-preserving activation.
    The last axis must have an even size."""

    name = "sort2"
    traits = NOT_ELEMENTWISE

    def check(self, x, attrs):
        width = fixed_width("sort2", x)
        if width % 2:
            raise OpError(f"sort2: pairs up channels, but the last axis {x.axes[-1]} has an "
                          f"odd size {width}", about=(0,))

    def torch_fn(self, attrs):
        import torch

        def sort2(x):
            pairs = x.unflatten(-1, (-1, 2))  # (*, C/2, 2)
            low, high = pairs.amin(-1), pairs.amax(-1)
            return torch.stack((low, high), dim=-1).flatten(-2)

        return sort2


class ModNorm(Activation):
    """`x |> modnorm`: x divided by its root-mean-square over the last axis,
    x / sqrt(mean(x^2) + 1e-6). A parameter-free normalising activation: every token comes
    out with unit RMS (an rmsnorm without its learned gain)."""

    name = "modnorm"
    traits = NOT_ELEMENTWISE
    EPS: ClassVar[float] = 1e-6

    def check(self, x, attrs):
        fixed_width("modnorm", x)

    def torch_fn(self, attrs):
        import torch.nn.functional as F

        return lambda x: F.rms_norm(x, (x.shape[-1],), None, self.EPS)


class Softmax(Activation):
    """`softmax(x)` over the last axis, or over another: `softmax(x, axis = T)`."""

    name = "softmax"
    traits = NOT_ELEMENTWISE

    class Attrs(OpAttrs):
        axis: AxisRef = -1

    def resolve(self, ctx, inputs, attrs):
        return attrs.model_copy(update={"axis": resolve_axis("softmax", inputs[0], attrs.axis, ctx=ctx)})

    def flops(self, inputs, outputs, attrs):
        return 3 * numel(outputs[0])

    def torch_fn(self, attrs):
        return lambda x: x.softmax(dim=attrs.axis)

    def decode(self, attrs, inputs):
        from nexusdsl.ops.decode import TOKENWISE

        # over the channels a position is alone; over the sequence it needs the future
        return TOKENWISE if attrs.axis == inputs[0].rank - 1 else None


class Softcap(Activation):
    """`softcap(logits, 30.0)`: c * tanh(x / c), which keeps every value inside (-c, c) and
    leaves small ones almost unchanged (Gemma 2's final logits, `final_logit_softcapping`).
    `attention(..., softcap = c)` caps the attention scores the same way."""

    name = "softcap"

    class Attrs(OpAttrs):
        c: Annotated[Float, Field(gt=0.0)]  # the cap: outputs stay in (-c, c)

    def flops(self, inputs, outputs, attrs):
        return 3 * numel(outputs[0])  # a division, a tanh and a multiplication

    def torch_fn(self, attrs):
        import torch

        c = attrs.c
        return lambda x: c * torch.tanh(x / c)


def _activation_spec(act: Any) -> tuple[Activation, OpAttrs]:
    """`act` as an op value {"op": "gelu", "attrs": {...}} or a bare name, validated."""
    name, given = (act, {}) if isinstance(act, str) else (act.get("op"), act.get("attrs") or {})
    op = REGISTRY.get(name) if isinstance(name, str) else None
    if not isinstance(op, Activation) or not op.traits.elementwise:
        raise OpError(f"partial: act = {name} is not an elementwise activation (use one of "
                      f"{', '.join(sorted(elementwise_activations()))})")
    try:
        return op, op.Attrs(**given)
    except ValidationError as err:
        raise OpError(f"partial: act = {name}: {err.errors()[0]['msg']}") from None


def elementwise_activations() -> list[str]:
    return [n for n, op in REGISTRY.items() if isinstance(op, Activation) and op.traits.elementwise]


class Partial(Activation):
    """`partial(x, act = gelu, fraction = 0.75)`: applies an elementwise activation to the
    first floor(fraction * C) channels of the last axis and leaves the others unchanged
    (`act` may carry settings: `partial(x, gelu(approx = tanh), 0.5)`)."""

    name = "partial"
    traits = NOT_ELEMENTWISE

    class Attrs(OpAttrs):
        act: str | dict[str, Any] = Field(description="an elementwise activation, with its "
                                          "settings if any: `gelu(approx = tanh)`")
        fraction: Annotated[Float, Field(gt=0.0, le=1.0)] = 0.75

    def resolve(self, ctx, inputs, attrs):
        # Normalise `act` to {"op": name, "attrs": validated attrs} once, here.
        op, act_attrs = _activation_spec(attrs.act)
        act = {"op": op.name, "attrs": act_attrs.model_dump(mode="json")}
        return attrs.model_copy(update={"act": act})

    def check(self, x, attrs):
        width = fixed_width("partial", x)
        if active_channels(attrs.fraction, width) == 0:
            raise OpError(f"partial: fraction = {attrs.fraction} of the {width} channels of "
                          f"axis {x.axes[-1]} is no channel at all")

    def torch_fn(self, attrs):
        import torch

        op, act_attrs = _activation_spec(attrs.act)
        fn = op.torch_fn(act_attrs)

        def partial(x):
            k = active_channels(attrs.fraction, x.shape[-1])
            return torch.cat((fn(x[..., :k]), x[..., k:]), dim=-1)

        return partial


def active_channels(fraction: float, width: int) -> int:
    # The epsilon keeps 0.57 * 100 (56.999...) at 57 channels, as a user would expect.
    return math.floor(fraction * width + 1e-9)
