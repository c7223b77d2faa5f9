"""axis-fusion, linear-fusion and kernel-fusion: every rule has a golden before/after IR text
and is checked numerically (outputs and gradients, float64) against the unfused graph; the
cost model's choices are checked where they matter; parameters keep names, shapes and
initial values, so a checkpoint saved at opt 0 loads at opt 2."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import nexusdsl
from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.passes.axis_fusion import AxisFusion
from nexusdsl.compiler.passes.kernel_fusion import KernelFusion
from nexusdsl.compiler.passes.linear_fusion import LinearFusion
from nexusdsl.ir.graph import Graph
from nexusdsl.ops.axis import Mix, axial_costs
from tests.conftest import random_inputs
from tests.passes.helpers import assert_same_function, golden, graph_of, ops, optimized, run, source

GRID = "x: float[B, i=4, j=3, d=2]"

# ---------------------------------------------------------------------------- mix chains


def test_consecutive_mixes_of_one_axis_become_one():
    text = source("  h = mix(x, axis = i, to = 6, bias = true)\n"
                  "  output y = mix(h, axis = i, to = 4, bias = true)", GRID)
    before = graph_of(text)
    after = run(before, AxisFusion)
    golden("mix_chain", before, after)
    assert ops(after) == ["params", "mix_chain"]
    assert_same_function(before, after)


def test_chains_of_three_causal_and_linear_maps():
    text = source("  h = mix(x, axis = i, causal = true)\n  h = mix(h, axis = i, bias = true)\n"
                  "  h = mix(h, axis = i, causal = true, bias = true)\n"
                  "  g = linear(linear(h, 8), 5)\n  output y = mix(g, axis = -1, to = 3)", GRID)
    before = graph_of(text)
    after = run(before, AxisFusion)
    assert ops(after).count("mix_chain") == 2 and ops(after).count("params") == 4
    chain = [n for n in after.nodes() if n.op == "mix_chain"]
    assert [len(n.attrs["steps"]) for n in chain] == [3, 3]  # i: three mixes; d: 4 -> 8 -> 5 -> 3
    assert_same_function(before, after)


def test_a_bottleneck_stays_two_maps():
    # 32 -> 2 -> 32: two thin maps (128 multiply-adds per column) beat one 32 x 32 (1024)
    text = source("  h = mix(x, axis = i, to = 2)\n  output y = mix(h, axis = i, to = 32)",
                  "x: float[B, i=32, d=64]")
    before = graph_of(text)
    after = run(before, AxisFusion)
    assert "mix_chain" not in ops(after) and ops(after) == ["axial_mix", "axial_mix"]
    assert_same_function(before, after)


def test_maps_with_other_readers_are_not_fused():
    text = source("  h = mix(x, axis = i)\n  output y = mix(h, axis = i) + h", GRID)
    after = run(graph_of(text), AxisFusion)
    assert "mix_chain" not in ops(after)


# ---------------------------------------------------------------------------- axial mixes

AXIAL = [
    "axes = [i, j]",
    "axes = [i, j], causal = true",
    "axes = [i, j], bias = true",
    "axes = [j, i], order = sequential, to = [5, 2], bias = true",
    "axes = [i, j], share = none, bias = true",
    "axes = [i, j, d], share = [axis, none, all]",
    "axes = [i, d], order = sequential",
    "axis = j, to = 7",
]


@pytest.mark.parametrize("settings", AXIAL)
def test_axial_mixes_run_as_products_or_one_dense_matrix(settings):
    inputs = "x: float[B, i=4, j=4, d=4]" if "all" in settings else GRID
    before = graph_of(source(f"  output y = mix(x, {settings})", inputs))
    after = run(before, AxisFusion)
    assert ops(after) == ["axial_mix"]
    assert_same_function(before, after)
    node = next(n for n in after.nodes() if n.op == "axial_mix")
    for strategy in ("products", "dense"):  # both strategies compute the mix
        if strategy == "dense" and ("bias" in settings or "none" in settings or "[i, d]" in
                                    settings or "axis =" in settings):
            continue
        forced = Graph.from_json(after.to_json())
        forced.replace(forced.node(node.id), forced.node(node.id).model_copy(
            update={"attrs": {**node.attrs, "strategy": strategy}}))
        assert_same_function(before, forced)


def test_the_cost_model_ranks_the_strategies_as_measured():
    # benchmarks/passes.py measures these: products beat einsum (no permute copies), and the
    # dense Kronecker matrix loses to products on every grid tried (its bmm over the batch
    # and the Kronecker products cost more than they save)
    for shape, axes in [((1, 4, 4, 8), [1, 2]), ((64, 4, 4, 64), [1, 2]),
                        ((2, 16, 16, 16, 64), [1, 2, 3])]:
        mix = Mix.Attrs(axes=axes, to=[shape[p] for p in axes], order="parallel",
                        share=["axis"] * len(axes), bias=False)
        costs = axial_costs(shape, mix)
        assert costs["products"].seconds() < costs["einsum"].seconds()
        assert costs["products"].seconds() < costs["dense"].seconds()


def test_axial_products_golden():
    before = graph_of(source("  output y = mix(x, axes = [i, j], order = sequential, "
                             "to = [2, 5], bias = true)", GRID))
    after = run(before, AxisFusion)
    golden("axial_products", before, after)


def test_view_layouts_fold_into_the_axial_mix():
    text = source("  g = layout(x, \"b (i j) d -> b i j d\", i = 4)\n"
                  "  g = mix(g, axes = [i, j], causal = true)\n"
                  "  output y = layout(g, \"b i j d -> b (i j) d\") + x",
                  "x: float[B, T=16, d=8]")
    before = graph_of(text)
    after = run(before, AxisFusion)
    golden("axial_products_layouts", before, after)
    assert ops(after) == ["axial_mix", "add"]
    node = next(n for n in after.nodes() if n.op == "axial_mix")
    assert node.attrs["strategy"] == "products" or node.attrs["strategy"] == "dense"
    assert node.attrs["pre"] and node.attrs["post"]
    assert_same_function(before, after)


def test_permuting_layouts_are_not_folded():
    text = source("  g = layout(x, \"b i j d -> b j i d\")\n"
                  "  output y = mix(g, axes = [i, j])", GRID)
    before = graph_of(text)
    after = run(before, AxisFusion)
    assert ops(after) == ["layout", "axial_mix"]
    assert_same_function(before, after)


# ---------------------------------------------------------------------------- linear-fusion


def test_linear_bias_activation_become_one_module():
    text = source("  h = linear(x, 8) |> gelu\n  h = linear(h, 8, bias = false) |> silu\n"
                  "  output y = partial(linear(h, 4), act = tanh, fraction = 0.5)",
                  "x: float[B, d=4]")
    before = graph_of(text)
    after = run(before, LinearFusion)
    golden("linear_act", before, after)
    assert ops(after) == ["linear_act"] * 3
    assert_same_function(before, after)


def test_a_linear_read_twice_is_not_fused():
    text = source("  h = linear(x, 4)\n  output y = gelu(h) + h", "x: float[B, d=4]")
    assert ops(run(graph_of(text), LinearFusion)) == ["linear", "gelu", "add"]


# ---------------------------------------------------------------------------- kernel-fusion


@pytest.mark.parametrize("kernel,causal", [(4, True), (4, False), (3, False), (1, True),
                                           (5, True)])
def test_depthwise_convolutions_and_norms_fuse(kernel, causal):
    text = source(f"  h = conv(rmsnorm(x), 6, kernel = {kernel}, causal = {str(causal).lower()},"
                  " groups = 6)\n  output y = conv(h, 6, kernel = 3, groups = 3)",
                  "x: float[B, T, d=6]")
    before = graph_of(text)
    after = run(before, KernelFusion)
    assert ops(after) == ["fused_rmsnorm", "depthwise_conv", "conv"]
    if (kernel, causal) == (4, True):
        golden("kernel_fusion", before, after)
    assert_same_function(before, after)


# ---------------------------------------------------------------------------- parameters


def test_a_checkpoint_saved_at_opt_0_loads_at_opt_2(tmp_path):
    program = nexusdsl.load("examples/mnn.nx")
    saved = nexusdsl.compile(program, opt=0, seed=1, depth=1)
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()
               if k != "unembed.weight"}, str(tmp_path / "model.safetensors"))
    model = nexusdsl.compile(program, opt=2, seed=7, depth=1)
    assert {n.op for n in model.graph.nodes()} >= {"axial_mix", "depthwise_conv", "linear_act"}
    state = load_file(str(tmp_path / "model.safetensors"))
    state["unembed.weight"] = state["tok.weight"]  # the tie, as checkpoints store it
    model.load_state_dict(state)
    x = torch.randint(0, 256, (1, 4096))
    with torch.no_grad():
        torch.testing.assert_close(model(x), saved(x), atol=1e-5, rtol=1e-5)


def test_fused_graphs_train_the_same_parameters():
    text = source("  h = mix(x, axis = i, to = 6, bias = true)\n"
                  "  h = gelu(linear(mix(h, axis = i, to = 4, bias = true), 8))\n"
                  "  output y = linear(h, 2)", GRID)
    before = graph_of(text)
    after = optimized(before)
    m0, m2 = lower(before, seed=0), lower(after, seed=0)
    assert [k for k, _ in m0.named_parameters()] == [k for k, _ in m2.named_parameters()]
    x = random_inputs(before)[0]
    for m in (m0, m2):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for (k, a), (_, b) in zip(m0.named_parameters(), m2.named_parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=k)


def test_fused_ops_run_under_torch_compile():
    text = source("  g = conv(rmsnorm(x), 6, kernel = 3, causal = true, groups = 6)\n"
                  "  g = layout(g, \"b (i j) d -> b i j d\", i = 4)\n"
                  "  g = mix(g, axes = [i, j], causal = true) + mix(g, axes = [i, j], wiring = "
                  "random(density = 0.3))\n"
                  "  h = linear(linear(g, 8) |> gelu, 6)\n"
                  "  output y = mix(mix(h, axis = i, to = 5), axis = i, to = 4)",
                  "x: float[B, T=16, d=6]")
    before = graph_of(text)
    after = optimized(before)
    assert {"fused_rmsnorm", "depthwise_conv", "axial_mix", "sparse_mix", "linear_act",
            "mix_chain", "params"} <= set(ops(after))
    m0, m2 = lower(before, seed=0), lower(after, seed=0)
    m2.load_state_dict(m0.state_dict())
    compiled = torch.compile(m2, backend="eager")
    x = torch.randn(2, 16, 6)
    y = compiled(x)
    torch.testing.assert_close(y, m0(x), atol=1e-5, rtol=1e-5)
    y.square().mean().backward()
    assert all(p.grad is not None for p in m2.parameters())
