"""The routers and experts of current MoE models against transformers' own modules, built from
tiny configs in float64 with our weights copied in: DeepseekV3MoE (sigmoid scores, the
selection-only correction bias, grouped selection, renormalisation, routed scaling, a shared
expert), MixtralSparseMoeBlock and Qwen3MoeSparseMoeBlock (softmax, renormalised or not).
Also: the correction bias is a saved buffer that no count includes, DeepSeek's balancing
update (`bias_rate`), the shared expert's names, and every mistake located."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as deepseek
from transformers.models.mixtral import modeling_mixtral as mixtral
from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3_moe

import nexusdsl
from nexusdsl.compiler.summary import count_params
from nexusdsl.ir.graph import Graph
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.prune import prune_structured

DIM, EXPERTS, K, HIDDEN, SHARED_HIDDEN = 16, 8, 2, 6, 12
GROUPS, KEPT_GROUPS, SCALE = 4, 2, 2.5
TOLERANCE = 1e-10  # relative to the output's largest magnitude, float64


def compile_source(router: str, shared: str = "", dim: int = DIM, experts: int = EXPERTS,
                   seed: int = 0):
    """Our model; its gate weights are drawn larger than their initialisation, so that the
    tokens' choices differ clearly (no near-ties between experts)."""
    extra = f", shared = {shared}" if shared else ""
    text = f"""nexus 0.1
import std.nn
model M {{
  input x: float[B, T, {dim}]
  experts ffn = {experts} of swiglu(hidden = {HIDDEN})
  output y = moe(x, ffn, router = {router}, balance = 0{extra})
}}
"""
    program = nexusdsl.loads(text, "moe.nx")
    model = nexusdsl.compile(program, dtype="f64", seed=seed).eval()
    with torch.no_grad():
        gate = model.moe.router.weight
        gate.copy_(torch.randn(gate.shape, generator=torch.Generator().manual_seed(seed),
                               dtype=gate.dtype) * 0.5)
    return model, program


