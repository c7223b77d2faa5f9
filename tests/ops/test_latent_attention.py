"""`latent_attention` against transformers' own DeepseekV3Attention, built from tiny configs
(with and without a query latent, half-split and interleaved rotary pairs, plain and yarn
positions) with the same weights copied in: outputs, parameter counts, padded batches.

The comparison runs in float64 with transformers' SDPA attention (its eager path takes the
softmax in float32). transformers' RMSNorm computes in float32 whatever its input, so for the
float64 comparison the test runs that same formula in float64 (`rms_in_float64`); a float32
comparison with transformers left as it is checks the float32 path."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as deepseek

import nexusdsl
from nexusdsl.compiler.summary import count_params
from nexusdsl.lang.diagnostics import NexusError

DIM, HEADS, Q_RANK, KV_RANK, NOPE, ROPE, V = 32, 4, 16, 8, 8, 4, 6
TOLERANCE = 1e-10  # relative to the output's largest magnitude, float64

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 1.0,
        "beta_fast": 32.0, "beta_slow": 1.0}
PLAIN = {"rope_type": "default", "rope_theta": 500.0}
NX_ROPE = {"yarn": "rope(interleaved = {i}, scaling = yarn(factor = 4, original = 16, "
                   "mscale = 1, mscale_all_dim = 1))",
           "plain": "rope(theta = 500, interleaved = {i})"}


def config(q_rank: int, interleaved: bool, scaling: str):
    return transformers.DeepseekV3Config(
        hidden_size=DIM, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        q_lora_rank=q_rank or None, kv_lora_rank=KV_RANK, qk_nope_head_dim=NOPE,
        qk_rope_head_dim=ROPE, v_head_dim=V, max_position_embeddings=64,
        rope_parameters=dict(YARN if scaling == "yarn" else PLAIN), rope_interleave=interleaved,
        attn_implementation="sdpa")


def source(q_rank: int, interleaved: bool, scaling: str, causal: bool = True) -> str:
    rope = NX_ROPE[scaling].format(i=str(interleaved).lower())
    return f"""nexus 0.1
