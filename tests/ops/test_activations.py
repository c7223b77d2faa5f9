"""Activations against torch references and explicit loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from nexusdsl.ops import REGISTRY

from .conftest import build, close, op_error, tt

X = tt("B", "T", ("d", 8), modality="text")


@pytest.mark.parametrize("name,attrs,reference", [
    ("relu", {}, lambda x: torch.clamp(x, min=0)),
    ("leaky_relu", {}, lambda x: torch.where(x >= 0, x, 0.25 * x)),
    ("leaky_relu", {"alpha": 0.1}, lambda x: torch.where(x >= 0, x, 0.1 * x)),
    ("hardtanh", {}, lambda x: x.clamp(-1, 1)),
    ("hardtanh", {"min": 0, "max": 6}, lambda x: x.clamp(0, 6)),
    ("elu", {}, lambda x: torch.where(x > 0, x, torch.exp(x) - 1)),
    ("elu", {"alpha": 0.5}, lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
    ("melu", {}, lambda x: x * torch.exp(torch.minimum(x, torch.zeros_like(x)))),
    ("gelu", {}, lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    ("gelu", {"approx": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("silu", {}, lambda x: x / (1 + torch.exp(-x))),
    ("tanh", {}, torch.tanh),
    ("sigmoid", {}, lambda x: 1 / (1 + torch.exp(-x))),
    ("softmax", {}, lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)),
    ("modnorm", {}, lambda x: x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)),
])
def test_activation_matches_reference(name, attrs, reference):
    b = build(name, X, **attrs)
    assert b.type == X and b.params == {}
    x = torch.randn(2, 5, 8, dtype=torch.float64) * 3
    close(b(x), reference(x))


def test_gelu_tanh_formula_and_op_valued_option():
    b = build("gelu", X, approx="tanh")
    x = torch.randn(2, 25, 8, dtype=torch.float64)
    want = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    close(b(x), want)
    # `approx = tanh` names the op `tanh` too, so the elaborator may hand over an op value
    assert REGISTRY["gelu"].Attrs(approx={"op": "tanh", "attrs": {}}).approx == "tanh"
    with pytest.raises(ValidationError):
        REGISTRY["gelu"].Attrs(approx="erf")


def test_softmax_along_a_named_axis():
    b = build("softmax", X, axis="T")
    assert b.attrs.axis == 1
    x = torch.randn(2, 5, 8)
    close(b(x), x.softmax(1))


def test_sort2_sorts_each_pair():
    b = build("sort2", X)
    x = torch.randn(2, 3, 8)
    want = x.clone()
    for i in range(0, 8, 2):
        a, c = x[..., i], x[..., i + 1]
        want[..., i], want[..., i + 1] = torch.minimum(a, c), torch.maximum(a, c)
    close(b(x), want)
    assert "odd size 7" in op_error("sort2", tt("B", ("d", 7))).message


@pytest.mark.parametrize("act,fraction,expected_k", [
    ({"op": "gelu", "attrs": {"approx": "tanh"}}, 0.75, 6),
    ("relu", 0.5, 4),
    ({"op": "silu", "attrs": {}}, 1.0, 8),
])
def test_partial_acts_on_the_first_channels(act, fraction, expected_k):
    b = build("partial", X, act=act, fraction=fraction)
    fn = {"gelu": lambda v: F.gelu(v, approximate="tanh"), "relu": torch.relu,
          "silu": F.silu}[b.attrs.act["op"]]
    x = torch.randn(2, 3, 8)
    want = x.clone()
    for c in range(8):
        if c < expected_k:
            want[..., c] = fn(x[..., c])
    close(b(x), want)


def test_partial_normalises_act_and_rejects_bad_ones():
    b = build("partial", X, act="leaky_relu")
    assert b.attrs.act == {"op": "leaky_relu", "attrs": {"alpha": 0.25}}
    assert "not an elementwise activation" in op_error("partial", X, act="softmax").message
    assert "not an elementwise activation" in op_error("partial", X, act="linear").message
    bad = op_error("partial", X, act={"op": "gelu", "attrs": {"approx": "erf"}})
    assert "partial: act = gelu" in bad.message
    assert "no channel" in op_error("partial", tt("B", ("d", 1)), act="relu").message
    for fraction in (0.0, 1.5):
        with pytest.raises(ValidationError):
            REGISTRY["partial"].Attrs(act="relu", fraction=fraction)
    assert build("partial", tt("B", ("d", 100)), act="relu", fraction=0.57) is not None


def test_activations_need_floats_and_check_settings():
    assert "needs a float tensor" in op_error("relu", tt("B", "T", dtype="i64")).message
    assert "min = 1.0 must be below max = 0.0" in op_error("hardtanh", X, min=1, max=0).message