def relative_error(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


def hf_params(module) -> int:
    return sum(p.numel() for p in module.parameters())  # transformers' count: no buffers


def copy_experts(state: dict, experts, count: int) -> None:
    """Our swiglu experts (gate `linear`, up `linear_1`, down `linear_2`) into transformers'
    fused experts (gate_up_proj [E, 2I, d] = gate rows then up rows; down_proj [E, d, I])."""
    with torch.no_grad():
        for e in range(count):
            p = f"moe.experts.{e}.swiglu."
            experts.gate_up_proj[e].copy_(torch.cat([state[p + "linear.weight"],
                                                     state[p + "linear_1.weight"]]))
            experts.down_proj[e].copy_(state[p + "linear_2.weight"])


# ---------------------------------------------------------------------------- DeepSeek-V3


def deepseek_config(normalize: bool, groups: int = GROUPS, kept: int = KEPT_GROUPS):
    return transformers.DeepseekV3Config(
        hidden_size=DIM, n_routed_experts=EXPERTS, num_experts_per_tok=K, n_group=groups,
        topk_group=kept, moe_intermediate_size=HIDDEN, n_shared_experts=SHARED_HIDDEN // HIDDEN,
        routed_scaling_factor=SCALE, norm_topk_prob=normalize, hidden_act="silu")


def deepseek_router(normalize: bool, rate: float = 0.0) -> str:
    settings = (f"k = {K}, score = sigmoid, bias = true, groups = {GROUPS}, "
                f"topk_groups = {KEPT_GROUPS}, normalize = {str(normalize).lower()}, "
                f"scale = {SCALE}")
    return f"topk({settings}" + (f", bias_rate = {rate})" if rate else ")")


def deepseek_pair(normalize: bool, rate: float = 0.0):
    """Our moe with a shared expert and DeepseekV3MoE with the same weights; the correction
    bias is random (it starts at zero) so that it decides some choices."""
    ours, program = compile_source(deepseek_router(normalize, rate),
                                   shared=f"swiglu(hidden = {SHARED_HIDDEN})")
    state = ours.state_dict()
    with torch.no_grad():
        state["moe.router.bias"].copy_(0.05 * torch.randn(EXPERTS, dtype=torch.float64))
    hf = deepseek.DeepseekV3MoE(deepseek_config(normalize)).double().eval()
    copy_experts(state, hf.experts, EXPERTS)
    with torch.no_grad():
        hf.gate.weight.copy_(state["moe.router.weight"])
        hf.gate.e_score_correction_bias.copy_(state["moe.router.bias"])
        for ours_name, theirs in (("linear", "gate_proj"), ("linear_1", "up_proj"),
                                  ("linear_2", "down_proj")):
            getattr(hf.shared_experts, theirs).weight.copy_(
                state[f"moe.shared.swiglu.{ours_name}.weight"])
    return ours, hf, program


@pytest.mark.parametrize("normalize", [True, False])
def test_deepseek_v3_moe_equals_transformers(normalize):
    ours, hf, program = deepseek_pair(normalize)
    x = torch.randn(3, 9, DIM, dtype=torch.float64)
    with torch.no_grad():
        want, got = hf(x), ours(x)
    assert relative_error(got, want) < TOLERANCE
    assert count_params(program.elaborate())["total"] == hf_params(hf)


def test_the_deepseek_data_exercises_the_bias_and_the_groups():
    """The comparison above could not tell a router that ignores the correction bias or the
    groups if they never changed a choice: here they do, for some tokens."""
    ours, hf, _ = deepseek_pair(True)
    x = torch.randn(3, 9, DIM, dtype=torch.float64).reshape(-1, DIM)
    with torch.no_grad():
        scores = torch.sigmoid(x.float() @ hf.gate.weight.float().T)
        chosen = hf.gate(x)[2].sort(-1).values
        ungrouped = torch.topk(scores + hf.gate.e_score_correction_bias, K, -1)[1]
        hf.gate.e_score_correction_bias.zero_()
        unbiased = hf.gate(x)[2].sort(-1).values
    assert (chosen != unbiased).any(-1).sum() >= 3, "the bias changes some choices"
    assert (chosen != ungrouped.sort(-1).values).any(-1).sum() >= 3, "so do the groups"


def test_a_batch_equals_each_sequence_alone():
    ours, _, _ = deepseek_pair(True)
    x = torch.randn(3, 5, DIM, dtype=torch.float64)
    with torch.no_grad():
        batch = ours(x)
        for row in range(3):
            assert relative_error(batch[row:row + 1], ours(x[row:row + 1])) < TOLERANCE


# ---------------------------------------------------------------------------- Mixtral, Qwen3-MoE


def test_mixtral_sparse_moe_block_equals_transformers():
    ours, program = compile_source(f"topk(k = {K}, normalize = true)", experts=4)
    cfg = transformers.MixtralConfig(hidden_size=DIM, num_local_experts=4,
                                     num_experts_per_tok=K, intermediate_size=HIDDEN)
    hf = mixtral.MixtralSparseMoeBlock(cfg).double().eval()
    state = ours.state_dict()
    copy_experts(state, hf.experts, 4)
    with torch.no_grad():
        hf.gate.weight.copy_(state["moe.router.weight"])
        x = torch.randn(2, 11, DIM, dtype=torch.float64)
        assert relative_error(ours(x), hf(x)) < TOLERANCE
    assert count_params(program.elaborate())["total"] == hf_params(hf)


@pytest.mark.parametrize("normalize", [True, False])
def test_qwen3_moe_sparse_moe_block_equals_transformers(normalize):
    ours, program = compile_source(f"topk(k = {K}, normalize = {str(normalize).lower()})")
    cfg = transformers.Qwen3MoeConfig(hidden_size=DIM, num_experts=EXPERTS,
                                      num_experts_per_tok=K, moe_intermediate_size=HIDDEN,
                                      norm_topk_prob=normalize)
    hf = qwen3_moe.Qwen3MoeSparseMoeBlock(cfg).double().eval()
    state = ours.state_dict()
    copy_experts(state, hf.experts, EXPERTS)
    with torch.no_grad():
        hf.gate.weight.copy_(state["moe.router.weight"])
        x = torch.randn(2, 11, DIM, dtype=torch.float64)
        assert relative_error(ours(x), hf(x)) < TOLERANCE
    assert count_params(program.elaborate())["total"] == hf_params(hf)


# ---------------------------------------------------------------------------- the bias buffer


def test_the_correction_bias_is_a_saved_buffer_that_no_count_includes():
    ours, program = compile_source("topk(k = 2, score = sigmoid, bias = true)")
    graph = program.elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "moe"]
    assert node.params["router.bias"].buffer
    assert "moe.router.bias" in ours.state_dict()
    assert "moe.router.bias" not in dict(ours.named_parameters())
    weights = sum(p.numel() for p in ours.parameters())
    assert count_params(graph)["total"] == weights  # the buffer's 8 values are not counted
    plain = compile_source("topk(k = 2, score = sigmoid)")[1].elaborate()
    assert count_params(plain)["total"] == weights
    assert Graph.from_json(graph.to_json()).content_hash() == graph.content_hash()
    assert '"buffer": true' in graph.to_json() and '"buffer"' not in plain.to_json()
    # saved and restored with the weights
    with torch.no_grad():
        ours.moe.router.bias.copy_(torch.arange(EXPERTS, dtype=torch.float64))
    again, _ = compile_source("topk(k = 2, score = sigmoid, bias = true)", seed=5)
    again.load_state_dict(ours.state_dict())
    assert torch.equal(again.moe.router.bias, torch.arange(EXPERTS, dtype=torch.float64))


