"""Sequence mixers (family "mixers"): ops that let tokens exchange information."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_serializer

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import TensorType
from nexusdsl.ops.attrs import (
    AxisRef,
    Bool,
    Float,
    Int,
    PosInt,
    Probability,
    axis_label,
    fixed_width,
    numel,
    require_float,
    require_rank,
    resolve_axis,
    set_by_compiler,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.rotary import RopeSetting, check_rotary_width
from nexusdsl.ops.traits import Traits


class QKNorm(OpAttrs):
    """`qk_norm = rmsnorm(eps = 1e-6)`: an RMSNorm of every query and key head (over its
    head_dim channels) before the rotary embedding; `offset = 1` scales by 1 + weight."""

    eps: Annotated[Float, Field(gt=0)] = 1e-6
    offset: Float = 0.0


def _qk_norm(value: Any) -> Any:
    # `qk_norm = rmsnorm` arrives as the op's name, `rmsnorm(eps = 1e-5)` as {"op", "attrs"}
    if value is None or value is False or value == "none":
        return None
    if value == "rmsnorm":
        return {}
    if isinstance(value, dict) and value.get("op") == "rmsnorm":
        return dict(value.get("attrs") or {})
    if isinstance(value, dict) and ("op" in value or "fn" in value):
        raise ValueError(f"should be rmsnorm(...) or none, got `{value.get('op') or value.get('fn')}`")
    return value


# Attributes beyond the original five are left out of the IR when at their defaults, so that
# plain attention prints, hashes and checkpoints exactly as before they existed.
_PLAIN = {"kv_heads": None, "head_dim": None, "rope": None, "qk_norm": None, "window": 0,
          "softcap": 0.0, "scale": None, "alibi": False, "given": []}

# Tensors `attention` takes by keyword besides x, in the order the node lists them.
OPTIONAL_TENSORS = ("kv", "mask", "position_bias")


class Attention(Op):
    """Multi-head attention over the sequence axis of `[*, T, d]` tokens:
    `x + attention(rmsnorm(x), heads = 4, causal = true)`.

    The attention of today's open-weight models is this one op, set by keywords:
    `kv_heads` (grouped-query attention: kv_heads divides heads), `head_dim` (default d /
    heads), `rope = true | rope(theta, fraction, interleaved, scaling = linear(factor) |
    llama3(factor, low, high, original) | yarn(factor, original, ...))` (rotary positions),
    `qk_norm = rmsnorm(eps, offset)` (each query and key head normalised), `window = w` (a
    query sees the w keys up to itself; 0: all), `softcap = c` (scores c * tanh(s / c)),
    `scale` (of the scores; default head_dim ** -0.5), `alibi = true` (linear distance
    biases), `mask = m` (a bool [B, S] input: true for the keys that are real tokens),
    `kv = y` (cross-attention: keys and values from y [B, S, e]) and `position_bias = b` (an
    additive [heads, T, S] or [B, heads, T, S] bias, from `relative_position`).
    `bias = qkv` puts biases on the q, k, v projections only.

    With `axis = i` it attends along that axis instead, every other axis but the channels
    being batch: `attention(g, axis = i, heads = 4)` on a `layout` grid.

    Parameters: self-attention fuses q, k, v in `qkv` [(heads + 2 kv_heads) head_dim, d]
    (rows: the q heads, then the k heads, then the v heads, each head's head_dim rows
    together); cross-attention has `q` [heads head_dim, d] and `kv` [2 kv_heads head_dim, e]
    (k heads, then v heads); `out` [d, heads head_dim]; `q_norm` and `k_norm` [head_dim] with
    qk_norm. `dropout` applies to the attention weights while training."""

    name = "attention"
    family = "mixers"
    optional_inputs = OPTIONAL_TENSORS
    traits = Traits(projection_weights=True, decode_state="keys and values")
    # h: head_dim or d // heads; g: kv_heads or heads (the defaults)
    parameters = {
        "qkv.weight": "[(heads + 2 * (kv_heads or heads)) * (head_dim or d // heads), d] "
                      "(self-attention)",
        "qkv.bias": "[(heads + 2 * (kv_heads or heads)) * (head_dim or d // heads)] if bias "
                    "(true or qkv), self-attention",
        "q.weight": "[heads * (head_dim or d // heads), d] (cross-attention: kv = y)",
        "q.bias": "[heads * (head_dim or d // heads)] if bias, cross-attention",
        "kv.weight": "[2 * (kv_heads or heads) * (head_dim or d // heads), e] (cross-attention; "
                     "e is y's width)",
        "kv.bias": "[2 * (kv_heads or heads) * (head_dim or d // heads)] if bias, cross-attention",
        "out.weight": "[d, heads * (head_dim or d // heads)]",
        "out.bias": "[d] if bias = true",
        "q_norm.weight": "[head_dim or d // heads] if qk_norm",
        "k_norm.weight": "[head_dim or d // heads] if qk_norm",
    }

    layout = """Layout: `qkv.weight` stacks the rows of every query head, then every key head, then
    every value head (each head's head_dim rows together, heads in order): rows [0, heads h)
    project the queries, [heads h, (heads + kv_heads) h) the keys, the rest the values
    (transformers' q_proj, k_proj and v_proj concatenated; GPT-2's c_attn transposed).
    Cross-attention's `kv.weight` is k_proj's rows then v_proj's. Query head i uses key/value
    head i // (heads / kv_heads). `out.weight`'s columns are the heads' outputs in head order
    (o_proj). Rotary pairs are channels (j, j + rot / 2) of each head (transformers' layout;
    `interleaved = true`: (2j, 2j + 1))."""

    class Attrs(OpAttrs):
        heads: PosInt
        causal: Bool = False
        axis: AxisRef | None = None
        bias: Bool | Literal["qkv"] = True
        dropout: Probability = 0.0
        kv_heads: PosInt | None = None
        head_dim: PosInt | None = None
        rope: RopeSetting = None
        qk_norm: Annotated[QKNorm | None, BeforeValidator(_qk_norm)] = None
        window: Annotated[Int, Field(ge=0)] = 0
        softcap: Annotated[Float, Field(ge=0)] = 0.0
        scale: Annotated[Float, Field(gt=0)] | None = None
        alibi: Bool = False
        given: list[Literal["kv", "mask", "position_bias"]] = set_by_compiler(default=[])

        @model_serializer(mode="wrap")
        def _plain_when_defaults(self, handler):
            data = handler(self)
            return {k: v for k, v in data.items() if k not in _PLAIN or v != _PLAIN[k]}

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("attention", x, 2, "[*, T, d]")
        if attrs.axis is None:
            return attrs
        if attrs.given or attrs.rope or attrs.window or attrs.alibi:
            raise OpError("attention: `axis` attends along a grid axis; it takes no kv, mask, "
                          "position_bias, rope, window or alibi")
        axis = resolve_axis("attention", x, attrs.axis, ctx=ctx)
        if axis == x.rank - 1:
            raise OpError(f"attention: {axis_label(x.axes[-1], axis)} holds the channels; "
                          "attend along another axis")
        return attrs.model_copy(update={"axis": axis})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("attention", x)
        width = fixed_width("attention", x)
        shape = attention_shape(attrs, width, x.axes[-1])
        check_rotary_width(attrs.rope, shape.head_dim, "attention")
        if len(attrs.given) != len(inputs) - 1 or len(set(attrs.given)) != len(attrs.given):
            raise OpError("attention: `given` is set by the compiler from the tensors passed "
                          "as kv, mask and position_bias; leave it out")
        extra = dict(zip(attrs.given, inputs[1:]))
        keys = _check_kv(x, extra.get("kv"))
        if "mask" in extra:
            _check_mask(keys, extra["mask"], cross="kv" in extra)
        if "position_bias" in extra:
            _check_bias(x, keys, extra["position_bias"], attrs.heads)
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d = inputs[0].axes[-1].size
        s = attention_shape(attrs, d)
        inner, kv_rows = attrs.heads * s.head_dim, 2 * s.kv_heads * s.head_dim
        if "kv" in attrs.given:
            e = inputs[1 + attrs.given.index("kv")].axes[-1].size
            specs = {"q.weight": uniform((inner, d), d), "kv.weight": uniform((kv_rows, e), e)}
            if attrs.bias:
                specs |= {"q.bias": uniform((inner,), d), "kv.bias": uniform((kv_rows,), e)}
        else:
            specs = {"qkv.weight": uniform((inner + kv_rows, d), d)}
            if attrs.bias:
                specs["qkv.bias"] = uniform((inner + kv_rows,), d)
        specs["out.weight"] = uniform((d, inner), inner)
        if attrs.bias is True:
            specs["out.bias"] = uniform((d,), inner)
        if attrs.qk_norm is not None:
            init = "zeros" if attrs.qk_norm.offset == 1 else "ones"
            for which in ("q_norm", "k_norm"):
                specs[f"{which}.weight"] = ParamSpec(shape=(s.head_dim,), init=init)
        return specs

    def flops(self, inputs, outputs, attrs):
        sizes = inputs[0]
        T = sizes[-2 if attrs.axis is None else attrs.axis]
        d = sizes[-1]
        s = attention_shape(attrs, d)
        S = inputs[1 + attrs.given.index("kv")][-2] if "kv" in attrs.given else T
        batch = numel(sizes) // (T * d)
        inner, kv_inner = attrs.heads * s.head_dim, s.kv_heads * s.head_dim
        seen = min(S, attrs.window) if attrs.window else S
        mixing = 2 * T * seen * inner * 2 // (2 if attrs.causal and not attrs.window else 1)
        e = inputs[1 + attrs.given.index("kv")][-1] if "kv" in attrs.given else d
        projections = 2 * T * d * inner + 2 * S * e * 2 * kv_inner + 2 * T * inner * d
        return batch * (projections + mixing)

    def lower(self, attrs):
        from nexusdsl.ops.attention_torch import attention_forward

        return attention_forward(attrs)

    def decode(self, attrs, inputs):
        from nexusdsl.ops.attention_torch import attention_decode

        return attention_decode(attrs)

    def lower_portable(self, attrs):
        from nexusdsl.ops.attention_torch import attention_forward

        return attention_forward(attrs, portable=True)


class AttentionShape:
    """Head counts and sizes of an attention node for a model width d."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int):
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim


def attention_shape(attrs, width: int, axis=None) -> AttentionShape:
    kv_heads = attrs.kv_heads or attrs.heads
    if attrs.heads % kv_heads:
        raise OpError(f"attention: kv_heads = {kv_heads} must divide heads = {attrs.heads} "
                      "(each group of query heads shares one key/value head)")
    head_dim = attrs.head_dim
    if head_dim is None:
        if width % attrs.heads:
            raise OpError(f"attention: width {axis or width} is not divisible by heads = "
                          f"{attrs.heads}; give head_dim", about=(0,))
        head_dim = width // attrs.heads
    return AttentionShape(attrs.heads, kv_heads, head_dim)


def _same_batch(x: TensorType, y: TensorType, what: str) -> None:
    lead_x, lead_y = x.axes[:-2], y.axes[:-2 if y.rank > 1 else -1]
    if len(lead_x) != len(lead_y) or not all(a.same_extent(b) for a, b in zip(lead_x, lead_y)):
        raise OpError(f"attention: {what} has batch axes [{', '.join(map(str, lead_y))}], the "
                      f"queries [{', '.join(map(str, lead_x))}]", about=(0, 1))


def _check_kv(x: TensorType, kv: TensorType | None) -> TensorType:
    """The key/value tokens: x itself, or `kv = y` checked against x."""
    if kv is None:
        return x
    require_float("attention (kv)", kv)
    require_rank("attention (kv)", kv, 2, "[*, S, e]")
    fixed_width("attention (kv)", kv)
    if kv.rank != x.rank:
        raise OpError(f"attention: kv = {kv} must have the rank of the queries {x}")
    _same_batch(x, kv, f"kv {kv}")
    return kv


def _check_mask(keys: TensorType, mask: TensorType, cross: bool) -> None:
    what = "the kv tokens" if cross else "the tokens"
    want = keys.axes[:-1]
    if mask.dtype != "bool":
        raise OpError(f"attention: mask must be bool (true for real tokens), got {mask.dtype} "
                      f"{mask}; declare it `input mask: bool[B, T]`")
    if mask.rank != len(want) or not all(a.same_extent(b) for a, b in zip(mask.axes, want)):
        raise OpError(f"attention: mask {mask} must have the axes of {what} "
                      f"[{', '.join(map(str, want))}]: one flag per key")


def _check_bias(x: TensorType, keys: TensorType, bias: TensorType, heads: int) -> None:
    require_float("attention (position_bias)", bias)
    tail = bias.axes[-3:]
    ok = bias.rank in (3, 4) and tail[0].size == heads
    ok = ok and tail[1].same_extent(x.axes[-2]) and tail[2].same_extent(keys.axes[-2])
    if not ok:
        raise OpError(f"attention: position_bias {bias} must be [heads={heads}, "
                      f"{x.axes[-2]}, {keys.axes[-2]}] (or with a batch axis in front)")


