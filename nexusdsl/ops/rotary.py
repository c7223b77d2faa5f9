"""Rotary position embedding settings, shared by the ops that rotate queries and keys
(`attention`, `latent_attention`): `rope = rope(theta = 500000, fraction = 1.0, scaling =
llama3(factor = 8))`, or `rope = true` for the defaults.

The frequencies follow transformers' `modeling_rope_utils` exactly (the reference for every
family): inverse frequencies 1 / theta^(2i / rot) in float32, rescaled by `linear(factor)`,
`llama3(factor, low, high, original)` or `yarn(factor, original, beta_fast, beta_slow, mscale,
mscale_all_dim)`; yarn also scales cos and sin by its attention factor. Pairs are rotated in
the half-split layout of transformers (`rotate_half`: channel i with i + rot / 2) unless
`interleaved = true` (DeepSeek: channels 2i and 2i + 1).
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from nexusdsl.ops.attrs import Bool, Float
from nexusdsl.ops.base import OpAttrs

SCALINGS = {
    # name: {setting: default}; positional arguments fill settings in this order
    "linear": {"factor": None},
    "llama3": {"factor": None, "low": 1.0, "high": 4.0, "original": 8192},
    "yarn": {"factor": None, "original": None, "beta_fast": 32.0, "beta_slow": 1.0,
             "mscale": None, "mscale_all_dim": None, "attention_factor": None},
}
# Settings a scaling cannot do without.
REQUIRED = {"linear": ("factor",), "llama3": ("factor",), "yarn": ("factor", "original")}


class RopeScaling(OpAttrs):
    kind: Literal["linear", "llama3", "yarn"]
    factor: Annotated[Float, Field(gt=0)]
    low: Annotated[Float, Field(gt=0)] = 1.0
    high: Annotated[Float, Field(gt=0)] = 4.0
    original: Annotated[Float, Field(gt=0)] = 8192
    beta_fast: Float = 32.0
    beta_slow: Float = 1.0
    # yarn's attention factor is mscale(factor, mscale) / mscale(factor, mscale_all_dim) when
    # both are given, else mscale(factor), as transformers computes it
    mscale: Float | None = None
    mscale_all_dim: Float | None = None
    attention_factor: Float | None = None


def _option_call(value: Any, kinds: dict[str, dict], what: str,
                 required: bool = True) -> dict[str, Any]:
    """An option call as the elaborator hands it over ({"fn", "args", "kwargs"}), checked
    against `kinds` and flattened to {"kind": fn, setting: value}; with `required`, settings
    whose default is None must be given."""
    if not isinstance(value, dict) or "fn" not in value:
        return value  # already flat (read back from the IR), or a mistake pydantic reports
    name = value["fn"]
    if name not in kinds:
        raise ValueError(f"{what} must be one of {', '.join(n + '(...)' for n in kinds)}, "
                         f"got `{name}(...)`")
    settings = kinds[name]
    args, kwargs = list(value.get("args") or []), dict(value.get("kwargs") or {})
    if len(args) > len(settings):
        raise ValueError(f"{name}(...) takes at most {len(settings)} positional settings")
    for key, arg in zip(settings, args):
        if key in kwargs:
            raise ValueError(f"{name}(...): `{key}` is given twice")
        kwargs[key] = arg
    unknown = [k for k in kwargs if k not in settings]
    if unknown:
        raise ValueError(f"{name}(...) has no setting `{unknown[0]}` (it takes "
                         f"{', '.join(settings)})")
    missing = [k for k in REQUIRED.get(name, ()) if required and k not in kwargs]
    if missing:
        raise ValueError(f"{name}(...) needs `{missing[0]}`")
    return {"kind": name, **kwargs}


def _scaling(value: Any) -> Any:
    if value is None or value == "none":
        return None
    if isinstance(value, dict) and value.get("op") == "linear":  # `linear` is also an op
        value = {"fn": "linear", "args": [], "kwargs": dict(value.get("attrs") or {})}
    return _option_call(value, SCALINGS, "rope scaling")


class Rope(OpAttrs):
    theta: Annotated[Float, Field(gt=0)] = 10000.0
    fraction: Annotated[Float, Field(gt=0, le=1)] = 1.0
    interleaved: Bool = False
    scaling: Annotated[RopeScaling | None, BeforeValidator(_scaling)] = None


ROPE_SETTINGS = {"theta": 10000.0, "fraction": 1.0, "interleaved": False, "scaling": None}


def _rope(value: Any) -> Any:
    """`rope = true` (the defaults), `false`, or `rope(theta = ..., ...)`."""
    if value is False or value is None or value == "none":
        return None
    if value is True or value == "rope":  # `rope = rope` names the option function uncalled
        return {}
    if isinstance(value, dict) and "fn" in value:
        if value["fn"] != "rope":
            raise ValueError(f"should be true, false or rope(...), got `{value['fn']}(...)`")
        return {k: v for k, v in _option_call(value, {"rope": ROPE_SETTINGS}, "rope", required=False).items()
                if k != "kind"}
    return value


RopeSetting = Annotated[Rope | None, BeforeValidator(_rope)]


def rotary_width(rope: Rope, head_dim: int) -> int:
    """The channels of each head that rotate: the first int(head_dim * fraction)."""
    return int(head_dim * rope.fraction)


def check_rotary_width(rope: Rope | None, head_dim: int, what: str) -> None:
    from nexusdsl.ops.base import OpError

    if rope is None:
        return
    rot = rotary_width(rope, head_dim)
    if rot < 2 or rot % 2:
        raise OpError(f"{what}: rotary width {rot} (head_dim {head_dim} x fraction "
                      f"{rope.fraction:g}) must be even and at least 2: rotary pairs channels")


# ---------------------------------------------------------------------------- torch


@functools.lru_cache(maxsize=64)
def inverse_frequencies(rope: Rope, rot: int):
    """(inv_freq float32 [rot / 2], attention factor) as transformers computes them. Made once
    per setting (a decoding step asks for them at every token); never written to."""
    import torch

    base = torch.arange(0, rot, 2, dtype=torch.int64).to(torch.float32) / rot
    inv_freq = 1.0 / (rope.theta ** base)
    s = rope.scaling
    if s is None:
        return inv_freq, 1.0
    if s.kind == "linear":
        return inv_freq / s.factor, 1.0
    if s.kind == "llama3":
        return _llama3(inv_freq, s), 1.0
    return _yarn(rope, s, rot)


def _llama3(inv_freq, s: RopeScaling):
    import torch

    low_wavelen, high_wavelen = s.original / s.low, s.original / s.high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original / wavelen - s.low) / (s.high - s.low)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rope: Rope, s: RopeScaling, rot: int):
    import torch

    factor = s.attention_factor
    if factor is None:
        factor = (_yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim)
                  if s.mscale and s.mscale_all_dim else _yarn_mscale(s.factor))

    def correction(rotations: float) -> float:
        return (rot * math.log(s.original / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low = max(math.floor(correction(s.beta_fast)), 0)
    high = min(math.ceil(correction(s.beta_slow)), rot - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    ramp = torch.clamp((torch.arange(rot // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos = rope.theta ** (torch.arange(0, rot, 2).to(dtype=torch.float) / rot)
    extrapolate = 1 - ramp
    inv_freq = (1.0 / (s.factor * pos)) * (1 - extrapolate) + (1.0 / pos) * extrapolate
    return inv_freq, float(factor)


def score_scale_factor(rope: Rope | None) -> float:
    """DeepSeek's extra factor on the score scale under yarn (transformers'
    `yarn_apply_mscale`): mscale(factor, mscale_all_dim)^2, else 1."""
    if rope is None or rope.scaling is None or not rope.scaling.mscale_all_dim:
        return 1.0
    m = _yarn_mscale(rope.scaling.factor, rope.scaling.mscale_all_dim)
    return m * m


def rotary_tables(rope: Rope, rot: int, positions, dtype):
    """cos and sin [*positions.shape, rot] for integer `positions` (any leading shape),
    computed in float32 as transformers does, then cast to `dtype`."""
    import torch

    inv_freq, factor = inverse_frequencies(rope, rot)
    inv_freq = inv_freq.to(positions.device)
    with torch.autocast(device_type=positions.device.type, enabled=False):
        freqs = positions[..., None].to(torch.float32) * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos() * factor, angles.sin() * factor
    return cos.to(dtype), sin.to(dtype)


def apply_rotary(x, cos, sin, rot: int, interleaved: bool = False):
    """Rotate the first `rot` channels of x [..., T, head_dim] by cos/sin [..., T, rot]
    (broadcast over the heads axis in front of T); the other channels pass through."""
    import torch

    moving, still = x[..., :rot], x[..., rot:]
    if interleaved:  # pairs (2i, 2i+1), returned de-interleaved like transformers' DeepSeek
        half_cos, half_sin = cos[..., : rot // 2], sin[..., : rot // 2]
        a, b = moving[..., 0::2], moving[..., 1::2]
        turned = torch.cat((a * half_cos - b * half_sin, b * half_cos + a * half_sin), dim=-1)
    else:
        a, b = moving[..., : rot // 2], moving[..., rot // 2:]
        turned = moving * cos + torch.cat((-b, a), dim=-1) * sin
    return torch.cat((turned, still), dim=-1) if still.shape[-1] else turned


def positions_from_mask(mask):
    """Positions of the tokens of a [B, T] padding mask (true = real): each real token's
    index among the real tokens of its row, so a left-padded row gets the positions its
    unpadded sequence has; padding gets 0."""
    import torch

    return (torch.cumsum(mask.to(torch.int64), dim=-1) - 1).clamp(min=0)