def test_in_half_precision_the_bias_stays_float32():
    text = ("nexus 0.1\nimport std.nn\nmodel M {\n  input x: float[B, T, 8]\n"
            "  experts ffn = 4 of swiglu(hidden = 4)\n"
            "  output y = moe(x, ffn, router = topk(k = 2, score = sigmoid, bias = true))\n}\n")
    model = nexusdsl.compile(nexusdsl.loads(text, "moe.nx"), dtype="bf16")
    assert model.moe.router.bias.dtype == torch.float32
    assert model.moe.router.weight.dtype == torch.bfloat16
    assert model(torch.randn(2, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_bias_rate_moves_the_bias_toward_balance_after_each_training_pass():
    """bias += rate * sign(mean load - load), with the load counted from the choices
    transformers' router makes with the bias before the pass."""
    rate = 0.01
    ours, hf, _ = deepseek_pair(True, rate=rate)
    x = torch.randn(4, 8, DIM, dtype=torch.float64)
    before = ours.moe.router.bias.clone()
    with torch.no_grad():
        ours.eval()(x)
    assert torch.equal(ours.moe.router.bias, before), "no update outside training"
    with torch.no_grad():
        chosen = hf.gate(x)[2].reshape(-1)
        ours.train()(x)
    load = torch.bincount(chosen, minlength=EXPERTS).double()
    assert len(set(load.tolist())) > 1, "the test wants some experts busier than others"
    expected = before + rate * torch.sign(load.mean() - load)
    assert torch.equal(ours.moe.router.bias, expected)
    assert not ours.moe.router.bias.requires_grad


def test_under_torch_compile_the_bias_moves_as_in_eager():
    from nexusdsl.compiler.lower.compile import compile_module

    eager, _, _ = deepseek_pair(True, rate=0.01)
    traced, _, _ = deepseek_pair(True, rate=0.01)
    traced.load_state_dict(eager.state_dict())
    traced = compile_module(traced, backend="eager")
    x = torch.randn(3, 4, DIM, dtype=torch.float64)
    before = eager.moe.router.bias.clone()
    with torch.no_grad():
        for _ in range(3):
            want, got = eager.train()(x), traced.train()(x)
            assert relative_error(got, want) < TOLERANCE
            assert torch.equal(traced.moe.router.bias, eager.moe.router.bias)
    assert not torch.equal(eager.moe.router.bias, before)


def test_the_sigmoid_balance_loss_uses_scores_normalised_per_token():
    text = ("nexus 0.1\nimport std.nn\nmodel M {\n  input x: float[B, T, 8]\n"
            "  experts ffn = 4 of swiglu(hidden = 4)\n"
            "  output y = moe(x, ffn, router = topk(k = 2, score = sigmoid), balance = 0.1)\n}\n")
    model = nexusdsl.compile(nexusdsl.loads(text, "moe.nx"), dtype="f64").train()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    model(x)
    with torch.no_grad():
        scores = torch.sigmoid(x.reshape(-1, 8).float() @ model.moe.router.weight.float().T)
    f = torch.bincount(torch.topk(scores, 2, -1)[1].reshape(-1), minlength=4) / 20
    p = (scores / scores.sum(-1, keepdim=True)).mean(0)
    assert model.moe.aux_loss.detach().item() == pytest.approx(0.1 * 4 * float((f * p).sum()), rel=1e-6)


def test_structured_pruning_leaves_a_biased_or_grouped_router_whole():
    for router, kept in (("topk(k = 1)", 4), ("topk(k = 1, score = sigmoid, bias = true)", 8),
                         ("topk(k = 1, groups = 2)", 8)):
        model, program = compile_source(router)
        graph = program.elaborate()
        pruned = prune_structured(graph, dict(model.state_dict()), 0.5)
        (node,) = [n for n in pruned.graph.nodes() if n.op == "moe"]
        assert node.attrs["experts"] == kept, router


# ---------------------------------------------------------------------------- shared experts


def test_the_shared_expert_is_named_under_its_moe():
    text = """nexus 0.1
import std.nn
model M {
  input x: float[B, T, 8]
  experts ffn = 2 of swiglu(hidden = 4)
  a = moe(x, ffn, shared = swiglu(hidden = 4))
  b = moe(a, ffn, shared = linear(8)) as second
  repeat 2 {
    b = b + moe(b, ffn, shared = mlp(mult = 1))
  }
  repeat 2 shared {
    b = b + moe(b, ffn, shared = mlp(mult = 1))
  }
  output y = moe(b, ffn, shared = swiglu(hidden = 4))
}
"""
    model = nexusdsl.compile(nexusdsl.loads(text, "moe.nx"))
    shared = sorted(k for k in model.state_dict() if ".shared." in k)
    assert shared == sorted([
        "moe.shared.swiglu.linear.weight", "moe.shared.swiglu.linear_1.weight",
        "moe.shared.swiglu.linear_2.weight", "second.shared.linear.weight",
        "second.shared.linear.bias",
        *(f"blocks.{i}.moe.shared.mlp.linear{s}.{p}" for i in (0, 1) for s in ("", "_1")
          for p in ("weight", "bias")),
        *(f"blocks_1.0.moe.shared.mlp.linear{s}.{p}" for s in ("", "_1")
          for p in ("weight", "bias")),
        "moe_1.shared.swiglu.linear.weight", "moe_1.shared.swiglu.linear_1.weight",
        "moe_1.shared.swiglu.linear_2.weight"])


def test_the_shared_expert_is_added_to_the_routed_sum():
    with_shared, _ = compile_source("topk(k = 2)", shared="swiglu(hidden = 4)", experts=4)
    routed_only, _ = compile_source("topk(k = 2)", experts=4)
    routed_only.load_state_dict({k: v for k, v in with_shared.state_dict().items()
                                 if ".shared." not in k})
    s = {k.removeprefix("moe.shared.swiglu."): v for k, v in with_shared.state_dict().items()
         if ".shared." in k}
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    swiglu = (torch.nn.functional.silu(x @ s["linear.weight"].T) * (x @ s["linear_1.weight"].T)
              ) @ s["linear_2.weight"].T
    with torch.no_grad():
        assert relative_error(with_shared(x), routed_only(x) + swiglu) < TOLERANCE


# ---------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize("call,message", [
    ("moe(x, ffn, router = topk(k = 2, groups = 3))", "must divide the 8 experts"),
    ("moe(x, ffn, router = topk(k = 1, groups = 8))", "each group needs at least 2"),
    ("moe(x, ffn, router = topk(k = 2, groups = 2, topk_groups = 3))", "keeps more groups"),
    ("moe(x, ffn, router = topk(k = 3, groups = 4, topk_groups = 1))", "picks more experts "
     "than the 1 kept groups of 2 hold"),
    ("moe(x, ffn, router = topk(k = 2, scale = 0))", "scale must be positive"),
    ("moe(x, ffn, router = topk(k = 2, bias_rate = 0.01))", "give bias = true too"),
    ("moe(x, ffn, router = topk(k = 2, score = cosine))", "should be softmax or sigmoid"),
    ("moe(x, ffn, router = topk(k = 2, bias = 1))", "should be true or false"),
    ("moe(x, ffn, shared = x)", "`shared` takes a block or op"),
    ("moe(x, ffn, shared = linear(4))", "the shared expert turns"),
    ("moe(x, ffn, shared = swiglu(hidden = 4, oops = 1))", "no parameter `oops`"),
])
def test_mistakes_are_located(call, message):
    text = (f"nexus 0.1\nimport std.nn\nmodel M {{\n  input x: float[B, T, 8]\n"
            f"  experts ffn = 8 of swiglu(hidden = 4)\n  output y = {call}\n}}\n")
    with pytest.raises(NexusError) as caught:
        nexusdsl.loads(text, "bad.nx").elaborate()
    shown = caught.value.render()
    assert message in shown and shown.startswith("bad.nx:6:"), shown
