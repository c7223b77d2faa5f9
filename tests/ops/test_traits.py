"""What ops declare about themselves (ops/traits.py and the attribute-dependent answers on
`Op`) is checked against what their torch code computes: the passes rely on it instead of on
op names. Also `attrs_of`, the typed view of a node's attributes."""

from __future__ import annotations

import pytest
import torch

from nexusdsl.ir.graph import Node
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import attrs_of

from .conftest import Built, build, tt

# Attributes for ops whose attributes have no defaults (every op a trait test takes needs an
# entry here or defaults for all of its attributes).
SAMPLE = {"linear": {"out": 4}, "adapter": {"out": 4, "start": "random"},
          "linear_act": {"out": 4, "act": {"op": "gelu", "attrs": {"approx": "none"}}},
          "scale": {"factor": 2.0}, "shift": {"value": -1.5}, "topk_mask": {"keep": 3},
          "partial": {"act": "gelu"}, "dropout": {"p": 0.5}, "softcap": {"c": 2.0}}
X = tt("B", "T", ("d", 6))


def with_trait(trait: str) -> list[str]:
    return sorted(name for name, op in REGISTRY.items() if getattr(op.traits, trait))


def built(name: str, **attrs) -> Built:
    """The op on [B, T, d=6] inputs, in eval mode (dropout: the values a trained model
    computes). A fused form holds the parameters of the op it replaces."""
    op, given = REGISTRY[name], {**SAMPLE.get(name, {}), **attrs}
    inputs = [X] * len(op.inputs)
    b = build(name, *inputs, **given)
    if op.replaces and not b.params:
        fields = REGISTRY[op.replaces].Attrs.model_fields
        held = build(op.replaces, *inputs, **{k: v for k, v in given.items() if k in fields})
        b = Built(b.attrs, b.outputs, held.params, held.module, b.fn)
    b.module.eval()
    return b


@pytest.mark.parametrize("name", with_trait("elementwise"))
def test_elementwise_ops_touch_each_element_alone(name):
    b = built(name)
    x = torch.randn(2, 5, 6)
    x[1, 3, 2] = 0.1
    bumped = x.clone()
    bumped[1, 3, 2] = 0.3  # where no activation saturates
    changed = (b(bumped) - b(x)).abs() > 0
    assert changed.sum() == 1 and changed[1, 3, 2]


@pytest.mark.parametrize("name", with_trait("tokenwise"))
def test_tokenwise_ops_compute_each_position_from_it_alone(name):
    b = built(name)
    inputs = [torch.randn(2, 5, 6) for _ in REGISTRY[name].inputs]
    bumped = [x.clone() for x in inputs]
    for x in bumped:
        x[1, 3] += torch.randn(6)
    changed = (b(*bumped) - b(*inputs)).abs().amax(-1) > 0
    assert changed[1, 3] and changed.sum() == 1


@pytest.mark.parametrize("name", with_trait("token_projection"))
def test_token_projections_hold_a_weight_out_by_in_and_a_bias(name):
    for bias in (True, False):
        b = built(name, bias=bias)
        assert b.params["weight"].shape == (4, 6)
        assert ("bias" in b.params) == bias and (not bias or b.params["bias"].shape == (4,))


@pytest.mark.parametrize("name", with_trait("random"))
def test_random_ops_draw_new_numbers_each_run_unless_they_do_nothing(name):
    b = built(name)
    b.module.train()
    x = torch.randn(4, 8, 6)
    assert not torch.equal(b(x), b(x))
    assert not REGISTRY[name].no_op(b.attrs)


@pytest.mark.parametrize("name,attrs", [("identity", {}), ("dropout", {"p": 0.0}),
                                        ("scale", {"factor": 1.0}), ("shift", {"value": 0.0})])
def test_no_op_attributes_give_the_input_back(name, attrs):
    b = built(name, **attrs)
    b.module.train()
    x = torch.randn(2, 5, 6)
    assert REGISTRY[name].no_op(b.attrs) and torch.equal(b(x), x)
    other = built(name, **SAMPLE.get(name, {}))
    assert name == "identity" or not REGISTRY[name].no_op(other.attrs)


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items()
                                        if type(op).compose is not type(REGISTRY["linear"]).compose))
def test_composed_attributes_do_what_the_two_nodes_do(name):
    op = REGISTRY[name]
    first, second = built(name), built(name, **{k: 0.25 for k in SAMPLE[name]})
    both = built(name, **op.compose(first.attrs, second.attrs))
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(both(x), second(first(x)))


def test_ops_that_compose_are_the_scalar_ones():
    linear = type(REGISTRY["linear"])
    assert sorted(n for n, op in REGISTRY.items() if type(op).compose is not linear.compose) == [
        "scale", "shift"]


def test_a_moe_is_not_pure_and_dropout_is_random():
    assert not REGISTRY["moe"].traits.pure and REGISTRY["dropout"].traits.random
    assert with_trait("random") == ["dropout"]


# ---------------------------------------------------------------------------- attrs_of


def node(op: str, attrs: dict) -> Node:
    return Node(id=0, op=op, name="n", attrs=attrs)


def test_attrs_of_is_the_ops_validated_model():
    a = attrs_of(node("linear", {"out": 4, "bias": False}))
    assert isinstance(a, REGISTRY["linear"].Attrs) and a.out == 4 and a.bias is False
    assert attrs_of(node("linear", {"out": 4})).bias is True  # defaults filled in


def test_attrs_of_is_cached_per_node_and_follows_rewrites():
    n = node("linear", {"out": 4})
    assert attrs_of(n) is attrs_of(n)
    wider = n.model_copy(update={"attrs": {**n.attrs, "out": 8}})
    assert attrs_of(wider).out == 8 and attrs_of(n).out == 4
    renamed = n.model_copy(update={"name": "m"})  # same attributes: the same model
    assert attrs_of(renamed) is attrs_of(n)
    fused = n.model_copy(update={"op": "linear_act", "attrs": {**n.attrs, "act": {"op": "relu"}}})
    assert type(attrs_of(fused)) is REGISTRY["linear_act"].Attrs