model M {{
  input x: float[B, T, {DIM}]
  input mask: bool[B, T]
  output y = latent_attention(x, heads = {HEADS}, q_rank = {q_rank}, kv_rank = {KV_RANK},
                              nope_dim = {NOPE}, rope_dim = {ROPE}, v_dim = {V}, rope = {rope},
                              causal = {str(causal).lower()}, mask = mask)
}}
"""


# our state_dict name -> transformers' DeepseekV3Attention name
NAMES = {"q_a.weight": "q_a_proj.weight", "q_a_norm.weight": "q_a_layernorm.weight",
         "q_b.weight": "q_b_proj.weight", "q.weight": "q_proj.weight",
         "kv_a.weight": "kv_a_proj_with_mqa.weight", "kv_a_norm.weight": "kv_a_layernorm.weight",
         "kv_b.weight": "kv_b_proj.weight", "out.weight": "o_proj.weight"}


def pair(q_rank: int, interleaved: bool, scaling: str, dtype=torch.float64):
    """Our compiled model and transformers' module (with the rotary embedding), same weights;
    the norms' weights are random so that they are checked too."""
    cfg = config(q_rank, interleaved, scaling)
    program = nexusdsl.loads(source(q_rank, interleaved, scaling), "mla.nx")
    ours = nexusdsl.compile(program, dtype="f64" if dtype == torch.float64 else "f32", seed=3)
    with torch.no_grad():
        for key, value in ours.state_dict().items():
            if key.endswith("norm.weight"):
                value.copy_(1 + 0.5 * torch.randn_like(value))
    hf = deepseek.DeepseekV3Attention(cfg, layer_idx=0).to(dtype).eval()
    state = {NAMES[k.removeprefix("latent_attention.")]: v
             for k, v in ours.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    return ours, hf, deepseek.DeepseekV3RotaryEmbedding(cfg), program


def hf_forward(hf, rotary, x, positions, attention_mask=None):
    cos, sin = rotary(x, positions)
    with torch.no_grad():
        return hf(x, (cos, sin), attention_mask)[0]


@pytest.fixture
def rms_in_float64(monkeypatch):
    """transformers' RMSNorm formula, in the input's own precision (it casts to float32)."""
    def forward(self, h):
        variance = h.pow(2).mean(-1, keepdim=True)
        return self.weight * (h * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(deepseek.DeepseekV3RMSNorm, "forward", forward)


def relative_error(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


CASES = [(Q_RANK, True, "yarn"), (Q_RANK, False, "plain"), (0, True, "plain"),
         (0, False, "yarn")]


@pytest.mark.usefixtures("rms_in_float64")
@pytest.mark.parametrize("q_rank,interleaved,scaling", CASES)
def test_equals_transformers_deepseek_v3_attention(q_rank, interleaved, scaling):
    ours, hf, rotary, program = pair(q_rank, interleaved, scaling)
    x = torch.randn(3, 7, DIM, dtype=torch.float64)
    want = hf_forward(hf, rotary, x, torch.arange(7)[None])
    with torch.no_grad():
        got = ours(x, torch.ones(3, 7, dtype=torch.bool))
    assert relative_error(got, want) < TOLERANCE
    assert count_params(program.elaborate())["total"] == sum(p.numel() for p in hf.parameters())


def test_the_yarn_score_scale_and_the_query_latent_matter():
    """The cases above would not notice a wrong score scale or a missing query norm if these
    did not change the output: with yarn's mscale left out of the scale (transformers with a
    plain 1/sqrt scale), and with the query norm's weights changed, the outputs differ."""
    ours, hf, rotary, _ = pair(Q_RANK, True, "yarn")
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    with torch.no_grad():
        got = ours(x, torch.ones(2, 6, dtype=torch.bool))
    hf.scaling = (NOPE + ROPE) ** -0.5
    assert relative_error(got, hf_forward(hf, rotary, x, torch.arange(6)[None])) > 1e-3
    with torch.no_grad():
        ours.state_dict()["latent_attention.q_a_norm.weight"].mul_(2)
        assert relative_error(ours(x, torch.ones(2, 6, dtype=torch.bool)), got) > 1e-3


def test_float32_equals_transformers_float32_as_it_is():
    ours, hf, rotary, _ = pair(Q_RANK, True, "yarn", dtype=torch.float32)
    x = torch.randn(2, 9, DIM)
    want = hf_forward(hf, rotary, x, torch.arange(9)[None])
    with torch.no_grad():
        got = ours(x, torch.ones(2, 9, dtype=torch.bool))
    assert relative_error(got, want) < 1e-5


@pytest.mark.usefixtures("rms_in_float64")
@pytest.mark.parametrize("q_rank,interleaved,scaling", CASES[:2])
def test_a_left_padded_batch_equals_each_sequence_alone(q_rank, interleaved, scaling):
    """Rows padded on the left (mask false) give, at their real tokens, what transformers
    gives for the unpadded sequence: the padding is hidden and positions restart at 0."""
    ours, hf, rotary, _ = pair(q_rank, interleaved, scaling)
    lengths, T = [7, 4, 1], 7
    x = torch.randn(len(lengths), T, DIM, dtype=torch.float64)
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, T - n:] = True
    with torch.no_grad():
        got = ours(x, mask)
    assert torch.isfinite(got).all()  # padded rows see themselves
    for row, n in enumerate(lengths):
        alone = x[row:row + 1, T - n:]
        want = hf_forward(hf, rotary, alone, torch.arange(n)[None])
        assert relative_error(got[row:row + 1, T - n:], want) < TOLERANCE


@pytest.mark.usefixtures("rms_in_float64")
def test_right_padding_with_transformers_own_mask():
    """A right-padded batch against transformers given the same padding as its 4-d boolean
    mask (causal and key padding): equal at every real token."""
    ours, hf, rotary, _ = pair(Q_RANK, False, "plain")
    T = 6
    x = torch.randn(2, T, DIM, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    hf_mask = causal[None, None] & mask[:, None, None, :]
    want = hf_forward(hf, rotary, x, torch.arange(T)[None], hf_mask)
    with torch.no_grad():
        got = ours(x, mask)
    real = mask[..., None].expand_as(got)
    assert relative_error(got[real], want[real]) < TOLERANCE


def test_not_causal_sees_every_real_token():
    """causal = false against the formula: every query sees every key (softmax written out)."""
    text = source(0, False, "plain", causal=False)
    ours = nexusdsl.compile(nexusdsl.loads(text, "mla.nx"), dtype="f64", seed=1)
    w = {k.removeprefix("latent_attention."): v for k, v in ours.state_dict().items()}
    x = torch.randn(1, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        got = ours(x, torch.ones(1, 5, dtype=torch.bool))
    # the reference: the same projections, rotary from the half-split formula, full softmax
    q = (x @ w["q.weight"].T).view(1, 5, HEADS, NOPE + ROPE).transpose(1, 2)
    latent, k_rot = (x @ w["kv_a.weight"].T).split([KV_RANK, ROPE], -1)
    latent = latent / latent.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w[
        "kv_a_norm.weight"]
    kv = (latent @ w["kv_b.weight"].T).view(1, 5, HEADS, NOPE + V).transpose(1, 2)
    inv = 1.0 / (500.0 ** (torch.arange(0, ROPE, 2, dtype=torch.float32) / ROPE))
    angles = torch.arange(5, dtype=torch.float32)[:, None] * inv
    cos, sin = angles.cos().double(), angles.sin().double()

    def rotate(t):
        a, b = t[..., : ROPE // 2], t[..., ROPE // 2:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)

    q = torch.cat((q[..., :NOPE], rotate(q[..., NOPE:])), -1)
    k = torch.cat((kv[..., :NOPE], rotate(k_rot)[:, None].expand(1, HEADS, 5, ROPE)), -1)
    weights = torch.softmax(q @ k.transpose(-1, -2) * (NOPE + ROPE) ** -0.5, -1)
    y = (weights @ kv[..., NOPE:]).transpose(1, 2).reshape(1, 5, HEADS * V)
    assert relative_error(got, y @ w["out.weight"].T) < TOLERANCE


@pytest.mark.parametrize("call,message", [
    ("latent_attention(x, heads = 2, q_rank = 0, kv_rank = 4, nope_dim = 2, rope_dim = 3, "
     "v_dim = 2)", "rotary width 3"),
    ("latent_attention(x, heads = 2, q_rank = 0, kv_rank = 4, nope_dim = 2, rope_dim = 4, "
     "v_dim = 2, rope = false)", "give rope = rope(...)"),
    ("latent_attention(x, heads = 2, q_rank = 0, kv_rank = 4, nope_dim = 2, rope_dim = 4, "
     "v_dim = 2, rope = rope(fraction = 0.5))", "leave `fraction` out"),
    ("latent_attention(x, heads = 2, q_rank = 0, kv_rank = 4, nope_dim = 2, rope_dim = 4, "
     "v_dim = 2, mask = ids)", "mask must be bool"),
    ("latent_attention(x, heads = 2, q_rank = 0, kv_rank = 4, nope_dim = 2, rope_dim = 4, "
     "v_dim = 2, mask = short)", "must have the axes of the tokens"),
    ("latent_attention(x, heads = 2, q_rank = -1, kv_rank = 4, nope_dim = 2, rope_dim = 4, "
     "v_dim = 2)", "q_rank"),
])
def test_mistakes_are_located(call, message):
    text = (f"nexus 0.1\nmodel M {{\n  input x: float[B, T, 8]\n  input ids: int[B, T]\n"
            f"  input short: bool[B, 3]\n  output y = {call}\n}}\n")
    with pytest.raises(NexusError) as caught:
        nexusdsl.loads(text, "bad.nx").elaborate()
    shown = caught.value.render()
    assert message in shown and shown.startswith("bad.nx:6:"), shown
