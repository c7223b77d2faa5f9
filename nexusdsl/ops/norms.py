"""Normalisation over the last axis (family "core"): `layernorm` and `rmsnorm`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ops.attrs import (
    Bool,
    Float,
    fixed_width,
    numel,
    require_float,
)
from nexusdsl.ops.base import Op, OpAttrs, same_type_as
from nexusdsl.ops.traits import Traits


class LayerNorm(Op):
    """Layer normalisation over the last axis: `layernorm(x, eps = 1e-5)`, `bias = false`
    drops the shift (weight initialised to ones, bias to zeros, as nn.LayerNorm)."""

    name = "layernorm"
    traits = Traits(tokenwise=True)
    parameters = {"weight": "[d]", "bias": "[d] if bias"}

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
    traits = Traits(tokenwise=True)
    parameters = {"weight": "[d]"}

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
