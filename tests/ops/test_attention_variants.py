"""`attention`'s options (grouped-query heads, head_dim, rotary positions and their scalings,
qk_norm, sliding windows, soft-capping, score scale, padding masks, cross-attention, position
biases, ALiBi) against references written from the formulas here, with explicit softmax and
loops where that is clearer, and against transformers' own rotary code."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError

pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def build(call: str, extra_inputs: str = "", dim: int = 32, kv_dim: int = 0):
    kv = f"\n  input y: float[B, S, {kv_dim}]" if kv_dim else ""
    text = f"""nexus 0.1
model M {{
  input x: float[B, T, {dim}]{kv}{extra_inputs}
  output out = {call}
}}
"""
    return nexusdsl.compile(nexusdsl.loads(text, "attention.nx"), dtype="f64")


def weights(model, name="attention"):
    return {k.removeprefix(name + "."): v.detach() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- the reference


def rope_tables(inv_freq, positions, factor=1.0):
    freqs = positions[..., None].to(torch.float32) * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * factor).double(), (angles.sin() * factor).double()


def rotate(t, cos, sin, rot):
    moving, still = t[..., :rot], t[..., rot:]
    half = rot // 2
    out = torch.empty_like(moving)
    for i in range(half):  # channel pairs (i, i + half), one at a time
        a, b = moving[..., i], moving[..., i + half]
        out[..., i] = a * cos[..., i] - b * sin[..., i]
        out[..., i + half] = b * cos[..., i + half] + a * sin[..., i + half]
    return torch.cat((out, still), dim=-1)


def reference(x, w, heads, kv_heads=None, head_dim=None, causal=False, inv_freq=None,
              rope_factor=1.0, rot=None, positions=None, qk_eps=None, qk_offset=0.0, window=0,
              softcap=0.0, scale=None, key_mask=None, y=None, bias=None, alibi=None):
    B, T, d = x.shape
    kv_heads = kv_heads or heads
    hd = head_dim or d // heads
    if y is None:
        qkv = x @ w["qkv.weight"].T + w.get("qkv.bias", 0)
        q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
    else:
        q = x @ w["q.weight"].T + w.get("q.bias", 0)
        k, v = (y @ w["kv.weight"].T + w.get("kv.bias", 0)).split(kv_heads * hd, -1)
    S = k.shape[1]
    q = q.view(B, T, heads, hd).transpose(1, 2)
    k = k.view(B, S, kv_heads, hd).transpose(1, 2)
    v = v.view(B, S, kv_heads, hd).transpose(1, 2)
    if qk_eps is not None:
        def norm(t, g):
            return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + qk_eps) * (qk_offset + g)
        q, k = norm(q, w["q_norm.weight"]), norm(k, w["k_norm.weight"])
    if inv_freq is not None:
        pos = torch.arange(T) if positions is None else positions
        cos, sin = rope_tables(inv_freq, pos, rope_factor)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        q, k = rotate(q, cos, sin, rot), rotate(k, cos, sin, rot)
    group = heads // kv_heads
    out = torch.zeros(B, heads, T, hd)
    for b in range(B):
        for h in range(heads):
            kh = h // group
            s = q[b, h] @ k[b, kh].T * (scale if scale is not None else hd ** -0.5)
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            if bias is not None:
                s = s + bias[h]
            if alibi is not None:
                i, j = torch.arange(T)[:, None], torch.arange(S)[None, :]
                s = s - alibi[h] * (i - j).abs()
            for i in range(T):
                for j in range(S):
                    hidden = (causal and j > i) or (window and (
                        (causal and j <= i - window) or (not causal and abs(i - j) >= window)))
                    if key_mask is not None and not key_mask[b, j]:
                        hidden = True
                    if hidden:
                        s[i, j] = -math.inf
            out[b, h] = torch.softmax(s, -1) @ v[b, kh]
    out = out.transpose(1, 2).reshape(B, T, heads * hd)
    return out @ w["out.weight"].T + w.get("out.bias", 0)


def close(a, b, tol=1e-10):
    assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def inv_freq_of(theta, rot):
    return 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))


# ---------------------------------------------------------------------------- cases


def test_plain_attention_keeps_its_layout_and_matches_the_reference():
    m = build("attention(x, heads = 4, causal = true)")
    assert set(weights(m)) == {"qkv.weight", "qkv.bias", "out.weight", "out.bias"}
    assert weights(m)["qkv.weight"].shape == (96, 32)
    x = torch.randn(2, 6, 32)
    close(m(x), reference(x, weights(m), 4, causal=True))


def test_grouped_query_heads_with_head_dim_and_no_bias():
    m = build("attention(x, heads = 8, kv_heads = 2, head_dim = 6, bias = false)")
    w = weights(m)
    assert w["qkv.weight"].shape == ((8 + 2 * 2) * 6, 32) and w["out.weight"].shape == (32, 48)
    assert "qkv.bias" not in w and "out.bias" not in w
    x = torch.randn(2, 5, 32)
    close(m(x), reference(x, w, 8, kv_heads=2, head_dim=6))


def test_qkv_bias_only():
    m = build("attention(x, heads = 4, kv_heads = 2, bias = qkv)")
    w = weights(m)
    assert "qkv.bias" in w and "out.bias" not in w
    x = torch.randn(1, 4, 32)
    close(m(x), reference(x, w, 4, kv_heads=2))


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rotary_positions(fraction):
    m = build(f"attention(x, heads = 4, causal = true, rope = rope(theta = 500000, "
              f"fraction = {fraction}))")
    x = torch.randn(2, 7, 32)
    rot = int(8 * fraction)
    expected = reference(x, weights(m), 4, causal=True, inv_freq=inv_freq_of(500000.0, rot),
                         rot=rot)
    close(m(x), expected)


def hf_inv_freq(rope_parameters, head_dim=8, max_positions=4096):
    config = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4,
                                      max_position_embeddings=max_positions,
                                      rope_parameters=rope_parameters)
    emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    return emb.inv_freq, emb.attention_scaling


@pytest.mark.parametrize("call,params", [
    ("rope(theta = 10000, scaling = linear(factor = 4))",
     {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    ("rope(theta = 500000, scaling = llama3(factor = 8, low = 1, high = 4, original = 64))",
     {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ("rope(theta = 10000, scaling = yarn(factor = 4, original = 64))",
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
      "original_max_position_embeddings": 64}),
    ("rope(theta = 10000, scaling = yarn(factor = 4, original = 64, mscale_all_dim = 1))",
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale_all_dim": 1.0,
      "original_max_position_embeddings": 64}),
    ("rope(theta = 10000, scaling = yarn(factor = 4, original = 64, mscale = 0.7, "
     "mscale_all_dim = 1.2))",
     {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 0.7,
      "mscale_all_dim": 1.2, "original_max_position_embeddings": 64}),
])
def test_rotary_scalings_follow_transformers(call, params):
    m = build(f"attention(x, heads = 4, causal = true, rope = {call})")
    inv_freq, factor = hf_inv_freq(params)
    x = torch.randn(1, 9, 32)
    expected = reference(x, weights(m), 4, causal=True, inv_freq=inv_freq, rope_factor=factor,
                         rot=8)
    close(m(x), expected)


def test_qk_norm_with_and_without_offset():
    for offset in (0, 1):
        m = build(f"attention(x, heads = 4, qk_norm = rmsnorm(eps = 1e-6, offset = {offset}))")
        w = weights(m)
        w = {**w, "q_norm.weight": torch.randn(8), "k_norm.weight": torch.randn(8)}
        m.load_state_dict({f"attention.{k}": v for k, v in w.items()})
        x = torch.randn(2, 5, 32)
        close(m(x), reference(x, w, 4, qk_eps=1e-6, qk_offset=float(offset)))


@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window(causal):
    m = build(f"attention(x, heads = 4, causal = {str(causal).lower()}, window = 3)")
    x = torch.randn(2, 8, 32)
    close(m(x), reference(x, weights(m), 4, causal=causal, window=3))


def test_softcap_and_scale():
    m = build("attention(x, heads = 4, causal = true, softcap = 2.0, scale = 0.7)")
    x = torch.randn(2, 6, 32) * 3
    close(m(x), reference(x, weights(m), 4, causal=True, softcap=2.0, scale=0.7))


def test_padding_mask_hides_keys_and_padded_rows_match_unpadded_sequences():
    m = build("attention(x, heads = 4, kv_heads = 2, causal = true, rope = true, mask = m)",
              "\n  input m: bool[B, T]")
    x = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)  # right, left
    out = m(x, mask)
    alone_right = m(x[:1, :4], mask[:1, :4])
    alone_left = m(x[1:, 2:], mask[1:, 2:])
    close(out[0, :4], alone_right[0])
    close(out[1, 2:], alone_left[0])
    assert torch.isfinite(out).all()


def test_cross_attention_with_its_own_widths_and_mask():
    m = build("attention(x, heads = 4, kv_heads = 2, kv = y, mask = ym)",
              "\n  input ym: bool[B, S]", kv_dim=12)
    w = weights(m)
    assert w["q.weight"].shape == (32, 32) and w["kv.weight"].shape == (2 * 2 * 8, 12)
    x, y = torch.randn(2, 5, 32), torch.randn(2, 7, 12)
    ym = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    close(m(x, y, ym), reference(x, w, 4, kv_heads=2, y=y, key_mask=ym))


def test_position_bias_and_alibi():
    m = build("attention(x, heads = 4, causal = true, position_bias = pb)",
              "\n  input pb: float[4, T, T]")
    x, pb = torch.randn(2, 5, 32), torch.randn(4, 5, 5)
    close(m(x, pb), reference(x, weights(m), 4, causal=True, bias=pb))
    a = build("attention(x, heads = 4, alibi = true)")
    slopes = [2 ** (-8 * (i + 1) / 4) for i in range(4)]  # 2^(-8i/n), n a power of two
    x = torch.randn(1, 6, 32)
    close(a(x), reference(x, weights(a), 4, alibi=slopes))


def test_alibi_slopes_for_a_head_count_that_is_not_a_power_of_two():
    from nexusdsl.ops.attention_torch import alibi_slopes

    # Press et al.: the 4 slopes of 4 heads, then every other slope of 8 heads
    four = [2 ** (-8 * (i + 1) / 4) for i in range(4)]
    eight = [2 ** (-8 * (i + 1) / 8) for i in range(8)]
    assert torch.allclose(alibi_slopes(6).double(), torch.tensor(four + eight[0:4:2]),
                          rtol=1e-6)


@pytest.mark.parametrize("call,message", [
    ("attention(x, heads = 8, kv_heads = 3)", "kv_heads = 3 must divide heads = 8"),
    ("attention(x, heads = 4, head_dim = 6, rope = rope(fraction = 0.5))",
     "rotary width 3"),
    ("attention(x, heads = 4, window = -1)", "window"),
    ("attention(x, heads = 4, mask = x)", "mask must be bool"),
    ("attention(x, heads = 4, mask = 3)", "`mask` takes a tensor"),
    ("attention(x, heads = 5)", "not divisible by heads = 5"),
])
def test_mistakes_are_located(call, message):
    with pytest.raises(NexusError) as e:
        build(call)
    rendered = e.value.render()
    assert message in rendered and "attention.nx:4:" in rendered


def test_mask_axes_must_match_the_keys():
    with pytest.raises(NexusError, match="must have the axes of the tokens"):
        build("attention(x, heads = 4, mask = m)", "\n  input m: bool[B, S]")
