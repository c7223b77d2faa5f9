"""Core ops against hand-written torch references, plus their shape rules and errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import nexusdsl
from nexusdsl.ir.types import Axis, CodeSegment
from nexusdsl.ops import REGISTRY

from .conftest import build, close, context, op_error, tt


def copy_params(module: nn.Module, holder: nn.Module) -> None:
    """Copy a reference module's parameters into an op's holder, by matching names."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            holder.get_parameter(name).copy_(p)


# ---------------------------------------------------------------------------- linear


def test_linear_matches_nn_linear():
    b = build("linear", tt("B", "T", ("d", 16)), ctx=context({"out": "hidden"}), out=32)
    assert b.type == tt("B", "T", ("hidden", 32))
    ref = nn.Linear(16, 32)
    copy_params(ref, b.module)
    x = torch.randn(2, 5, 16)
    close(b(x), ref(x))
    assert b.param_count == 16 * 32 + 32
    assert b.params["weight"].init == "uniform" and b.params["weight"].std == 0.25
    assert b.params["bias"].std == 0.25


def test_linear_without_bias_and_anonymous_axis():
    b = build("linear", tt(3, 7), out=4, bias=False)
    assert b.type.axes[-1] == Axis(size=4)
    assert set(b.params) == {"weight"}
    x = torch.randn(3, 7)
    close(b(x), x @ b.module.weight.T)


def test_linear_flops_and_errors():
    attrs = REGISTRY["linear"].Attrs(out=32)
    assert REGISTRY["linear"].flops([(2, 5, 16)], [(2, 5, 32)], attrs) == 2 * 2 * 5 * 16 * 32
    assert "symbolic" in op_error("linear", tt("B", "D"), out=4).message
    for bad in (True, "4", 0, 2.5):
        with pytest.raises(ValidationError):
            REGISTRY["linear"].Attrs(out=bad)
    assert REGISTRY["linear"].Attrs(out=4.0).out == 4


# ---------------------------------------------------------------------------- norms, dropout


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_nn_layernorm(bias):
    b = build("layernorm", tt("B", ("d", 12)), eps=1e-3, bias=bias)
    ref = nn.LayerNorm(12, eps=1e-3, bias=bias)
    copy_params(ref, b.module)
    x = torch.randn(4, 12) * 3 + 1
    close(b(x), ref(x))
    assert b.params["weight"].init == "ones"
    assert (b.params["bias"].init == "zeros") if bias else "bias" not in b.params


def test_rmsnorm_matches_nn_rmsnorm():
    b = build("rmsnorm", tt("B", "T", ("d", 12)))
    assert b.attrs.eps == 1e-6
    ref = nn.RMSNorm(12, eps=1e-6)
    copy_params(ref, b.module)
    x = torch.randn(2, 3, 12)
    close(b(x), ref(x))
    assert b.param_count == 12


def test_norms_need_float_input():
    assert "float" in op_error("rmsnorm", tt("B", ("T", 4), dtype="i64")).message


def test_dropout_is_identity_in_eval_and_scales_in_training():
    b = build("dropout", tt("B", 64), p=0.5)
    x = torch.randn(8, 64)
    b.module.eval()
    close(b(x), x)
    b.module.train()
    torch.manual_seed(0)
    y = b(x)
    kept = y != 0
    close(y[kept], 2 * x[kept])
    assert 0.3 < kept.float().mean() < 0.7
    with pytest.raises(ValidationError):
        REGISTRY["dropout"].Attrs(p=1.5)


def test_identity():
    b = build("identity", tt("B", 3, modality="text"))
    assert b.type == tt("B", 3, modality="text")
    x = torch.randn(2, 3)
    assert b(x) is x


# ---------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("name,fn", [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul)])
def test_binary_ops_broadcast_like_torch(name, fn):
    b = build(name, tt("B", "T", ("d", 8)), tt("T", ("d", 8)))
    assert b.type == tt("B", "T", ("d", 8))
    x, y = torch.randn(2, 5, 8), torch.randn(5, 8)
    close(b(x, y), fn(x, y))


def test_binary_mismatch_names_both_axes_and_sizes():
    err = op_error("add", tt("B", "T", ("dim", 128)), tt("B", "T", 256))
    assert err.message == "shape mismatch: axis dim is 128 on the left, 256 on the right"
    assert err.about == (0, 1)
    err = op_error("mul", tt(("d", 128)), tt(("e", 256)))
    assert err.message == "shape mismatch: axis d is 128 on the left, axis e is 256 on the right"
    err = op_error("add", tt(3, 4), tt(5, 4))
    assert err.message == "shape mismatch: axis -2 is 3 on the left, 5 on the right"


def test_binary_symbolic_axes_match_by_name_only():
    assert op_error("add", tt("B", "T"), tt("B", "S")).message == (
        "shape mismatch: axis T is symbolic T on the left, axis S is symbolic S on the right")
    assert "symbolic T on the left, 16 on the right" in op_error(
        "add", tt("B", "T"), tt("B", 16)).message
    # a fixed size-1 axis broadcasts against a symbolic one, which keeps its name
    assert build("add", tt(("B", 1), 4), tt("T", 4)).type == tt("T", 4)


