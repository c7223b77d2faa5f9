"""One FLOP count: the summary, `summary --by-node` and the passes' cost model all read
`Op.flops` through compiler/passes/cost.py. Checked against torch's own count of the
multiply-adds the lowered model runs, and against each other on every example."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import nexusdsl
from nexusdsl.compiler.passes.cost import graph_cost
from nexusdsl.compiler.summary import total_flops
from nexusdsl.tools.node_table import node_rows
from tests.conftest import EXAMPLES

# Ops whose FLOPs are all matrix products and convolutions, which torch counts.
PRODUCTS = """\
model Products {
  input x: float[B, T, 8]
  h = linear(x, 16)
  h = attention(h, heads = 2)
  h = conv(h, 16, kernel = 3, groups = 4)
  output y = linear(h, 4, bias = false)
}
"""
GRID = """\
model Grid {
  input x: float[B, i=4, j=5, 3]
  h = mix(x, axis = i, to = 6)
  h = mix(h, axes = [i, j], order = sequential, to = [2, 3])
  output y = mix(h, axes = [i, j], wiring = full)
}
"""


def counted_by_torch(text: str, shape: tuple[int, ...]) -> int:
    """FLOPs torch counts running the model once (attention on SDPA's math path, whose
    matmuls it counts; batch 1)."""
    module = nexusdsl.compile(nexusdsl.loads(text, "m.nx"), opt=0)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(torch.randn(*shape))
    return counter.get_total_flops()


@pytest.mark.parametrize("text,shape", [(PRODUCTS, (1, 12, 8)), (GRID, (1, 4, 5, 3))])
def test_the_summary_counts_what_torch_counts(text, shape):
    graph = nexusdsl.loads(text, "m.nx").elaborate()
    flops, _ = total_flops(graph, context=12)  # batch 1, T = 12
    assert flops == counted_by_torch(text, shape)


def test_hand_counts_of_a_small_model():
    graph = nexusdsl.loads(PRODUCTS, "m.nx").elaborate()
    t, d = 12, 16
    attention = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d  # qkv, scores+sum, out
    want = 2 * t * 8 * d + attention + 2 * t * d * (d // 4) * 3 + 2 * t * d * 4
    assert total_flops(graph, context=t)[0] == want


def _examples():
    return [(f"{p.stem}-{m}", nexusdsl.load(p).elaborate(m))
            for p in EXAMPLES for m in nexusdsl.load(p).models]


@pytest.mark.parametrize("name,graph", _examples(), ids=[n for n, _ in _examples()])
def test_summary_cost_model_and_rows_agree(name, graph):
    flops, _ = total_flops(graph, context=32)
    assert flops == int(graph_cost(graph, context=32).flops)
    rows = node_rows(graph, context=32)
    assert abs(sum(r.flops for r in rows) - flops) <= len(rows)  # rows round one by one


def test_nested_graphs_count_by_the_share_of_tokens_they_see():
    text = ("nexus 0.1\nimport std.nn\n\nmodel M {\n  input x: float[B, T, 8]\n"
            "  experts e = 4 of mlp(mult = 2)\n  output y = moe(x, e, router = topk(k = 1))\n}\n")
    graph = nexusdsl.loads(text, "m.nx").elaborate()
    t = 10
    router = 2 * t * 8 * 4
    expert = 2 * t * 8 * 16 + t * 16 + 2 * t * 16 * 8  # linear, gelu, linear on every token
    assert total_flops(graph, context=t)[0] == router + 4 * expert // 4  # each sees k / n
