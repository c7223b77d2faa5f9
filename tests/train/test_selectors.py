"""`freeze = [...]` and `train = [...]`: globs over parameter names select exactly the
parameters they match (checked by training and comparing every tensor with its value before),
and a glob that matches nothing is a located error at `nexus check` and at `nexus train`."""

import pytest
import torch

import nexusdsl
from nexusdsl.train import distributed
from nexusdsl.train.session import build, configure
from tests.train.models import FAST, TINY, write

STACK = """nexus 0.1
import std.nn
modality text = bytes(code = 0)

model Stack(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  repeat 2 {
    x = x + attention(rmsnorm(x), heads = 2, causal = true)
    x = x + mlp(rmsnorm(x), mult = 2)
  }
  output logits = unembed(rmsnorm(x), vocab = 256) as head
}
"""


def layer(i: int, *parts: str) -> set[str]:
    return {f"blocks.{i}.{p}" for p in parts}


# The parameters of Stack, written out.
ATTENTION = ("attention.qkv.weight", "attention.qkv.bias", "attention.out.weight",
             "attention.out.bias")
MLP = ("mlp.linear.weight", "mlp.linear.bias", "mlp.linear_1.weight", "mlp.linear_1.bias")
NORMS = ("rmsnorm.weight", "rmsnorm_1.weight")
ALL = {"tok.weight", "rmsnorm.weight", "head.weight"} | {
    n for i in (0, 1) for n in layer(i, *ATTENTION, *MLP, *NORMS)}
BIASES = {n for n in ALL if n.endswith(".bias")}


def train_section(*lines: str) -> str:
    return "\ntrain Stack {\n" + "".join(f"  {line}\n" for line in lines) + "}\n"


@pytest.mark.parametrize("lines, frozen", [
    (['freeze = ["blocks.*.attention"]'], layer(0, *ATTENTION) | layer(1, *ATTENTION)),
    (['freeze = [tok, "*.bias"]'], {"tok.weight"} | BIASES),
    (['freeze = ["blocks.1"]'], layer(1, *ATTENTION, *MLP, *NORMS)),
    (['freeze = ["blocks.?.mlp.linear"]'], layer(0, *MLP[:2]) | layer(1, *MLP[:2])),
    (['train = ["*.mlp"]'], ALL - layer(0, *MLP) - layer(1, *MLP)),
    (['train = [blocks, head]', 'freeze = ["*.rmsnorm*"]'],
     {"tok.weight", "rmsnorm.weight"} | layer(0, *NORMS) | layer(1, *NORMS)),
])
def test_selectors_freeze_exactly_the_parameters_they_match(tmp_path, lines, frozen):
    path = write(tmp_path, STACK, train=train_section(*lines))
    before = {k: v.clone() for k, v in nexusdsl.compile(path).state_dict().items()}
    assert before.keys() == ALL
    program = nexusdsl.load(path)
    session = build(program, None, configure(program, None, FAST), distributed.Dist())
    assert {n for n, p in session.module.named_parameters() if not p.requires_grad} == frozen
    after = nexusdsl.train(str(path), steps=3, lr=3e-2, **FAST).model.state_dict()
    unchanged = {k for k in ALL if torch.equal(after[k], before[k])}
    assert unchanged == frozen


def test_a_tied_parameter_trains_only_if_every_name_of_it_does(tmp_path):
    """Tiny's unembed is its embedding: selecting one of the two names does not train it."""
    path = write(tmp_path, TINY, train='\ntrain Tiny {\n  train = [unembed, attention]\n}\n')
    before = nexusdsl.compile(path).state_dict()
    after = nexusdsl.train(str(path), steps=2, lr=3e-2, **FAST).model.state_dict()
    assert torch.equal(after["tok.weight"], before["tok.weight"])
    assert torch.equal(after["unembed.weight"], before["unembed.weight"])
    assert not torch.equal(after["attention.qkv.weight"], before["attention.qkv.weight"])
    assert torch.equal(after["mlp.linear.weight"], before["mlp.linear.weight"])


@pytest.mark.parametrize("line, message", [
    ('freeze = [tok, "blocks.*.atention"]',
     "freeze: `blocks.*.atention` matches no parameter of Stack (its parameters: tok.weight, "
     "blocks.*.rmsnorm.weight, blocks.*.attention.qkv.weight, blocks.*.attention.qkv.bias, "
     "blocks.*.attention.out.weight, blocks.*.attention.out.bias, blocks.*.rmsnorm_1.weight, "
     "blocks.*.mlp.linear.weight, ... (23 in all))"),
    ('train = [mlp]', "train: Stack has no node `mlp` (nodes with parameters: blocks, head, "
     "rmsnorm, tok)"),
    ('train = ["blocks.0.add"]', "train: node `blocks.0.add` has no parameters"),
    ('train = [1]', "train setting `train`: train lists node names or globs over parameter "
     "names"),
])
def test_a_selector_matching_nothing_is_located_at_check_and_at_train(tmp_path, line, message):
    path = write(tmp_path, STACK, train=train_section(line))
    line_no = (STACK + train_section(line)).splitlines().index("  " + line) + 1
    for attempt in (lambda: nexusdsl.load(path), lambda: nexusdsl.train(str(path), steps=1,
                                                                         **FAST)):
        with pytest.raises(nexusdsl.NexusError) as info:
            attempt()
        rendered = info.value.render()
        assert rendered.startswith(f"{path}:{line_no}:3: error: "), rendered
        assert message in rendered
        assert line in rendered  # the source line is shown
