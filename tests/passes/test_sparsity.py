"""sparsity-pruning (static `random(density)` wirings compacted) and activation-sparsity
(`--sparsity s`). Static pruning is exact: same outputs and gradients as the dense masked mix,
for both kernels; activation sparsity is checked against top-k written out by hand."""

import math

import pytest
import torch

from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.passes.activation_sparsity import ActivationSparsity, kept
from nexusdsl.compiler.passes.base import PassOptions
from nexusdsl.compiler.passes.sparsity_pruning import SparsityPruning
from nexusdsl.compiler.summary import count_params
from nexusdsl.ir.graph import Graph
from nexusdsl.ops.axis_torch import random_mask
from tests.passes.helpers import assert_same_function, golden, graph_of, ops, run, source

GRID = "x: float[B, i=8, j=6, d=3]"


def with_kernel(graph: Graph, kernel: str) -> Graph:
    graph = Graph.from_json(graph.to_json())
    for node in graph.nodes():
        if node.op == "sparse_mix":
            graph.replace(node, node.model_copy(update={"attrs": {**node.attrs,
                                                                  "kernel": kernel}}))
    return graph


@pytest.mark.parametrize("wiring,extra", [("density = 0.1, seed = 3", ""),
                                          ("density = 0.3, seed = 1", ", causal = true, bias = true"),
                                          ("density = 1.0", "")])
@pytest.mark.parametrize("kernel", ["csr", "gather"])
def test_random_wiring_compacts_exactly(wiring, extra, kernel):
    call = f"mix(x, axes = [i, j], wiring = random({wiring}){extra})"
    before = graph_of(source(f"  output y = {call}", GRID))
    after = run(before, SparsityPruning)
    assert ops(after) == ["sparse_mix"]
    assert_same_function(before, with_kernel(after, kernel))


def test_compaction_golden_and_parameter_count():
    before = graph_of(source("  h = mix(x, axes = [i, j], wiring = random(density = 0.1, "
                             "seed = 0), bias = true)\n  output y = gelu(h)",
                             "x: float[B, i=16, j=16, d=4]"))
    after = run(before, SparsityPruning)
    golden("sparse_mix", before, after)
    dense, sparse = count_params(before)["total"], count_params(after)["total"]
    cells = 256
    assert dense == cells * cells + cells
    assert sparse == round(0.1 * cells * cells) + cells  # exactly the mask's connections
    assert dense / sparse > 9.5


def test_a_dense_checkpoint_loads_into_the_compacted_mix():
    before = graph_of(source("  output y = mix(x, axes = [i, j], wiring = random(density = 0.2,"
                             " seed = 5))", GRID))
    after = run(before, SparsityPruning)
    dense, sparse = lower(before, seed=0), lower(after, seed=1)
    sparse.load_state_dict(dense.state_dict())
    mask = random_mask(48, 0.2, 5)
    assert torch.equal(sparse.get_parameter("mix.weight"), dense.get_parameter("mix.weight")[mask])
    x = torch.randn(2, 8, 6, 3)
    torch.testing.assert_close(sparse(x), dense(x), atol=1e-5, rtol=1e-5)


def test_measured_kernel_choice_is_one_of_the_two():
    before = graph_of(source("  output y = mix(x, axes = [i, j], wiring = random(density = 0.1))",
                             GRID))
    from nexusdsl.compiler.pipeline import PassManager

    manager = PassManager([SparsityPruning], PassOptions(measure=True), check=True)
    after = manager.run(before)
    node = next(n for n in after.nodes() if n.op == "sparse_mix")
    assert node.attrs["kernel"] in ("csr", "gather")
    assert "measured csr" in manager.records[0].notes[0]


# ---------------------------------------------------------------------------- --sparsity


MLP = source("  h = linear(x, 16) |> relu\n  g = gelu(x)\n  output y = linear(h, 4) + g",
             "x: float[B, T, d=4]")


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.0])
def test_activation_sparsity_keeps_the_top_values(sparsity):
    before = graph_of(MLP)
    after = run(before, ActivationSparsity, options=PassOptions(sparsity=sparsity))
    if sparsity == 0:
        assert after.to_json() == before.to_json()
        return
    assert ops(after) == ["linear", "topk_mask", "gelu", "linear", "add"]  # gelu feeds no linear
    if sparsity == 0.9:
        golden("activation_sparsity", before, after)
    m0, m1 = lower(before, seed=0), lower(after, seed=0)
    x = torch.randn(2, 5, 4)
    h = torch.relu(m0.linear(x))  # the reference: top-k of |h| per position, by hand
    k = kept(16, sparsity)
    assert k == max(1, round((1 - sparsity) * 16))
    idx = h.abs().topk(k, dim=-1).indices
    masked = torch.zeros_like(h).scatter(-1, idx, h.gather(-1, idx))
    want = m0.linear_1(masked) + torch.nn.functional.gelu(x)
    torch.testing.assert_close(m1(x), want)
    assert math.isclose((masked != 0).float().mean().item(), k / 16, abs_tol=1 / 16)
