"""The torch forward of `attention` (ops/mixers.py): projections, grouped-query heads, norms of
q and k, rotary positions, and one `scaled_dot_product_attention` call.

Everything SDPA can express goes through one SDPA call: grouped-query attention through
`enable_gqa`, causality, sliding windows and padding through one boolean `attn_mask`, position
biases and ALiBi through a float `attn_mask`, the score scale through `scale`. Only `softcap`
(scores c * tanh(s / c)) needs the scores written out. The portable form (torch-mlir, IREE)
repeats the shared key/value heads instead of `enable_gqa`, which torch-mlir does not take.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nexusdsl.ops.decode import Decode
from nexusdsl.ops.rotary import apply_rotary, positions_from_mask, rotary_tables, rotary_width


def attention_forward(attrs, head_dim: int | None = None, portable: bool = False):
    """fn(m, x, *optional tensors) for an attention node's attributes. `head_dim` overrides
    the head size (`pruned_attention` keeps fewer heads of the original size)."""
    given = list(getattr(attrs, "given", []) or [])
    axis = attrs.axis

    def attention(m, x, *extra):
        # a defaulted mask the caller left out arrives as None: attention as without one
        tensors = {k: v for k, v in zip(given, extra) if v is not None}
        if axis is not None:
            x = x.movedim(axis, -2)
        y = _attend(m, attrs, x, tensors, head_dim or getattr(attrs, "head_dim", None), portable)
        return y if axis is None else y.movedim(-2, axis)

    return attention


def _attend(m, attrs, x, tensors: dict, head_dim: int | None, portable: bool):
    heads = attrs.heads
    kv_heads = getattr(attrs, "kv_heads", None) or heads
    size = head_dim or x.shape[-1] // heads
    q, k, v = _project(m, attrs, x, tensors.get("kv"), heads, kv_heads, size)
    q, k = _normalise(m, attrs, q, k)
    q, k = _rotate(attrs, q, k, tensors.get("mask") if "kv" not in tensors else None)
    lead = q.shape[:-3]  # SDPA on (batch, heads, T, size): torch.compile miscomputed more
    q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))  # leading axes (an axis=)
    mask = _attention_mask(attrs, q, k, tensors, len(lead))
    y = _scores_to_values(m, attrs, q, k, v, mask, kv_heads != heads, portable)
    y = y.reshape(*lead, *y.shape[-3:])
    out_bias = m.out.bias if attrs.bias is True else None
    return F.linear(y.transpose(-2, -3).flatten(-2), m.out.weight, out_bias)  # (*, T, d)


def _heads(t, count: int, size: int):
    """(*, T, count * size) -> (*, count, T, size)"""
    return t.unflatten(-1, (count, size)).transpose(-2, -3)


def _project(m, attrs, x, kv, heads: int, kv_heads: int, size: int):
    inner, kv_inner = heads * size, kv_heads * size
    if kv is None:
        qkv = F.linear(x, m.qkv.weight, m.qkv.bias if attrs.bias else None)
        q, k, v = qkv.split([inner, kv_inner, kv_inner], dim=-1)
    else:
        q = F.linear(x, m.q.weight, m.q.bias if attrs.bias else None)
        k, v = F.linear(kv, m.kv.weight, m.kv.bias if attrs.bias else None).split(kv_inner, -1)
    return _heads(q, heads, size), _heads(k, kv_heads, size), _heads(v, kv_heads, size)


def _normalise(m, attrs, q, k):
    norm = getattr(attrs, "qk_norm", None)
    if norm is None:
        return q, k
    return _head_norm(q, m.q_norm.weight, norm), _head_norm(k, m.k_norm.weight, norm)


def _head_norm(t, weight, norm):
    """RMSNorm over each head's channels, in float32 for half precision (as transformers)."""
    wide = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    scaled = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + norm.eps)
    if norm.offset:
        return (scaled * (norm.offset + weight.to(wide.dtype))).to(t.dtype)
    return weight * scaled.to(t.dtype)


