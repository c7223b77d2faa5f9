"""Normalisation over the last axis (family "core"): `layernorm` and `rmsnorm`. The torch
helpers below take tensors and call only their methods: this module never imports torch."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_serializer

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
    `x |> rmsnorm`, `rmsnorm(x, eps = 1e-5)`: x / sqrt(mean(x^2) + eps) * weight, the weight
    initialised to ones (as nn.RMSNorm and Llama's RMSNorm); `rmsnorm(x, offset = 1.0)`
    scales by offset + weight instead, the weight initialised to zeros when offset = 1
    (Gemma's RMSNorm: x̂ * (1 + w)).

    Half-precision inputs are normalised in float32 and cast back as transformers does:
    Llama's order (cast, then times the weight) without offset, Gemma's (times offset +
    weight, then cast) with one."""

    name = "rmsnorm"
    traits = Traits(tokenwise=True)
    parameters = {"weight": "[d]"}

    class Attrs(OpAttrs):
        eps: Annotated[Float, Field(gt=0)] = 1e-6
        offset: Float = 0.0

        @model_serializer(mode="wrap")
        def _offset_when_given(self, handler):
            # without an offset, nodes print and hash as before offsets existed
            data = handler(self)
            return {k: v for k, v in data.items() if k != "offset" or v != 0.0}

    def infer(self, ctx, inputs, attrs):
        require_float("rmsnorm", inputs[0])
        fixed_width("rmsnorm", inputs[0])
        return [same_type_as(inputs[0])]

    def params(self, ctx, inputs, attrs):
        return {"weight": ParamSpec(shape=(inputs[0].axes[-1].size,),
                                    init=gain_init(attrs.offset))}

    def flops(self, inputs, outputs, attrs):
        return 4 * numel(inputs[0])

    def lower(self, attrs):
        import torch.nn.functional as F

        eps, offset = attrs.eps, attrs.offset

        def rmsnorm(m, x):
            if offset or is_half(x):
                return rms_norm(x, m.weight, eps, offset)
            return F.rms_norm(x, (x.shape[-1],), m.weight, eps)  # the same values, one call

        return rmsnorm


def gain_init(offset: float) -> str:
    """A gain scaling by (offset + weight) starts at 1 with offset 1 (zeros), else at ones."""
    return "zeros" if offset == 1 else "ones"


def is_half(x) -> bool:
    return x.dtype.itemsize == 2 and x.dtype.is_floating_point


def rms_norm(x, weight, eps: float, offset: float = 0.0):
    """RMSNorm in transformers' order of operations and casts (LlamaRMSNorm without offset,
    Gemma3RMSNorm with one): half precision is widened to float32 for the statistics."""
    wide = x.float() if is_half(x) else x
    normed = wide * (wide.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    if offset:
        return (normed * (offset + weight.to(wide.dtype))).to(x.dtype)
    return weight * normed.to(x.dtype)
