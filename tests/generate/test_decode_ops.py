"""The decodes of the sequence ops besides attention (ops/conv.py, ops/mnn.py, ops/hyena.py):
a causal convolution keeps its last inputs, fast_weights its matrix, Hyena its input
history. For each, and for every shipped example that decodes step by step, a prompt then one
token at a time gives the logits of the full forward at every position, and a left-padded
batch of prompts of different lengths gives each row what the row alone gives; the examples
that cannot are named with the op that stops them."""

from __future__ import annotations

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.lower.decode import Decoder, decode_plan
from tests.conftest import ROOT

MIXERS = {
    "conv": "conv(rmsnorm(x), dim, kernel = 4, causal = true, groups = dim)",
    "conv_dense": "conv(rmsnorm(x), dim, kernel = 3, causal = true, bias = false)",
    "conv_kernel_1": "conv(rmsnorm(x), dim, kernel = 1, causal = true)",
    "fast_weights": "fast_weights(rmsnorm(x), decay = 0.8, rate = 0.3)",
    "fast_weights_wider": "linear(fast_weights(rmsnorm(x), decay = 0.5, rate = 0.2, out = 24, "
                          "bias = false), dim)",
    "fast_weights_no_decay": "fast_weights(rmsnorm(x), decay = 0.0, rate = 0.5)",
    "hyena": "hyena(rmsnorm(x), order = 2, filter = 8, max = 32)",
    "hyena_order_3": "hyena(rmsnorm(x), order = 3, filter = 8, short = 4, max = 16)",
    "hyena_direct": "hyena(rmsnorm(x), order = 1, filter = 8, impl = direct, bias = false)",
}

MODEL = """nexus 0.1
import std.nn
modality text = bytes(code = 0)
model M(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  repeat 2 {
    x = x + MIXER
    x = x + mlp(rmsnorm(x), mult = 2)
  }
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""

DECODING_EXAMPLES = {"tiny_lm.nx": {}, "gpt.nx": {}, "conv_lm.nx": {}}
BLOCKED_EXAMPLES = {  # file, model -> the op that keeps it from decoding step by step
    ("mnn.nx", "MNN"): "layout at blocks.0.layout",  # bytes folded into a grid
    ("shuurai.nx", "RingSchool"): "swarm at swarm",
    ("shuurai.nx", "TreeSchool"): "swarm at swarm",
    ("nexus.nx", "Nexus"): "tag at tag_2",  # text after image and sound in one stream
    ("captioner.nx", "Captioner"): "tag at tag_1",
    ("thann.nx", "THANN"): "learned_tokenizer at thann_encoder.learned_tokenizer",
}


def mixer_model(name: str):
    source = MODEL.replace("MIXER", MIXERS[name])
    return nexusdsl.compile(nexusdsl.loads(source, f"{name}.nx"), dtype="f64", seed=1).eval()


def example(file: str):
    return nexusdsl.compile(ROOT / "examples" / file, dtype="f64", seed=1).eval()


def close(a, b, tol=1e-10):
    assert ((a - b).abs().max() / b.abs().max()).item() <= tol


def check_prompt_then_steps(model, vocab: int = 256):
    tokens = torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        with Decoder(model, batch=2, capacity=13) as decode:
            parts = [decode(tokens[:, :6])] + [decode(tokens[:, t:t + 1]) for t in range(6, 13)]
    close(torch.cat(parts, 1), full)


def check_padded_batch(model, vocab: int = 256):
    gen = torch.Generator().manual_seed(2)
    lengths, more = [8, 3, 5, 1], 5
    rows = [torch.randint(1, vocab, (n + more,), generator=gen) for n in lengths]
    width = max(lengths)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for r, n in enumerate(lengths):  # padded on the left, as generation pads
        tokens[r, width - n:], mask[r, width - n:] = rows[r][:n], True
    with torch.no_grad():
        with Decoder(model, batch=len(lengths), capacity=width + more) as decode:
            outs = [decode(tokens, mask)]
            for t in range(more):
                step = torch.stack([row[n + t] for row, n in zip(rows, lengths)])[:, None]
                outs.append(decode(step))
        for r, n in enumerate(lengths):
            mine = torch.cat([outs[0][r:r + 1, width - n:]] + [o[r:r + 1] for o in outs[1:]], 1)
            close(mine, model(rows[r][None]))


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_prompt_then_steps_equal_the_full_forward(name):
    model = mixer_model(name)
    assert decode_plan(model.graph).blocker is None
    check_prompt_then_steps(model)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_a_padded_batch_of_prompts_equals_each_alone(name):
    check_padded_batch(mixer_model(name))


@pytest.mark.parametrize("file", sorted(DECODING_EXAMPLES))
def test_the_examples_that_decode_step_by_step(file):
    model = example(file)
    assert decode_plan(model.graph).blocker is None
    check_prompt_then_steps(model)
    check_padded_batch(model)


def test_every_example_is_either_decoded_or_named():
    files = sorted(p.name for p in (ROOT / "examples").glob("*.nx"))
    accounted = set(DECODING_EXAMPLES) | {file for file, _ in BLOCKED_EXAMPLES} | {"digits.nx"}
    assert set(files) == accounted  # digits.nx reads pixels: no token input at all


@pytest.mark.parametrize("file,model", sorted(BLOCKED_EXAMPLES))
def test_the_examples_that_cannot_name_the_op(file, model):
    graph = nexusdsl.load(ROOT / "examples" / file).elaborate(model)
    assert decode_plan(graph).blocker == BLOCKED_EXAMPLES[(file, model)]


@pytest.mark.parametrize("mixer,blocker", [
    ("conv(rmsnorm(x), dim, kernel = 3, groups = dim)", "conv at blocks.0.conv"),
    ("hyena(rmsnorm(x), filter = 8, causal = false)", "hyena at blocks.0.hyena"),
])
def test_ops_that_see_later_positions_do_not_decode(mixer, blocker):
    source = MODEL.replace("MIXER", mixer)
    assert decode_plan(nexusdsl.loads(source, "ahead.nx").elaborate()).blocker == blocker


def test_hyena_filters_do_not_depend_on_the_length_they_are_made_for():
    """What lets the decode make the filters once for its capacity: tap t of a filter made
    for 12 positions is tap t of one made for 40."""
    from nexusdsl.ops.hyena_torch import implicit_filters

    model = mixer_model("hyena")
    node = next(n for n in model.graph.nodes() if n.op == "hyena")
    attrs = type(nexusdsl.ops.REGISTRY["hyena"]).Attrs.model_validate(node.attrs)
    m = model.get_submodule(node.name)
    like = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        short, long = implicit_filters(m, 12, attrs, like), implicit_filters(m, 40, attrs, like)
    assert torch.equal(short, long[:, :12])
