"""softcap(x, c) against its formula, c * tanh(x / c), as Gemma 2 caps its final logits; its
traits (an elementwise activation) at work in linear-fusion and `partial`; its mistakes."""

import pytest
import torch

import nexusdsl
from nexusdsl.ops import REGISTRY

SOURCE = """\
model Capped(dim = 8) {
  input x: float[B, T, dim]
  output logits = softcap(linear(x, 12), 30.0)
}
"""


def gemma2_final_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """transformers' Gemma2ForCausalLM.forward with final_logit_softcapping = cap."""
    logits = logits / cap
    logits = torch.tanh(logits)
    return logits * cap


def test_softcap_is_c_tanh_x_over_c_as_gemma2_caps_its_logits():
    model = nexusdsl.compile(nexusdsl.loads(SOURCE, "m.nx"), opt=0)
    w = model.state_dict()
    x = torch.randn(2, 5, 8) * 40  # logits well beyond the cap, and some below it
    h = x @ w["linear.weight"].T + w["linear.bias"]
    got = model(x)
    torch.testing.assert_close(got, gemma2_final_logits(h, 30.0), rtol=0, atol=1e-5)
    assert got.abs().max() < 30.0 < h.abs().max()


def test_values_far_below_the_cap_pass_almost_unchanged():
    x = torch.linspace(-0.3, 0.3, 61)
    fn = REGISTRY["softcap"].torch_fn(REGISTRY["softcap"].Attrs(c=30.0))
    # tanh(u) = u - u^3/3 + ...: the change is at most |x|^3 / (3 c^2)
    assert (fn(x) - x).abs().max() <= 0.3 ** 3 / (3 * 30.0 ** 2) * 1.01


def test_at_opt_2_it_runs_fused_with_the_linear_before_it():
    plain = nexusdsl.compile(nexusdsl.loads(SOURCE, "m.nx"), opt=0)
    fused = nexusdsl.compile(nexusdsl.loads(SOURCE, "m.nx"), opt=2)
    assert [n.op for n in fused.graph.nodes() if not n.is_input] == ["linear_act"]
    x = torch.randn(2, 5, 8) * 40
    torch.testing.assert_close(fused(x), plain(x))


def test_partial_caps_the_first_channels_only():
    text = SOURCE.replace("softcap(linear(x, 12), 30.0)",
                          "partial(x, softcap(c = 2.0), fraction = 0.5)")
    model = nexusdsl.compile(nexusdsl.loads(text, "m.nx"), opt=0)
    x = torch.randn(3, 4, 8) * 5
    want = torch.cat([2.0 * torch.tanh(x[..., :4] / 2.0), x[..., 4:]], dim=-1)
    torch.testing.assert_close(model(x), want)


@pytest.mark.parametrize("call,message", [
    ("softcap(x, 0.0)", "`softcap`: argument `c` should be greater than 0, got the number 0.0"),
    ("softcap(x, -1)", "`softcap`: argument `c` should be greater than 0, got the number -1"),
    ("softcap(x)", "`softcap` is missing its argument `c`"),
])
def test_mistakes_are_located(call, message):
    text = f"model M {{\n  input x: float[B, 8]\n  output y = {call}\n}}\n"
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "m.nx")
    (d,) = info.value.diagnostics
    assert d.message == message
    assert d.span.line == 3
    assert "m.nx:3:" in str(info.value)
