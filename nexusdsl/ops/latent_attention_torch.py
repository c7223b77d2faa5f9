"""The torch forward of `latent_attention` (ops/latent_attention.py), written after
transformers' DeepseekV3Attention: latent projections, RMS-normalised latents, rotary positions
on the rope channels (the key's shared by every head), and one scaled_dot_product_attention
call whose boolean mask joins causality and padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nexusdsl.ops.decode import Decode
from nexusdsl.ops.rotary import apply_rotary, positions_from_mask, rotary_tables, score_scale_factor


def latent_attention_forward(attrs):
    """fn(m, x, mask?) for a latent_attention node's attributes."""
    given = list(attrs.given)
    scale = (attrs.nope_dim + attrs.rope_dim) ** -0.5 * score_scale_factor(attrs.rope)

    def latent_attention(m, x, *extra):
        mask = dict(zip(given, extra)).get("mask")
        lead, (T, d) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(-1, T, d)  # (batch, T, d): SDPA on plain 4-d heads
        keys = mask.reshape(-1, T) if mask is not None else None
        y = _attend(m, attrs, flat, keys, scale)
        return y.reshape(*lead, T, d)

    return latent_attention


def _attend(m, attrs, x, mask, scale: float):
    h, nope, rope, kv_rank = attrs.heads, attrs.nope_dim, attrs.rope_dim, attrs.kv_rank
    q = _heads(_queries(m, attrs, x), h)  # (B, h, T, nope + rope)
    q_pass, q_rot = q.split([nope, rope], dim=-1)
    latent, k_rot = F.linear(x, m.kv_a.weight).split([kv_rank, rope], dim=-1)
    latent = _rms(latent, m.kv_a_norm.weight, attrs.eps)
    k_rot = k_rot.unsqueeze(-3)  # (B, 1, T, rope): one rotary key for every head
    positions = positions_from_mask(mask)[:, None, :] if mask is not None else torch.arange(
        x.shape[-2], device=x.device)
    cos, sin = rotary_tables(attrs.rope, rope, positions, q.dtype)
    q_rot = apply_rotary(q_rot, cos, sin, rope, attrs.rope.interleaved)
    k_rot = apply_rotary(k_rot, cos, sin, rope, attrs.rope.interleaved)
    kv = _heads(F.linear(latent, m.kv_b.weight), h)  # (B, h, T, nope + v_dim)
    k_pass, v = kv.split([nope, attrs.v_dim], dim=-1)
    q = torch.cat((q_pass, q_rot), dim=-1)
    k = torch.cat((k_pass, k_rot.expand(*k_pass.shape[:-1], rope)), dim=-1)
    seen = _visible(attrs.causal, mask, x.shape[-2], x.device)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=seen,
                                       is_causal=attrs.causal and seen is None, scale=scale)
    return F.linear(y.transpose(-2, -3).flatten(-2), m.out.weight)  # (B, T, d)


def _queries(m, attrs, x):
    if not attrs.q_rank:
        return F.linear(x, m.q.weight)
    latent = _rms(F.linear(x, m.q_a.weight), m.q_a_norm.weight, attrs.eps)
    return F.linear(latent, m.q_b.weight)


def _heads(t, count: int):
    """(B, T, count * size) -> (B, count, T, size)"""
    return t.unflatten(-1, (count, -1)).transpose(-2, -3)


def _rms(t, weight, eps: float):
    """RMSNorm (transformers' DeepseekV3RMSNorm), in float32 for half-precision inputs; f32
    and f64 keep their own precision."""
    wide = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    scaled = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * scaled.to(t.dtype)


def _visible(causal: bool, mask, T: int, device):
    """None (SDPA's own causal path, or nothing hidden), or a bool [B, 1, T, T] mask of the
    keys each query sees: earlier ones when causal, real ones under a padding mask. A query
    that would see no key (a padded row before the first real token) sees itself, so its
    numbers stay finite."""
    if mask is None:
        return None
    seen = mask[:, None, None, :]  # (B, 1, 1, T)
    if causal:
        i = torch.arange(T, device=device)
        seen = seen & (i[None, :] <= i[:, None])
    return seen | torch.eye(T, dtype=torch.bool, device=device)


class LatentDecode(Decode):
    """Incremental latent attention (ops/decode.py): the cache holds what DeepSeek caches, each
    token's normalised key/value latent (kv_rank channels) and its rotated shared rotary key
    (rope_dim channels); each call expands the latents of every cached and new token into
    keys and values, attends, and writes the new tokens' latents in."""

    def __init__(self, attrs):
        self.attrs = attrs
        self.scale = (attrs.nope_dim + attrs.rope_dim) ** -0.5 * score_scale_factor(attrs.rope)

    def init(self, m, ctx):
        a = self.attrs
        return {"latent": torch.zeros(ctx.batch, ctx.capacity, a.kv_rank, dtype=ctx.dtype,
                                      device=ctx.device),
                "rot": torch.zeros(ctx.batch, ctx.capacity, a.rope_dim, dtype=ctx.dtype,
                                   device=ctx.device),
                "valid": torch.zeros(ctx.batch, ctx.capacity, dtype=torch.bool,
                                     device=ctx.device)}

    def run(self, m, state, ctx, x, *extra):
        a = self.attrs
        h, nope, rope, kv_rank = a.heads, a.nope_dim, a.rope_dim, a.kv_rank
        q = _heads(_queries(m, a, x), h)
        q_pass, q_rot = q.split([nope, rope], dim=-1)
        latent, k_rot = F.linear(x, m.kv_a.weight).split([kv_rank, rope], dim=-1)
        latent = _rms(latent, m.kv_a_norm.weight, a.eps)
        cos, sin = rotary_tables(a.rope, rope, ctx.positions, q.dtype)  # (B, new, rope)
        q_rot = apply_rotary(q_rot, cos[:, None], sin[:, None], rope, a.rope.interleaved)
        k_rot = apply_rotary(k_rot, cos, sin, rope, a.rope.interleaved)
        new = x.shape[-2]
        mine = ctx.slots(new)
        slots = torch.arange(ctx.capacity, device=x.device)
        latents = torch.cat([state["latent"], latent], dim=1)  # cache slots, then the new
        rots = torch.cat([state["rot"], k_rot], dim=1)
        where = torch.cat([slots, mine])
        valid = torch.cat([state["valid"] & (slots[None, :] < ctx.start), ctx.mask], dim=1)
        kv = _heads(F.linear(latents, m.kv_b.weight), h)
        k_pass, v = kv.split([nope, a.v_dim], dim=-1)
        k = torch.cat((k_pass, rots.unsqueeze(1).expand(*k_pass.shape[:-1], rope)), dim=-1)
        seen = (where[None, :] <= mine[:, None]) & valid[:, None, :]
        own = torch.zeros_like(seen)
        own[:, :, ctx.capacity:] = torch.eye(new, dtype=torch.bool, device=x.device)
        seen = (seen | own)[:, None]  # a padded query sees itself: finite numbers
        y = F.scaled_dot_product_attention(torch.cat((q_pass, q_rot), dim=-1), k, v,
                                           attn_mask=seen, scale=self.scale)
        state["latent"].index_copy_(1, mine, latent)
        state["rot"].index_copy_(1, mine, k_rot)
        state["valid"].index_copy_(1, mine, ctx.mask)
        return F.linear(y.transpose(-2, -3).flatten(-2), m.out.weight)
