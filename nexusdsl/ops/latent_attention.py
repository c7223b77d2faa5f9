"""DeepSeek's multi-head latent attention (family "mixers"): queries, keys and values made from
small latent projections of each token, as DeepSeek-V2 and V3 do.

    y = x + latent_attention(rmsnorm(x), heads = 128, q_rank = 1536, kv_rank = 512,
                             nope_dim = 128, rope_dim = 64, v_dim = 128,
                             rope = rope(interleaved = true, scaling = yarn(...)))

The torch code is in `latent_attention_torch.py`, imported only when lowering.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import TensorType
from nexusdsl.ops.attrs import (
    Bool,
    Float,
    Int,
    PosInt,
    fixed_width,
    numel,
    require_float,
    require_rank,
    set_by_compiler,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.rotary import RopeSetting, check_rotary_width
from nexusdsl.ops.traits import Traits

NonNegativeInt = Annotated[Int, Field(ge=0)]


class LatentAttention(Op):
    """Multi-head latent attention (DeepSeek-V2, V3): `latent_attention(x, heads = 4,
    q_rank = 16, kv_rank = 8, nope_dim = 8, rope_dim = 4, v_dim = 8, causal = true)`.
    [*, T, d] -> [*, T, d].

    Queries come from a rank-`q_rank` latent of each token (`q_a`, RMS-normalised by
    `q_a_norm`, then `q_b`; with `q_rank = 0` straight from x through `q`); keys and values
    from one rank-`kv_rank` latent (`kv_a`, normalised by `kv_a_norm`, then `kv_b`), which is
    all a decoder would cache. Each head's query and key are `nope_dim` channels without
    positions followed by `rope_dim` rotary channels; the rotary key part comes straight from
    x (`kv_a`'s last rope_dim rows) and is shared by every head. Values have `v_dim`
    channels. `rope = rope(theta, interleaved, scaling)` sets the rotary positions (DeepSeek's
    checkpoints rotate interleaved pairs: `interleaved = true`); the score scale is
    (nope_dim + rope_dim) ** -0.5, times yarn's mscale(factor, mscale_all_dim) squared when
    the scaling is yarn with `mscale_all_dim` (transformers' `yarn_apply_mscale`). `eps` is
    the two latent norms' epsilon. `mask = m` (bool [B, T], true for real tokens) hides
    padding keys and gives each row its own positions (cumsum of the mask), so a left-padded
    row computes what its unpadded sequence does. One scaled_dot_product_attention call.

    Parameters (no biases, as DeepSeek): `q_a` [q_rank, d], `q_a_norm` [q_rank], `q_b`
    [heads (nope_dim + rope_dim), q_rank] (or `q` [heads (nope_dim + rope_dim), d] when
    q_rank = 0), `kv_a` [kv_rank + rope_dim, d] (latent rows first, then the rotary key
    rows), `kv_a_norm` [kv_rank], `kv_b` [heads (nope_dim + v_dim), kv_rank] (per head: its
    nope_dim key rows, then its v_dim value rows), `out` [d, heads v_dim]; transformers'
    `q_a_proj`, `q_a_layernorm`, `q_b_proj`, `q_proj`, `kv_a_proj_with_mqa`,
    `kv_a_layernorm`, `kv_b_proj` and `o_proj`."""

    name = "latent_attention"
    family = "mixers"
    optional_inputs = ("mask",)
    traits = Traits(projection_weights=True, decode_state="the key/value latents and rotary keys")
    parameters = {
        "q_a.weight": "[q_rank, d] if q_rank",
        "q_a_norm.weight": "[q_rank] if q_rank",
        "q_b.weight": "[heads * (nope_dim + rope_dim), q_rank] if q_rank",
        "q.weight": "[heads * (nope_dim + rope_dim), d] if q_rank = 0",
        "kv_a.weight": "[kv_rank + rope_dim, d]",
        "kv_a_norm.weight": "[kv_rank]",
        "kv_b.weight": "[heads * (nope_dim + v_dim), kv_rank]",
        "out.weight": "[d, heads * v_dim]",
    }

    layout = """Layout: as transformers' DeepseekV3Attention: `q_b` rows are each head's nope_dim
    channels then its rope_dim channels, heads in order; `kv_a` rows are the kv_rank latent
    channels then the rope_dim shared key channels; `kv_b` rows are each head's nope_dim key
    channels then its v_dim value channels."""

    class Attrs(OpAttrs):
        heads: PosInt
        q_rank: NonNegativeInt
        kv_rank: PosInt
        nope_dim: NonNegativeInt
        rope_dim: PosInt
        v_dim: PosInt
        # `rope()`, the rotary defaults (written as the call, so docs/ops.md shows it so)
        rope: RopeSetting = Field(default_factory=lambda: {"fn": "rope", "args": [], "kwargs": {}},
                                  validate_default=True)
        causal: Bool = True
        eps: Annotated[Float, Field(gt=0)] = 1e-6
        given: list[Literal["mask"]] = set_by_compiler(default=[])

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("latent_attention", x)
        require_rank("latent_attention", x, 2, "[*, T, d]")
        fixed_width("latent_attention", x)
        if attrs.rope is None:
            raise OpError("latent_attention: its rope_dim channels are rotary; give rope = "
                          "rope(...) (or leave it out for the defaults)")
        if attrs.rope.fraction != 1:
            raise OpError("latent_attention rotates all rope_dim channels: leave `fraction` "
                          "out of its rope(...)")
        check_rotary_width(attrs.rope, attrs.rope_dim, "latent_attention")
        if len(attrs.given) != len(inputs) - 1:
            raise OpError("latent_attention: `given` is set by the compiler from `mask`; "
                          "leave it out")
        if attrs.given:
            _check_mask(x, inputs[1])
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d = inputs[0].axes[-1].size
        qk = attrs.heads * (attrs.nope_dim + attrs.rope_dim)
        if attrs.q_rank:
            specs = {"q_a.weight": uniform((attrs.q_rank, d), d),
                     "q_a_norm.weight": ParamSpec(shape=(attrs.q_rank,), init="ones"),
                     "q_b.weight": uniform((qk, attrs.q_rank), attrs.q_rank)}
        else:
            specs = {"q.weight": uniform((qk, d), d)}
        inner = attrs.heads * attrs.v_dim
        return specs | {
            "kv_a.weight": uniform((attrs.kv_rank + attrs.rope_dim, d), d),
            "kv_a_norm.weight": ParamSpec(shape=(attrs.kv_rank,), init="ones"),
            "kv_b.weight": uniform((attrs.heads * (attrs.nope_dim + attrs.v_dim), attrs.kv_rank),
                                   attrs.kv_rank),
            "out.weight": uniform((d, inner), inner),
        }

    def flops(self, inputs, outputs, attrs):
        sizes = inputs[0]
        T, d = sizes[-2], sizes[-1]
        batch = numel(sizes) // (T * d)
        h, qk = attrs.heads, attrs.nope_dim + attrs.rope_dim
        q = (2 * d * attrs.q_rank + 2 * attrs.q_rank * h * qk) if attrs.q_rank else 2 * d * h * qk
        kv = 2 * d * (attrs.kv_rank + attrs.rope_dim) + 2 * attrs.kv_rank * h * (
            attrs.nope_dim + attrs.v_dim)
        out = 2 * h * attrs.v_dim * d
        mixing = 2 * T * h * (qk + attrs.v_dim) // (2 if attrs.causal else 1)  # per query
        return batch * T * (q + kv + out + mixing)

    def decode(self, attrs, inputs):
        from nexusdsl.ops.latent_attention_torch import LatentDecode

        return LatentDecode(attrs) if attrs.causal else None

    def lower(self, attrs):
        from nexusdsl.ops.latent_attention_torch import latent_attention_forward

        return latent_attention_forward(attrs)


def _check_mask(x: TensorType, mask: TensorType) -> None:
    want = x.axes[:-1]
    if mask.dtype != "bool":
        raise OpError(f"latent_attention: mask must be bool (true for real tokens), got "
                      f"{mask.dtype} {mask}; declare it `input mask: bool[B, T]`")
    if mask.rank != len(want) or not all(a.same_extent(b) for a, b in zip(mask.axes, want)):
        raise OpError(f"latent_attention: mask {mask} must have the axes of the tokens "
                      f"[{', '.join(map(str, want))}]: one flag per token")