def test_binary_names_modality_and_dtype():
    left = tt("B", 4, modality="text")
    b = build("add", left, tt(("d", 4)))
    assert b.type == tt("B", ("d", 4), modality="text")  # anonymous left axis takes d
    codes = (CodeSegment(code=1, modality="image", length=Axis(size=3)),)
    b = build("add", tt(3, ("d", 4)), tt(3, 4, modality="image", codes=codes))
    assert b.type.modality == "image" and b.type.codes == codes
    assert build("mul", tt(4, dtype="i64"), tt(4)).type.dtype == "f32"
    assert build("mul", tt(4, dtype="i64"), tt(4, dtype="i64")).type.dtype == "i64"


def test_scale_and_shift():
    x = torch.randn(2, 3)
    close(build("scale", tt("B", 3), factor=0.5)(x), 0.5 * x)
    close(build("shift", tt("B", 3), value=-1.0)(x), x - 1.0)
    assert build("scale", tt("B", 3, dtype="i64"), factor=2).type.dtype == "f32"


# ---------------------------------------------------------------------------- concat, split


def test_concat_sums_fixed_sizes_and_matches_torch_cat():
    b = build("concat", tt("B", 3, ("d", 4)), tt("B", 5, ("d", 4)), axis=1)
    assert b.attrs.axis == 1 and b.type == tt("B", 8, ("d", 4))
    x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    close(b(x, y), torch.cat([x, y], dim=1))


def test_concat_symbolic_and_by_name():
    b = build("concat", tt("B", ("N", 16), ("d", 4)), tt("B", "T", ("d", 4)))
    assert b.type.axes[1] == Axis(name="16+T")
    assert build("concat", tt("B", ("d", 4)), tt("B", ("d", 6)), axis="d").type == tt("B", 10)


def test_concat_records_modal_codes_along_the_sequence():
    words_codes = (CodeSegment(code=0, modality="text", length=Axis(name="T")),)
    image = tt("B", ("N", 16), ("d", 4), modality="image")
    words = tt("B", "T", ("d", 4), modality="text", codes=words_codes)
    out = build("concat", image, words, axis=1).type
    assert out.modality is None
    assert out.codes == (CodeSegment(code=1, modality="image", length=Axis(name="N", size=16)),
                         *words_codes)
    assert build("concat", image, tt("B", "T", ("d", 4)), axis=1).type.codes is None
    both_text = build("concat", words, words, axis=1).type
    assert both_text.modality == "text" and len(both_text.codes) == 2


def test_concat_errors_name_the_axis():
    err = op_error("concat", tt("B", "T", ("d", 4)), tt("B", "T", ("d", 8)), axis=1)
    assert err.message == "concat: axis d is 4 in input 1 but 8 in input 2" and err.about == (0, 1)
    assert "has 2 axes, but input 1 f32[B, T, 4] has 3" in op_error(
        "concat", tt("B", "T", 4), tt("B", 4)).message
    assert "names no axis" in op_error("concat", tt("B", 4), tt("B", 4), axis="q").message


def test_split_equal_parts_and_explicit_sizes():
    b = build("split", tt("B", ("d", 12)), sizes=3)
    assert b.attrs.sizes == [4, 4, 4] and [t.axes[-1].size for t in b.outputs] == [4, 4, 4]
    x = torch.randn(2, 12)
    for got, want in zip(b(x), x.split(4, dim=-1)):
        close(got, want)
    b = build("split", tt(("i", 5), ("d", 3)), sizes=[2, 3], axis="i")
    assert b.attrs.axis == 0
    got = b(torch.arange(15.0).view(5, 3))
    assert [tuple(t.shape) for t in got] == [(2, 3), (3, 3)]


def test_split_errors():
    assert op_error("split", tt("B", ("d", 10)), sizes=3).message == (
        "split: cannot split axis d of size 10 into 3 equal parts")
    assert "add up to 7" in op_error("split", tt("B", ("d", 10)), sizes=[3, 4]).message
    assert "symbolic" in op_error("split", tt("B", "T"), sizes=2).message


# ---------------------------------------------------------------------------- reductions


def test_mean_pools_tokens_and_drops_modality():
    b = build("mean", tt("B", ("N", 16), ("d", 4), modality="image"), axis=1)
    assert b.type == tt("B", ("d", 4))
    x = torch.randn(2, 16, 4)
    close(b(x), x.mean(1))
    kept = build("sum", tt("B", 3, "T", ("d", 4), modality="text"), axis=1)
    assert kept.type == tt("B", "T", ("d", 4), modality="text")
    close(kept(torch.ones(2, 3, 5, 4)), torch.full((2, 5, 4), 3.0))


# ---------------------------------------------------------------------------- conv


def conv_reference(C, out, k, groups, bias):
    return nn.Conv1d(C, out, k, groups=groups, bias=bias)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("k", [1, 3, 4])
