"""`nexus summary --by-node`: one row per node; rows add up to the model's totals, and single
rows match hand-counted formulas."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.compiler.summary import count_params, total_flops
from nexusdsl.tools.node_table import node_rows
from tests.conftest import EXAMPLES
from tests.tools.test_viz import MOE

SMALL = """\
model Small {
  input x: float[B, T, 16]
  h = linear(x, 32) |> gelu
  output y = linear(h, 8, bias = false)
}
"""


def _all_models():
    cases = [(p.stem, nexusdsl.load(p)) for p in EXAMPLES]
    cases.append(("moe", nexusdsl.loads(MOE, "mixed.nx")))
    return [(f"{stem}-{m}", program.elaborate(m)) for stem, program in cases for m in program.models]


@pytest.mark.parametrize("name,graph", _all_models(), ids=[n for n, _ in _all_models()])
def test_rows_add_up_to_the_totals(name, graph):
    rows = node_rows(graph, context=64)
    assert sum(r.params for r in rows) == count_params(graph)["total"]
    flops, _ = total_flops(graph, context=64)
    assert abs(sum(r.flops for r in rows) - flops) <= len(rows)  # per-row rounding only
    top = [r.name for r in rows if r.depth == 0]
    assert top == [n.name for n in graph.nodes() if n.op != "input"]


def test_rows_match_hand_counts():
    graph = nexusdsl.loads(SMALL, "small.nx").elaborate()
    rows = {r.name: r for r in node_rows(graph, context=10)}
    t = 10  # batch 1, T = context
    assert rows["linear"].params == 16 * 32 + 32 and rows["linear"].flops == 2 * t * 16 * 32
    assert rows["linear_1"].params == 32 * 8 and rows["linear_1"].flops == 2 * t * 32 * 8
    assert rows["gelu"].params == 0 and rows["linear"].shape == "f32[B, T, 32]"


def test_experts_are_listed_under_their_moe():
    graph = nexusdsl.loads(MOE, "mixed.nx").elaborate()
    rows = node_rows(graph, context=8)
    inner = [r for r in rows if r.name.startswith("blocks.0.moe.experts.")]
    assert {r.name.split(".")[4] for r in inner} == {"0", "1", "2"}
    assert all(r.depth == 1 for r in inner)
    linear = next(r for r in inner if r.name.endswith("experts.0.mlp.linear"))
    # each expert sees k / n = 2 / 3 of the tokens: 16 -> 32 over 8 tokens
    assert linear.flops == int(2 / 3 * 2 * 8 * 16 * 32)


def test_cli_prints_every_node():
    result = CliRunner().invoke(app, ["summary", "examples/tiny_lm.nx", "--by-node"])
    assert result.exit_code == 0, result.output
    graph = nexusdsl.load("examples/tiny_lm.nx").elaborate()
    for node in graph.nodes():
        if node.op != "input":
            assert node.name in result.output
    assert f"{count_params(graph)['total']:,}" in result.output
    plain = CliRunner().invoke(app, ["summary", "examples/tiny_lm.nx"])
    assert plain.exit_code == 0 and "params" in plain.output and "blocks.0" not in plain.output
