"""Expert sets, adapters, experts that mix tokens, `route`, and the routing mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nexusdsl
from nexusdsl.compiler.summary import count_params
from nexusdsl.lang.diagnostics import NexusError


def first_error(source: str, name: str = "bad.nx", **hyper) -> str:
    with pytest.raises(NexusError) as info:
        nexusdsl.loads(source, name).elaborate(**hyper)
    return str(info.value)


def test_k_larger_than_the_experts_is_located():
    text = first_error("""import std.nn
model M(dim = 8) {
  input x: float[B, T, dim]
  experts ffn = 4 of mlp(mult = 2)
  output y = moe(x, ffn, router = topk(k = 5))
}
""")
    assert "bad.nx:5:14" in text
    assert "topk(k = 5) picks more experts than the 4 there are" in text


def test_unknown_router_setting_is_located():
    text = first_error("""import std.nn
model M(dim = 8) {
  input x: float[B, T, dim]
  experts ffn = 2 of mlp
  output y = moe(x, ffn, router = knn(k = 1, cords = 4))
}
""")
    assert "bad.nx:5:14" in text and "knn(...) has no setting `cords`" in text


def test_expert_that_cannot_be_adapted_is_located():
    text = first_error("""
block pool(x: [B, T, d]) -> [B, d] {
  return mean(x)
}
model M(dim = 8) {
  input x: float[B, T, dim]
  experts e = [pool, pool]
  output y = moe(x, e)
}
""")
    assert "bad.nx:8:14" in text
    assert "turns f32[B, T, dim=8] into f32[B, dim=8], which cannot be adapted back" in text


def test_adapters_identity_and_zero_skip_and_other_widths():
    source = """import std.nn
block narrow(x: [*, 4]) -> [*, 4] {
  return linear(x, 4)
}
model M(dim = 8) {
  input x: float[B, T, dim]
  experts e = [mlp(mult = 2), narrow]
  output y = moe(x, e, router = topk(k = 2), adapter = true, skip = true)
}
"""
    program = nexusdsl.loads(source, "adapt.nx")
    graph = program.elaborate()
    moe = next(n for n in graph.nodes() if n.op == "moe")
    names = [[n.name for n in r.nodes() if n.op == "adapter"] for r in moe.regions]
    assert names == [["linear_1", "linear_2", "linear_3"]] * 2
    model = nexusdsl.compile(program)
    first, second = model.moe.experts
    assert torch.equal(first.linear_1.weight, torch.eye(8)), "square adapters start as identity"
    assert torch.equal(first.linear_2.weight, torch.eye(8))
    assert first.linear_3.weight.abs().sum() == 0, "the skip starts at zero"
    assert second.linear_1.weight.shape == (4, 8) and second.linear_2.weight.shape == (8, 4)
    x = torch.randn(2, 3, 8)
    state = model.state_dict()
    p = "moe.experts.0.mlp."
    h = F.gelu(F.linear(x, state[p + "linear.weight"], state[p + "linear.bias"]))
    alone = F.linear(h, state[p + "linear_1.weight"], state[p + "linear_1.bias"])
    torch.testing.assert_close(first(x), alone, atol=1e-6, rtol=1e-6)


def test_no_adapter_nodes_when_widths_match():
    graph = nexusdsl.loads("""import std.nn
model M(dim = 8) {
  input x: float[B, T, dim]
  experts e = 2 of mlp(mult = 2)
  output y = moe(x, e)
}
""", "plain.nx").elaborate()
    moe = next(n for n in graph.nodes() if n.op == "moe")
    assert all(n.op != "adapter" for r in moe.regions for n in r.nodes())
    # 2 experts of 8*16+16 + 16*8+8, plus the router 2*8
    assert count_params(graph)["total"] == 2 * (8 * 16 + 16 + 16 * 8 + 8) + 16


def test_experts_that_mix_tokens_run_on_whole_sequences():
    source = """
block att(x: [B, T, d]) -> [B, T, d] {
  return attention(x, heads = 2, causal = true)
}
model M(dim = 8) {
  input x: float[B, T, dim]
  experts e = 3 of att
  output y = moe(x, e, router = topk(k = 2))
}
"""
    model = nexusdsl.compile(nexusdsl.loads(source, "seq.nx"), seed=3)
    assert model.graph.nodes()[1].attrs["sequence"] == [True, True, True]
    x = torch.randn(2, 5, 8)
    probs = torch.softmax(x.reshape(-1, 8) @ model.moe.router.weight.t(), -1)
    w, i = torch.topk(probs, 2, -1)
    gate = torch.zeros(10, 3).scatter(1, i, w)
    want = sum(gate[:, e:e + 1] * model.moe.experts[e](x).reshape(10, 8) for e in range(3))
    torch.testing.assert_close(model(x), want.reshape(2, 5, 8), atol=1e-5, rtol=1e-5)


ROUTE = """
modality text = bytes(code = 0)
modality image = patches(size = 4, channels = 3, code = 1)
modality audio = frames(window = 4, hop = 4, code = 2)
model R(dim = 16) {
  input tokens: text[B, T]
  input img: image[B, 3, 8, 8]
  x = embed(tokens, dim) as tok
  s = concat(tag(x), tag(embed(img, dim)), axis = 1)
  BODY
}
"""


def test_route_sends_tokens_to_the_branch_of_their_code():
    body = "output y = route(s) { text -> linear(4); image -> linear(4) }"
    model = nexusdsl.compile(nexusdsl.loads(ROUTE.replace("BODY", body), "route.nx"))
    tokens, img = torch.randint(0, 256, (2, 5)), torch.randn(2, 3, 8, 8)
    y = model(tokens, img)
    assert y.shape == (2, 9, 4)
    state = model.state_dict()
    text = state["tok.weight"][tokens] + state["tag.code"]
    patches = img.reshape(2, 3, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, 48)
    image = F.linear(patches, state["embed.proj.weight"], state["embed.proj.bias"])
    image = image + state["tag_1.code"]
    want = torch.cat([F.linear(text, state["linear.weight"], state["linear.bias"]),
                      F.linear(image, state["linear_1.weight"], state["linear_1.bias"])], dim=1)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_route_with_different_widths_gives_one_result_per_branch():
    body = """logits, pixels = route(s) { text -> unembed(tie = tok); image -> generate(image) }
  output l = logits
  output p = pixels"""
    model = nexusdsl.compile(nexusdsl.loads(ROUTE.replace("BODY", body), "route.nx"))
    out = model(torch.randint(0, 256, (2, 5)), torch.randn(2, 3, 8, 8))
    assert out["l"].shape == (2, 5, 256) and out["p"].shape == (2, 4, 48)


def test_route_branch_for_a_missing_modality_is_located():
    body = "output y = route(s) { text -> linear(4); audio -> linear(4) }"
    text = first_error(ROUTE.replace("BODY", body))
    assert "bad.nx:10:44" in text
    assert "carries no audio tokens (it carries image, text)" in text


def test_route_branch_for_an_unknown_modality_is_located():
    body = "output y = route(s) { text -> linear(4); picture -> linear(4) }"
    text = first_error(ROUTE.replace("BODY", body))
    assert "bad.nx:10:44: error: unknown modality `picture` in a route branch (the input " \
        "carries: image, text)" in text
