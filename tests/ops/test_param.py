"""param([n, d]): a free learned tensor with no batch axis, broadcast over the batch where it
is used (`x + param(...)`, and `concat`, which expands an operand of fewer axes over the
leading ones). Checked against transformers' ViTEmbeddings (class token and position table),
its initialisations against their distributions, and its mistakes."""

import math

import pytest
import torch
from transformers import ViTConfig
from transformers.models.vit.modeling_vit import ViTEmbeddings

import nexusdsl
from nexusdsl.ir.types import Axis

from .conftest import build, op_error, tt

VIT = """\
model Embeddings(dim = 32) {
  input pixels: float[B, 3, 16, 16]
  p = conv(pixels, dim, kernel = 8, stride = 8, axes = [2, 3]) as patches
  x = concat(param([1, dim]) as cls, layout(p, "b d h w -> b (h w) d"), axis = 1)
  output y = x + param([5, dim]) as positions
}
"""


def compile_text(text: str, opt: int = 0):
    return nexusdsl.compile(nexusdsl.loads(text, "m.nx"), opt=opt)


def test_a_vit_class_token_and_position_table_are_transformers_vit_embeddings():
    config = ViTConfig(hidden_size=32, image_size=16, patch_size=8, num_channels=3,
                       hidden_dropout_prob=0.0)
    reference = ViTEmbeddings(config).eval()
    model = compile_text(VIT)
    state = reference.state_dict()
    model.load_state_dict({
        "cls.weight": state["cls_token"].view(1, 32),
        "positions.weight": state["position_embeddings"].view(5, 32),
        "patches.weight": state["patch_embeddings.projection.weight"],
        "patches.bias": state["patch_embeddings.projection.bias"]})
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), reference(pixels))


def test_concat_expands_the_token_over_the_batch_at_every_optimisation_level():
    for opt in (0, 1, 2):
        model = compile_text(VIT, opt)
        w = model.state_dict()
        pixels = torch.randn(2, 3, 16, 16)
        y = model(pixels)
        assert y.shape == (2, 5, 32)
        for b in range(2):  # every example starts with the same learned token
            torch.testing.assert_close(y[b, 0], w["cls.weight"][0] + w["positions.weight"][0])


def test_a_lower_rank_operand_may_come_after_the_full_one():
    text = """\
model M(dim = 4) {
  input x: float[B, T, dim]
  output y = concat(x, param([2, dim]) as tail, axis = -2)
}
"""
    model = compile_text(text)
    x = torch.randn(3, 5, 4)
    tail = model.state_dict()["tail.weight"]
    torch.testing.assert_close(model(x), torch.cat([x, tail.expand(3, 2, 4)], dim=1))
    graph = nexusdsl.loads(text, "m.nx").elaborate()
    assert graph.type_of(graph.outputs["y"]).axes[1] == Axis(name="T+2")


def test_axes_are_named_after_plain_hyperparameters_as_linear_names_them():
    graph = nexusdsl.loads("""\
model M(dim = 8, n = 3) {
  input x: float[B, dim]
  output a = param([1, dim])
  output b = param([n, dim * 2])
}
""", "m.nx").elaborate()
    a, b = (graph.type_of(graph.outputs[k]) for k in ("a", "b"))
    assert a.axes == (Axis(size=1), Axis(name="dim", size=8)) and a.dtype == "f32"
    assert b.axes == (Axis(name="n", size=3), Axis(size=16))
    assert a.modality is None


def test_a_table_added_to_every_example_of_a_batch():
    text = """\
model M(dim = 4) {
  input x: float[B, T=6, dim]
  output y = x + param([6, dim], init = normal(std = 1.0)) as table
}
"""
    model = compile_text(text)
    x = torch.randn(3, 6, 4)
    torch.testing.assert_close(model(x), x + model.state_dict()["table.weight"])


def weights_of(init: str, shape: str = "[256, 64]") -> torch.Tensor:
    text = f"model M {{\n  input x: float[B, 4]\n  output y = param({shape}, init = {init}) as p\n}}\n"
    return compile_text(text).state_dict()["p.weight"]


