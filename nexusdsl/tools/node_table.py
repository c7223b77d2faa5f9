"""`nexus summary --by-node`: one row per node with its output shape, its parameters and its
FLOPs, computed by the cost model as `compiler.summary` computes the totals (batch 1, symbolic
axes `context` long), so the rows add up to the model's totals. Nodes inside experts and loop
bodies are listed under their owner (`blocks.0.moe.experts.2.mlp.linear`), their FLOPs
weighted by the share of tokens they see."""

from __future__ import annotations

from dataclasses import dataclass

from nexusdsl.compiler.passes.cost import Sizes, node_cost, weighted_walk
from nexusdsl.compiler.summary import node_params
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.printer import format_type


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    shape: str
    params: int  # unique parameters: a shared node or a tied weight counts zero here
    flops: int  # forward FLOPs with batch 1 and symbolic axes `context` long
    depth: int  # 0 for a node of the model, 1 inside an expert or loop body, ...


def node_rows(graph: Graph, context: int = 256) -> list[Row]:
    """Every node of `graph` (and of its nodes' regions), in topological order."""
    sizes: dict[int, Sizes] = {}
    rows = []
    for at in weighted_walk(graph):
        node = at.node
        if node.is_input:
            continue
        of = sizes.setdefault(id(at.graph), Sizes(at.graph, context))
        flops = int(at.share * int(node_cost(at.graph, node, of).flops))
        params = 0 if at.shared else node_params(node)  # a shared owner's regions: its owner's
        shape = ", ".join(format_type(t) for t in node.outputs)
        rows.append(Row(at.prefix + node.name, node.op, shape, params, flops, at.depth))
    return rows
