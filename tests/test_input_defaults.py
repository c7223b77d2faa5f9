"""Inputs with a default (`input mask: bool[B, T] = true`): left out, they are full of it."""

from __future__ import annotations

import pytest
import torch

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.objectives import ports

TEXT = """nexus 0.1
model M {
  input tokens: int[B, T]
  input mask: bool[B, T] = true
  input scale: float[B, 3] = 0.5
  x = embed(tokens, 16, vocab = 50)
  h = attention(x, heads = 2, causal = true, mask = mask)
  output y = h
  output s = scale * 2
}
"""


def model():
    return nexusdsl.compile(nexusdsl.loads(TEXT, "defaults.nx"))


def test_left_out_inputs_are_full_of_their_default_sized_by_the_given_ones():
    m = model()
    tokens = torch.randint(0, 50, (2, 7))
    left_out = m(tokens)
    given = m(tokens, torch.ones(2, 7, dtype=torch.bool), torch.full((2, 3), 0.5))
    by_name = m(tokens=tokens)
    for key in ("y", "s"):
        assert torch.equal(left_out[key], given[key]) and torch.equal(left_out[key], by_name[key])
    assert torch.equal(left_out["s"], torch.ones(2, 3))


def test_a_given_mask_still_counts():
    m = model()
    tokens = torch.randint(0, 50, (1, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    assert not torch.allclose(m(tokens, mask)["y"][0, 4], m(tokens)["y"][0, 4])
    assert torch.allclose(m(tokens, mask)["y"][0, :3], m(tokens[:, :3])["y"][0])


def test_training_feeds_only_the_inputs_without_a_default():
    inputs, _ = ports(nexusdsl.loads(TEXT, "defaults.nx").elaborate())
    assert [p.name for p in inputs] == ["tokens"]


@pytest.mark.parametrize("line,message", [
    ("input m: bool[B, T] = 3", "must be true or false"),
    ("input m: int[B, T] = 0.5", "must be an integer"),
    ("input m: float[B, T] = true", "must be a number"),
])
def test_a_default_of_the_wrong_kind_is_located(line, message):
    text = f"nexus 0.1\nmodel M {{\n  {line}\n  output y = m\n}}\n"
    with pytest.raises(NexusError) as e:
        nexusdsl.loads(text, "bad.nx").elaborate()
    assert message in e.value.render() and "bad.nx:3:" in e.value.render()