def test_conv_same_padding_matches_nn_conv1d(k):
    b = build("conv", tt("B", "T", ("C", 6)), ctx=context({"out": "dim"}), out=4, kernel=k,
              groups=2)
    assert b.type == tt("B", "T", ("dim", 4))
    ref = nn.Conv1d(6, 4, k, groups=2, padding="same")  # torch: (k-1)//2 left, the rest right
    copy_params(ref, b.module)
    x = torch.randn(2, 9, 6)
    close(b(x), ref(x.transpose(1, 2)).transpose(1, 2))
    assert b.param_count == 4 * 3 * k + 4
    assert b.params["weight"].std == 1 / math.sqrt(3 * k)


def test_conv_causal_sees_no_future():
    b = build("conv", tt("B", "T", ("C", 4)), out=4, kernel=3, groups=4, causal=True,
              bias=False)
    ref = nn.Conv1d(4, 4, 3, groups=4, padding=2, bias=False)  # pad both sides, keep the first T
    copy_params(ref, b.module)
    x = torch.randn(6, 7, 4)
    want = ref(x.transpose(1, 2))[..., :7].transpose(1, 2)
    close(b(x), want)
    y = b(x)
    x2 = x.clone()
    x2[..., 5:, :] = 0  # changing the future leaves earlier outputs alone
    close(b(x2)[..., :5, :], y[..., :5, :])


@pytest.mark.parametrize("T", [8, 9])
def test_conv_stride_gives_ceil_length(T):
    b = build("conv", tt("B", ("T", T), ("C", 3)), out=5, kernel=3, stride=2)
    assert b.type.axes[1] == Axis(size=math.ceil(T / 2))
    x = torch.randn(2, T, 3)
    want = F.conv1d(F.pad(x.transpose(1, 2), (1, 1)), b.module.weight, b.module.bias, stride=2)
    close(b(x), want.transpose(1, 2))
    assert build("conv", tt("B", "T", ("C", 3)), out=5, kernel=3, stride=2).type.axes[1] == (
        Axis(name="T/2"))
    flops = REGISTRY["conv"].flops([(2, T, 3)], [(2, math.ceil(T / 2), 5)], b.attrs)
    assert flops == 2 * math.ceil(T / 2) * 5 * 3 * 3 * 2


def test_conv_groups_must_divide():
    err = op_error("conv", tt("B", "T", ("C", 6)), out=4, kernel=3, groups=4)
    assert err.message == "conv: input width C=6 is not divisible by groups = 4"
    assert "out = 8" in op_error("conv", tt("B", "T", ("C", 6)), out=8, kernel=3, groups=3).message


# ---------------------------------------------------------------------------- position


def test_learned_position_slices_the_table():
    b = build("position", tt("B", "T", ("d", 8)), max=16)
    assert b.type == tt("T", ("d", 8)) and b.params["weight"].shape == (16, 8)
    assert b.params["weight"].std == 0.02
    x = torch.randn(2, 5, 8)
    close(b(x), b.module.weight[:5])
    with pytest.raises(ValueError):
        b(torch.randn(1, 17, 8))


@pytest.mark.parametrize("d", [6, 7])
def test_sinusoidal_position_is_vaswani(d):
    b = build("position", tt("B", "T", ("d", d)), max=64, kind="sinusoidal")
    assert b.params == {}
    got = b(torch.randn(2, 10, d))
    want = torch.tensor([[math.sin(t / 10000 ** (i / d)) if i % 2 == 0 else
                          math.cos(t / 10000 ** ((i - 1) / d)) for i in range(d)]
                         for t in range(10)])
    close(got, want, atol=1e-5)


def test_position_errors():
    err = op_error("position", tt("B", ("T", 300), ("d", 8)), max=256)
    assert err.message == "position: axis T has 300 positions, but max = 256"
    with pytest.raises(ValidationError):
        REGISTRY["position"].Attrs(max=4, kind="rotary")


def test_tensors_of_any_rank_are_aligned_by_axis_name():
    """`a + b`, `a * b` broadcast by axis name (docs/language.md, "Blocks and
    calls"). Same rank in another order: the right operand is reordered; fewer axes in another
    order: reordered, then expanded."""
    src = """nexus 0.1
model ByName {
  input a: float[B, T=3, D=4]
  input b: float[B, D=4, T=3]
  input c: float[D=4, B]
  input e: float[T=3, D=4]
  output y = a + b
  output z = c * a
  output w = a - e
}
"""
    m = nexusdsl.compile(nexusdsl.loads(src, "t.nx"))
    a, b, c, e = torch.randn(2, 3, 4), torch.randn(2, 4, 3), torch.randn(4, 2), torch.randn(3, 4)
    out = m(a, b, c, e)
    torch.testing.assert_close(out["y"], a + b.transpose(1, 2))
    torch.testing.assert_close(out["z"], c.T[:, None, :] * a)
    torch.testing.assert_close(out["w"], a - e)  # already aligned: no reordering
    graph = m.graph
    assert graph.by_name("sub").attrs == {}  # the common case keeps no alignment attributes
    assert [str(t) for t in graph.by_name("add").outputs] == ["f32[B, T=3, D=4]"]