def _rotate(attrs, q, k, mask):
    rope = getattr(attrs, "rope", None)
    if rope is None:
        return q, k
    rot = rotary_width(rope, q.shape[-1])
    T = q.shape[-2]
    if mask is not None:  # each row's own positions: left padding keeps the unpadded ones
        positions = positions_from_mask(mask)[..., None, :]  # (B, 1, T): broadcast over heads
    else:
        positions = torch.arange(T, device=q.device)
    cos, sin = rotary_tables(rope, rot, positions, q.dtype)
    return (apply_rotary(q, cos, sin, rot, rope.interleaved),
            apply_rotary(k, cos, sin, rot, rope.interleaved))


def _attention_mask(attrs, q, k, tensors: dict, lead: int):
    """One attn_mask for SDPA, or None for the plain (maybe causal) case: a bool mask of what
    each query may see, or a float mask of additive biases with -inf where it may not."""
    T, S = q.shape[-2], k.shape[-2]
    window = getattr(attrs, "window", 0)
    seen = _visible(attrs.causal, window, T, S, q.device) if (
        window or "mask" in tensors or "position_bias" in tensors or _alibi(attrs)) else None
    if "mask" in tensors:
        keys = tensors["mask"].reshape(-1, 1, 1, S)  # (batch, 1, 1, S)
        seen = keys if seen is None else seen & keys
        if "kv" not in tensors:  # a padded query that sees no key sees itself: finite numbers
            seen = seen | torch.eye(T, S, dtype=torch.bool, device=q.device)
    bias = _biases(attrs, tensors, q.shape[-3], T, S, q)
    if bias is None:
        return seen
    if seen is None:
        return bias
    return torch.where(seen, bias, float("-inf"))


def _visible(causal: bool, window: int, T: int, S: int, device):
    """[T, S] bool: which keys each query sees. Queries are the last T of S positions (keys
    before them are earlier context). Causal: keys up to the query; a window w keeps the w
    keys ending at the query (transformers' sliding window: j > i - w), or, not causal,
    the keys less than w away."""
    i = torch.arange(T, device=device)[:, None] + (S - T)
    j = torch.arange(S, device=device)[None, :]
    seen = j <= i if causal else torch.ones(T, S, dtype=torch.bool, device=device)
    if window:
        seen = seen & ((j > i - window) if causal else ((i - j).abs() < window))
    return seen


def _alibi(attrs) -> bool:
    return bool(getattr(attrs, "alibi", False))


