"""The seed examples: THANN's full size counted by hand from its stated sizes (and summarised
on the meta device), its width mistake located, and every seed example learning on real data
in a short run (small sizes, so the suite stays quick)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.compiler.summary import count_params

THANN = "examples/thann.nx"


def thann_parameters(depth: int, vocab=100_000, d=2048, n=16, mult=4, classes=10) -> int:
    """THANN's parameters written out from its stated sizes."""
    embedding = vocab * d
    widths, kernels = [d - 2 * (d // 3), d // 3, d // 3], [3, 5, 7]
    attention = 4 * d * d + 4 * d  # qkv and out, with biases
    tokenizer = sum(w * d * k + w for w, k in zip(widths, kernels)) + attention
    expert = 2 * d * (mult * d) + mult * d + d  # mlp: two linears with biases
    layer = 2 * 2 * d + attention + n * d + n * expert  # 2 layernorms, router, experts
    heads = (d * classes + classes) + (d + 1)  # logits and the value head
    return embedding + tokenizer + depth * layer + 2 * d + heads


def test_thann_full_size_is_counted_as_stated():
    program = nexusdsl.load(THANN)
    for depth in (1, 2):
        assert count_params(program.elaborate("THANN", depth=depth))["total"] == \
            thann_parameters(depth)
    assert thann_parameters(1) == 796_438_539  # the number docs/seeds.md reports


def test_thann_full_size_summary_on_the_meta_device():
    result = CliRunner().invoke(app, ["compile", THANN, "--device", "meta"])
    assert result.exit_code == 0, result.output
    assert "796,438,539" in result.output and "f32[B, classes=10]" in result.output


def test_thann_width_mistake_is_located():
    text = open(THANN).read()
    call = ",\n                    kernels = [3, 5, 7], widths = [dim - 2 * (dim // 3), " \
           "dim // 3, dim // 3])"
    assert call in text
    with pytest.raises(nexusdsl.NexusError) as err:
        nexusdsl.loads(text.replace(call, ")"), THANN)
    message = str(err.value)
    assert message.startswith("stdlib/thann.nx:") and "2046 channels" in message
    assert f"in block thann_encoder called at {THANN}:" in message


SHORT = {"eval_batches": 2, "save_every": 0}


def test_nexus_learns_to_name_the_digits():
    r = nexusdsl.train("examples/nexus.nx", steps=40, batch=16, dim=32, depth=1, **SHORT)
    assert r.before["bpb"] > 7 and r.after["bpb"] < 4, r.after


@pytest.mark.parametrize("model", ["RingSchool", "TreeSchool"])
def test_shuurai_schools_learn_bytes(model):
    r = nexusdsl.train("examples/shuurai.nx", model, steps=30, batch=8, context=32, dim=32,
                       **SHORT)
    assert r.after["bpb"] < r.before["bpb"] - 1.5, r.after


def test_thann_small_configuration_classifies():
    r = nexusdsl.train(THANN, steps=40, data="digits", objective="classify", **SHORT)
    assert r.after["accuracy"] > 0.6, r.after
