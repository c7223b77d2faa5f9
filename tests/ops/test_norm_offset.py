"""rmsnorm against transformers' LlamaRMSNorm (no offset) and Gemma3RMSNorm (offset = 1), bit
for bit in float32, bfloat16 and float16 (half precision normalised in float32 and cast back
in each class's order); its fused form at -O2 giving the same values and gradients close to
autograd's; layernorm against nn.LayerNorm (BERT, ViT and GPT-2 use it as it is)."""

import pytest
import torch
from torch import nn
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import nexusdsl

from .conftest import build, tt

HALF_AND_FULL = [torch.float32, torch.bfloat16, torch.float16]


def norm_model(call: str, width: int = 16):
    return f"model N {{\n  input x: float[B, T, {width}]\n  output y = {call}\n}}\n"


def compiled(call: str, opt: int = 0, dtype: str = "f32", width: int = 16):
    program = nexusdsl.loads(norm_model(call, width), "n.nx")
    return nexusdsl.compile(program, opt=opt, dtype=dtype)


def with_weight(model, weight: torch.Tensor):
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight")).copy_(weight)
    return model


DTYPE_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@pytest.mark.parametrize("dtype", HALF_AND_FULL)
def test_rmsnorm_is_llamas_rmsnorm_bit_for_bit(dtype):
    reference = LlamaRMSNorm(16, eps=1e-5).to(dtype)
    weight = (torch.randn(16) * 0.5 + 1).to(dtype)
    reference.weight.data.copy_(weight)
    model = with_weight(compiled("rmsnorm(x, eps = 1e-5)", dtype=DTYPE_NAMES[dtype]), weight)
    x = (torch.randn(3, 7, 16) * 4).to(dtype)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("dtype", HALF_AND_FULL)
def test_offset_one_is_gemmas_rmsnorm_bit_for_bit(dtype):
    reference = Gemma3RMSNorm(16, eps=1e-6).to(dtype)
    weight = (torch.randn(16) * 0.5).to(dtype)
    reference.weight.data.copy_(weight)
    model = with_weight(compiled("rmsnorm(x, offset = 1.0)", dtype=DTYPE_NAMES[dtype]), weight)
    x = (torch.randn(3, 7, 16) * 4).to(dtype)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_half_precision_differs_from_normalising_in_half():
    # what the float32 statistics buy: torch's own rms_norm in bfloat16 is not Llama's
    weight = torch.randn(64).to(torch.bfloat16)
    x = (torch.randn(4, 9, 64) * 3).to(torch.bfloat16)
    model = with_weight(compiled("rmsnorm(x)", dtype="bf16", width=64), weight)
    in_half = torch.nn.functional.rms_norm(x, (64,), weight, 1e-6)
    with torch.no_grad():
        assert not torch.equal(model(x), in_half)


def test_any_offset_in_double_precision_against_the_formula():
    b = build("rmsnorm", tt("B", "T", ("d", 8)), eps=1e-3, offset=0.5)
    b.module.double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    w = b.module.weight
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-3) * (0.5 + w)
    torch.testing.assert_close(b(x), want, rtol=1e-12, atol=1e-12)


def test_the_gain_starts_at_one_either_way():
    plain, gemma = compiled("rmsnorm(x)"), compiled("rmsnorm(x, offset = 1.0)")
    assert torch.equal(plain.state_dict()["rmsnorm.weight"], torch.ones(16))
    assert torch.equal(gemma.state_dict()["rmsnorm.weight"], torch.zeros(16))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(plain(x), gemma(x))


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("dtype", HALF_AND_FULL)
def test_the_fused_form_at_opt_2_gives_the_same_values(offset, dtype):
    call = f"rmsnorm(x, offset = {offset})"
    name = DTYPE_NAMES[dtype]
    plain, fused = compiled(call, opt=0, dtype=name), compiled(call, opt=2, dtype=name)
    assert [n.op for n in fused.graph.nodes() if not n.is_input] == ["fused_rmsnorm"]
    weight = (torch.randn(16) * 0.5 + (0 if offset else 1)).to(dtype)
    with_weight(plain, weight), with_weight(fused, weight)
    x = (torch.randn(3, 7, 16) * 4).to(dtype)
    with torch.no_grad():
        assert torch.equal(fused(x), plain(x))


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_the_fused_backward_is_autograds(offset):
    call = f"rmsnorm(x, offset = {offset})"
    weight = torch.randn(16) * 0.5 + (0 if offset else 1)
    grads = []
    for opt in (0, 2):
        model = with_weight(compiled(call, opt=opt), weight)
        x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
        target = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2))
        (model(x) * target).sum().backward()
        grads.append((x.grad, next(model.parameters()).grad))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_an_offset_the_ir_is_as_before_offsets_existed():
    plain = nexusdsl.loads(norm_model("rmsnorm(x)"), "n.nx").elaborate()
    gemma = nexusdsl.loads(norm_model("rmsnorm(x, offset = 1.0)"), "n.nx").elaborate()
    (node,) = [n for n in plain.nodes() if n.op == "rmsnorm"]
    assert node.attrs == {"eps": 1e-6}
    (node,) = [n for n in gemma.nodes() if n.op == "rmsnorm"]
    assert node.attrs == {"eps": 1e-6, "offset": 1.0}
    fused = nexusdsl.compile(nexusdsl.loads(norm_model("rmsnorm(x)"), "n.nx"), opt=2)
    assert [n.attrs for n in fused.graph.nodes() if n.op == "fused_rmsnorm"] == [{"eps": 1e-6}]


@pytest.mark.parametrize("eps,bias", [(1e-12, True), (1e-5, True), (1e-6, False)])
def test_layernorm_is_nn_layernorm(eps, bias):
    # BERT: eps 1e-12, GPT-2: 1e-5, ViT: 1e-12; all nn.LayerNorm(hidden, eps)
    b = build("layernorm", tt("B", "T", ("d", 16)), eps=eps, bias=bias)
    reference = nn.LayerNorm(16, eps=eps, bias=bias)
    reference.load_state_dict(b.module.state_dict())
    x = torch.randn(2, 5, 16) * 3 + 1
    with torch.no_grad():
        assert torch.equal(b(x), reference(x))