def _biases(attrs, tensors: dict, heads: int, T: int, S: int, q):
    bias = None
    if "position_bias" in tensors:
        b = tensors["position_bias"].to(q.dtype)
        bias = b if b.dim() == 4 else b.unsqueeze(0)
    if _alibi(attrs):
        slopes = alibi_slopes(heads).to(device=q.device, dtype=q.dtype)
        i = torch.arange(T, device=q.device)[:, None] + (S - T)
        j = torch.arange(S, device=q.device)[None, :]
        distance = (i - j).abs().to(q.dtype)
        a = (-slopes[:, None, None] * distance).unsqueeze(0)  # (1, H, T, S)
        bias = a if bias is None else bias + a
    return bias


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al.): 2^(-8i/n) for n a power of two, else those of
    the nearest lower power of two followed by every other slope of the next one (as BLOOM)."""
    nearest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(nearest) - 3)))
    slopes = torch.pow(torch.tensor(base, dtype=torch.float64),
                       torch.arange(1, 1 + nearest, dtype=torch.float64))
    if nearest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * nearest) - 3)))
        rest = min(nearest, heads - nearest)
        slopes = torch.cat([slopes, torch.pow(torch.tensor(extra, dtype=torch.float64),
                                              torch.arange(1, 1 + 2 * rest, 2,
                                                           dtype=torch.float64))])
    return slopes.to(torch.float32)


def _scores_to_values(m, attrs, q, k, v, mask, grouped: bool, portable: bool):
    p = attrs.dropout if m.training else 0.0
    scale = getattr(attrs, "scale", None)
    softcap = getattr(attrs, "softcap", 0.0)
    if softcap or (grouped and portable):
        k, v = _repeat_heads(k, q.shape[-3]), _repeat_heads(v, q.shape[-3])
        grouped = False
    if softcap:
        return _explicit(q, k, v, mask, attrs.causal, scale, softcap, p, m.training)
    causal = attrs.causal and mask is None
    extra = {"enable_gqa": True} if grouped else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                          is_causal=causal, scale=scale, **extra)


def _repeat_heads(t, heads: int):
    """(B, kv_heads, S, size) -> (B, heads, S, size), each kv head serving its group."""
    groups = heads // t.shape[-3]
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def _explicit(q, k, v, mask, causal: bool, scale, softcap: float, p: float, training: bool):
    """Attention with soft-capped scores, which SDPA cannot express."""
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    scores = softcap * torch.tanh(scores / softcap)
    if mask is None and causal:
        mask = _visible(True, 0, q.shape[-2], k.shape[-2], q.device)
    if mask is not None:
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else scores + mask)
    wide = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    weights = torch.softmax(wide, dim=-1).to(q.dtype)
    weights = F.dropout(weights, p, training)
    return weights @ v


# ---------------------------------------------------------------------------- decoding


class AttentionDecode(Decode):
    """Incremental attention (ops/decode.py). Self-attention keeps the keys and values of
    every token so far (only the kv heads: grouped-query attention stores kv_heads of them),
    rotated at each token's own position, in a cache preallocated for the batch's capacity
    (`window` slots used as a ring when there is a window); each call attends over the cache
    and its own new tokens, then writes them in. Cross-attention projects its keys and values
    once, on the first call, and keeps them."""

    def __init__(self, attrs):
        self.attrs = attrs
        self.given = list(attrs.given)
        self._rope_key = repr(attrs.rope)

    def _rotary(self, ctx, rot: int, dtype):
        """cos and sin at this call's positions, made once per call for all the layers that
        share a rope (every layer's positions are the same): a one-token step is a few dozen
        small ops, and the tables were several of them per layer."""
        memo = ctx.__dict__.setdefault("memo", {})  # this call's, for every layer
        key = (self._rope_key, rot, dtype)
        made = memo.get(key)
        if made is None or made[0] is not ctx.positions:
            made = (ctx.positions,
                    *rotary_tables(self.attrs.rope, rot, ctx.positions[:, None, :], dtype))
            memo[key] = made
        return made[1], made[2]

    def _visible(self, state, ctx, cached: int, new: int):
        """(the absolute slots of the new tokens, of every key, which keys each new token
        sees [B, 1, new, keys]). Every layer of the same window has written the same slots,
        so this is made once per call for all of them."""
        memo = ctx.__dict__.setdefault("memo", {})  # this call's, for every layer
        key = ("seen", self.attrs.window, cached, new)
        made = memo.get(key)
        if made is not None and made[0] is ctx.positions:
            return made[1:]
        mine = ctx.slots(new)
        if cached:
            where = torch.cat([state["where"], mine])  # the absolute slot of every key
            valid = torch.cat([state["valid"] & (state["where"] >= 0), ctx.mask], dim=1)
        else:
            where, valid = mine, ctx.mask
        seen = (where[None, :] <= mine[:, None]) & valid[:, None, :]  # (B, new, keys)
        if self.attrs.window:
            seen = seen & (where[None, :] > mine[:, None] - self.attrs.window)
        own = torch.zeros_like(seen)
        own[:, :, cached:] = torch.eye(new, dtype=torch.bool, device=seen.device)
        seen = (seen | own)[:, None]  # a padded query sees itself: finite numbers
        memo[key] = (ctx.positions, mine, where, seen)
        return mine, where, seen

    def init(self, m, ctx):
        a = self.attrs
        kv_heads = a.kv_heads or a.heads
        size = a.head_dim or m.out.weight.shape[0] // a.heads
        if "kv" in self.given:
            return {"k": None, "v": None}
        slots = min(a.window, ctx.capacity) if a.window else ctx.capacity
        shape = (ctx.batch, kv_heads, slots, size)
        return {"k": torch.zeros(shape, dtype=ctx.dtype, device=ctx.device),
                "v": torch.zeros(shape, dtype=ctx.dtype, device=ctx.device),
                "valid": torch.zeros(ctx.batch, slots, dtype=torch.bool, device=ctx.device),
                "where": torch.full((slots,), -1, dtype=torch.int64, device=ctx.device)}

    def run(self, m, state, ctx, x, *extra):
        tensors = {k: v for k, v in zip(self.given, extra) if v is not None}
        if "kv" in tensors:
            return self._cross(m, state, x, tensors)
        return self._self(m, state, ctx, x, tensors.get("position_bias"))

    def _cross(self, m, state, x, tensors):
        a = self.attrs
        heads, kv_heads = a.heads, a.kv_heads or a.heads
        size = a.head_dim or x.shape[-1] // heads
        q = _heads(F.linear(x, m.q.weight, m.q.bias if a.bias else None), heads, size)
        if state["k"] is None:  # the memory does not change while generating
            k, v = F.linear(tensors["kv"], m.kv.weight, m.kv.bias if a.bias else None).split(
                kv_heads * size, -1)
            state["k"], state["v"] = _heads(k, kv_heads, size), _heads(v, kv_heads, size)
        q, k = _normalise(m, a, q, state["k"])
        mask = tensors.get("mask")
        seen = None if mask is None else mask[:, None, None, :]
        bias = _biases(a, tensors, heads, q.shape[-2], k.shape[-2], q)
        if bias is not None:
            seen = bias if seen is None else torch.where(seen, bias, float("-inf"))
        y = _scores_to_values(m, a, q, k, state["v"], seen, kv_heads != heads, False)
        return _out(m, a, y)

    def _self(self, m, state, ctx, x, position_bias=None):
        a = self.attrs
        heads, kv_heads = a.heads, a.kv_heads or a.heads
        size = a.head_dim or m.out.weight.shape[0] // heads
        q, k, v = _project(m, a, x, None, heads, kv_heads, size)
        q, k = _normalise(m, a, q, k)
        if a.rope is not None:  # each new token at its own row's position
            rot = rotary_width(a.rope, size)
            cos, sin = self._rotary(ctx, rot, q.dtype)
            q = apply_rotary(q, cos, sin, rot, a.rope.interleaved)
            k = apply_rotary(k, cos, sin, rot, a.rope.interleaved)
        if state.get("written"):  # the cache's keys, then the new ones
            keys = torch.cat([state["k"], k], dim=2)
            values = torch.cat([state["v"], v], dim=2)
            cached = state["k"].shape[2]
        else:  # the first call (the prompt): the cache holds nothing to attend to yet
            keys, values, cached = k, v, 0
        mine, where, seen = self._visible(state, ctx, cached, x.shape[-2])
        bias = _alibi_at(heads, mine, where, q) if a.alibi else None
        if position_bias is not None:  # [.., heads, new, capacity] over absolute slots
            taken = position_bias[..., where.clamp(min=0)].to(q.dtype)
            taken = taken if taken.dim() == 4 else taken.unsqueeze(0)
            bias = taken if bias is None else bias + taken
        if bias is not None:
            seen = torch.where(seen, bias, float("-inf"))
        elif not cached and a.causal and not a.window and bool(ctx.mask.all()):
            seen = None  # a prompt without padding: plain causal attention, SDPA's fast path
        y = _scores_to_values(m, a, q, keys, values, seen, kv_heads != heads, False)
        self._write(state, k, v, mine, ctx.mask)
        return _out(m, a, y)

    @staticmethod
    def _write(state, k, v, mine, mask):
        slots = state["k"].shape[2]
        keep = min(slots, mine.shape[0])  # a ring keeps only its last `window` tokens
        where = mine[-keep:] % slots
        state["k"].index_copy_(2, where, k[:, :, -keep:])
        state["v"].index_copy_(2, where, v[:, :, -keep:])
        state["valid"].index_copy_(1, where, mask[:, -keep:])
        state["where"].index_copy_(0, where, mine[-keep:])
        state["written"] = True


def _alibi_at(heads: int, mine, where, q):
    slopes = alibi_slopes(heads).to(device=q.device, dtype=q.dtype)
    distance = (mine[:, None] - where[None, :]).abs().to(q.dtype)  # (new, keys)
    return (-slopes[:, None, None] * distance).unsqueeze(0)


def _out(m, attrs, y):
    out_bias = m.out.bias if attrs.bias is True else None
    return F.linear(y.transpose(-2, -3).flatten(-2), m.out.weight, out_bias)


def attention_decode(attrs):
    """The attention node's decoding, or None where it cannot decode (it looks ahead)."""
    if attrs.axis is not None:
        return None  # a grid axis
    if "kv" in (attrs.given or []) or attrs.causal:
        return AttentionDecode(attrs)
    return None  # every query sees later tokens
