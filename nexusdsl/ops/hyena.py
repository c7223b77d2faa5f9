"""The Hyena operator (family "mixers"), after Poli et al. 2023, "Hyena Hierarchy":

    x = x + hyena(rmsnorm(x), order = 2, filter = 64, causal = true)

For `order = N` on `[*, T, d]` tokens:

1. a projection to N + 1 streams `x^1 .. x^N, v` (`in_proj`, [(N+1)d, d]), each smoothed by a
   short depthwise convolution (`short`, kernel 3, causal when the operator is);
2. N implicit long filters `h^n` ([d, T] each), made from positional features of the positions
   (t, and cos / sin of `features // 2` frequencies) by a small MLP with sine activations
   (`filter.linear_0..2`, `filter.out`; the sine frequency `filter.freq` starts at `omega`),
   multiplied by an exponentially decaying window (channel c decays to 1e-2 between 30% and 150%
   of `max` positions, fast channels first);
3. the recurrence `z^1 = v; z^{n+1} = x^n * (h^n conv z^n + skip^n * z^n)`, a long convolution
   over the whole sequence followed by element-wise, data-controlled gating;
4. an output projection (`out_proj`, [d, d]).

The long convolution is computed by FFT (O(T log T)) with `impl = fft` (default); `impl = direct`
runs it as a depthwise convolution with a kernel of T taps (O(T^2), static shapes, no complex
numbers) and `impl = dft` as real-DFT matmuls (O(T^2), matmuls only). All three give the same
numbers. The MLIR and IREE targets always use an MLIR-friendly form (`lower_portable`): `direct`
unless `impl = dft` is asked for. With `causal = false` the filters reach both ways (a second set
of filters for the past-to-future direction, run on the reversed sequence).

`max` sets the scale of the positional features and of the decay window (the paper's `l_max`):
by default the sequence length when it is fixed, else 2048. Longer sequences run too; the
features extend smoothly past `max` and the decay window keeps shrinking.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ops.attrs import (
    Bool,
    Choice,
    Float,
    PosInt,
    fixed_width,
    normal,
    numel,
    require_float,
    require_rank,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as

DEFAULT_MAX = 2048
MLP_DEPTH = 3  # sine-activated linear layers of the filter MLP before its output layer


def filter_channels(attrs, d: int) -> int:
    """Channels of the filter MLP's output: one filter per gate and channel (two directions
    when not causal)."""
    return attrs.order * d * (1 if attrs.causal else 2)


class Hyena(Op):
    """`hyena(x, order = 2, filter = 64, causal = true)`: the Hyena operator on `[*, T, d]`
    tokens (see the module docstring). `filter` is the width of the filter MLP, `features` the
    number of positional features it reads (odd: t, then cos and sin pairs), `short` the kernel
    of the short convolution, `omega` the starting sine frequency, `max` the length the features
    and the decay are laid over, `dropout` a dropout after each gate, `bias` the projections'
    biases, `impl = fft | direct | dft` how the long convolution is computed."""

    name = "hyena"
    family = "mixers"
    parameters = {
        "in_proj.weight": "[(order + 1) * d, d]", "in_proj.bias": "[(order + 1) * d] if bias",
        "short.weight": "[(order + 1) * d, 1, short]", "short.bias": "[(order + 1) * d]",
        "filter.linear_0.weight": "[filter, features]", "filter.linear_0.bias": "[filter]",
        "filter.linear_<i>.weight": "[filter, filter] for i = 1, 2",
        "filter.linear_<i>.bias": "[filter] for i = 1, 2",
        "filter.freq": "[filter] (starts at omega)",
        "filter.out.weight": "[order * d * directions, filter] (directions: 1 if causal, else 2)",
        "filter.skip": "[order, d]",
        "out_proj.weight": "[d, d]", "out_proj.bias": "[d] if bias"}

    class Attrs(OpAttrs):
        order: PosInt = 2
        filter: PosInt = 64
        causal: Bool = True
        max: PosInt | None = None
        features: PosInt = 33
        short: PosInt = 3
        omega: Annotated[Float, Field(gt=0)] = 14.0
        dropout: Annotated[Float, Field(ge=0.0, lt=1.0)] = 0.0
        bias: Bool = True
        impl: Choice("fft", "direct", "dft") = "fft"

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("hyena", x, 2, "[*, T, d]")
        if attrs.features < 3 or attrs.features % 2 == 0:
            raise OpError(f"hyena: features = {attrs.features} must be odd and at least 3 (the "
                          "position t, then a cosine and a sine per frequency)")
        if attrs.max is None:
            seq = x.axes[-2].size
            return attrs.model_copy(update={"max": seq if seq is not None else DEFAULT_MAX})
        return attrs

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("hyena", x)
        fixed_width("hyena", x)
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d, n, f = inputs[0].axes[-1].size, attrs.order, attrs.filter
        inner = (n + 1) * d
        specs = {"in_proj.weight": uniform((inner, d), d),
                 "short.weight": uniform((inner, 1, attrs.short), attrs.short)}
        if attrs.bias:
            specs["in_proj.bias"] = uniform((inner,), d)
        specs["short.bias"] = uniform((inner,), attrs.short)
        widths = [attrs.features] + [f] * MLP_DEPTH
        for i, (fan_in, out) in enumerate(zip(widths, widths[1:])):
            specs[f"filter.linear_{i}.weight"] = uniform((out, fan_in), fan_in)
            specs[f"filter.linear_{i}.bias"] = uniform((out,), fan_in)
        specs["filter.freq"] = ParamSpec(shape=(f,), init="ones")  # set to omega by `finish`
        specs["filter.out.weight"] = uniform((filter_channels(attrs, d), f), f)
        specs["filter.skip"] = normal((n, d), 1.0)
        specs["out_proj.weight"] = uniform((d, d), d)
        if attrs.bias:
            specs["out_proj.bias"] = uniform((d,), d)
        return specs

    def flops(self, inputs, outputs, attrs):
        sizes = inputs[0]
        T, d, n = sizes[-2], sizes[-1], attrs.order
        batch = numel(sizes) // (T * d)
        tokens = batch * T
        projections = 2 * tokens * d * (n + 1) * d + 2 * tokens * d * d
        short = 2 * tokens * (n + 1) * d * attrs.short
        f = attrs.filter
        mlp = 2 * T * (attrs.features * f + (MLP_DEPTH - 1) * f * f
                       + f * filter_channels(attrs, d))
        directions = 1 if attrs.causal else 2
        convs = batch * n * d * directions * _long_conv_flops(T, attrs.impl)
        return projections + short + mlp + convs + 2 * tokens * n * d

    def finish(self, module, attrs, node):
        import torch

        freq = module.filter.freq
        if freq.device.type != "meta":
            with torch.no_grad():
                freq.fill_(attrs.omega)

    def lower(self, attrs):
        from nexusdsl.ops.hyena_torch import hyena_forward

        return hyena_forward(attrs, attrs.impl)

    def lower_portable(self, attrs):
        from nexusdsl.ops.hyena_torch import hyena_forward

        return hyena_forward(attrs, "dft" if attrs.impl == "dft" else "direct")

    def decode(self, attrs, inputs):
        """Causal Hyena keeps its input history (hyena_torch.HyenaDecode); a two-sided one
        reads later positions and cannot decode."""
        from nexusdsl.ops.hyena_torch import HyenaDecode

        return HyenaDecode(attrs) if attrs.causal and inputs[0].rank == 3 else None


def _long_conv_flops(T: int, impl: str) -> int:
    """FLOPs of one channel's long convolution over T positions."""
    if impl == "fft":  # three real FFTs of 2T points and a complex product
        return int(3 * 2.5 * 2 * T * math.log2(2 * T) + 6 * (T + 1))
    if impl == "dft":  # two forward transforms and one inverse as (T x T+1) matmuls
        return 3 * 2 * 2 * T * (T + 1) + 6 * (T + 1)
    return T * (T + 1)  # direct: every output reads every earlier input
