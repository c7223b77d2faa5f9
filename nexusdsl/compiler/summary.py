"""What `nexus compile` prints: inputs and outputs, node count, exact parameter counts and a
FLOP estimate per token. Computed on the IR alone, so it never allocates weights; the FLOPs
are the cost model's (compiler/passes/cost.py), so summaries and pass decisions agree."""

from __future__ import annotations

from typing import Any

from nexusdsl.compiler.passes.cost import graph_cost, positions
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.printer import format_type
from nexusdsl.ops.base import state_specs


def node_params(node: Node) -> int:
    """Parameters a node owns itself: a shared node and tied parameters count zero (they are
    another node's), and so do buffers (state that is not a parameter, as torch counts)."""
    return sum(spec.numel for spec in node.owned_params().values() if not spec.buffer)


def held_params(node: Node) -> int:
    """Parameters a node owns, those of its nested graphs included (a moe's experts)."""
    if node.shares:
        return 0
    return node_params(node) + sum(count_params(region)["total"] for region in node.regions)


def count_params(graph: Graph) -> dict[str, int]:
    """Unique parameters, nested graphs included: shared nodes (with their nested graphs,
    which are their owner's) and tied parameters are counted once, at their owner."""
    total = trainable = frozen = 0
    for _, node in graph.walk(enter=lambda n: not n.shares):
        for spec in node.owned_params().values():
            if spec.buffer:  # persistent state, not a parameter (a router's correction bias)
                continue
            total += spec.numel
            if spec.frozen:
                frozen += spec.numel
            else:
                trainable += spec.numel
    return {"total": total, "trainable": trainable, "frozen": frozen}


def total_flops(graph: Graph, context: int = 256) -> tuple[int, int]:
    """(FLOPs of one forward pass with batch 1, tokens in that pass)."""
    return int(graph_cost(graph, context).flops), positions(graph, context)


def summarize(graph: Graph, context: int = 256, bound: set[str] | None = None) -> dict[str, Any]:
    """What `nexus compile` prints. `bound`: the parameters a `bind` section fills from
    checkpoints (their count is shown beside trainable and frozen)."""
    flops, tokens = total_flops(graph, context)
    params = count_params(graph)
    if bound is not None:
        specs = state_specs(graph)
        params["bound"] = sum(specs[name].numel for name in bound if not specs[name].buffer)
    return {
        "model": graph.name,
        "params": params,
        "nodes": sum(1 for n in graph.nodes() if not n.is_input),
        "inputs": {n.name: format_type(n.type, True) for n in graph.inputs()},
        "outputs": {k: format_type(graph.type_of(v)) for k, v in graph.outputs.items()},
        "flops_per_token": flops // max(tokens, 1),
        "hyper": dict(graph.hyper),
    }