def test_initialisations_have_their_distributions():
    assert torch.equal(weights_of("zeros"), torch.zeros(256, 64))
    assert torch.equal(weights_of("ones"), torch.ones(256, 64))
    n = 256 * 64  # the sample std is within a few standard errors (std / sqrt(2n)) of std
    for init, std in (("normal", 0.02), ("normal(std = 0.5)", 0.5), ("normal(0.1)", 0.1)):
        w = weights_of(init)
        assert abs(w.std().item() - std) < 5 * std / math.sqrt(2 * n), init
        assert abs(w.mean().item()) < 5 * std / math.sqrt(n), init
    w = weights_of("uniform(0.3)")
    assert w.abs().max() <= 0.3 and w.abs().max() > 0.299
    assert abs(w.std().item() - 0.3 / math.sqrt(3)) < 0.01  # U(-b, b): std b / sqrt(3)
    assert torch.equal(weights_of("uniform(bound = 0.3)"), w)  # same seed, same draw


def test_the_ir_records_the_shape_and_the_initialisation():
    graph = nexusdsl.loads("model M(dim = 8) {\n  input x: float[B, dim]\n"
                           "  output y = param([2, dim], init = uniform(0.5))\n}\n",
                           "m.nx").elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "param"]
    assert node.attrs == {"shape": [2, 8], "init": {"kind": "uniform", "bound": 0.5}}
    assert node.inputs == []
    spec = node.params["weight"]
    assert (spec.shape, spec.init, spec.std) == ((2, 8), "uniform", 0.5)


@pytest.mark.parametrize("call,message", [
    ("param([T, 4])", "`param`: argument `shape` should list fixed sizes (integers), but `T` "
                      "has none"),
    ("param([0, 4])", "`param`: argument `shape` should list positive sizes, but one is 0"),
    ("param([])", "`param`: argument `shape` should list at least one size, e.g. [1, dim]"),
    ("param([2], init = uniform())", "`param`: argument `init` uniform(...) needs `bound`: "
                                     "uniform(bound = ...)"),
    ("param([2], init = zeros(0.1))", "unknown function `zeros`"),  # a name, not a call
    ("param([2], init = topk(2))", "`param`: argument `init` should be normal(std), "
                                   "uniform(bound), zeros or ones, got `topk(...)`"),
    ("param([2], init = normal(0.1, 0.2))", "`param`: argument `init` normal(...) takes one "
                                            "setting, `std`"),
    ("param([2], init = normal(bound = 1.0))", "`param`: argument `init` normal takes no "
                                               "`bound`"),
    ("param([2], init = gaussian)", "`param`: argument `init` should be 'normal', 'uniform', "
                                    "'zeros' or 'ones', got the name `gaussian`"),
    ("concat(x, param([4]), axis = 1)", "concat: input 2 f32[4] has 1 axes, but input 1 "
                                        "f32[B, T, 4] has 3; an input with fewer axes is "
                                        "expanded over the leading axes it lacks, so it has "
                                        "no axis T to join along"),
])
def test_mistakes_are_located(call, message):
    text = f"model M {{\n  input x: float[B, T, 4]\n  output y = {call}\n}}\n"
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "m.nx")
    (d,) = info.value.diagnostics
    assert d.message.startswith(message), d.message
    assert d.span.line == 3 and "Traceback" not in str(info.value)


def test_concat_refuses_a_batch_of_vectors_as_one_sequence():
    # [B, d] next to [B, T, d] would otherwise be read as B tokens shared by every example
    err = op_error("concat", tt("B", "T", ("d", 4)), tt("B", ("d", 4)), axis=1)
    assert err.message == ("concat: input 2 f32[B, d=4] has 2 axes, but input 1 "
                           "f32[B, T, d=4] has 3; an input with fewer axes is expanded over "
                           "the leading axes it lacks, but it has axis B itself; give both "
                           "the same axes (with layout, or by naming the axes alike)")
    assert err.about == (0, 1)


def test_concat_of_equal_ranks_keeps_its_rules():
    err = op_error("concat", tt("B", "T", ("d", 4)), tt("B", "T", ("d", 8)), axis=1)
    assert err.message == "concat: axis d is 4 in input 1 but 8 in input 2"
    b = build("concat", tt(("n", 2), ("d", 4)), tt("B", "T", ("d", 4)), axis=-2)
    assert b.attrs.axis == 1 and b.type == tt("B", "2+T", ("d", 4))
    assert "axis d is 4 in input 2 but 6 in input 1" in op_error(
        "concat", tt(2, ("d", 6)), tt("B", "T", ("d", 4)), axis=1).message
