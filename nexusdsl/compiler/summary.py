"""What `nexus compile` prints: inputs and outputs, node count, exact parameter counts and a
FLOP estimate per token. Computed on the IR alone, so it never allocates weights."""

from __future__ import annotations

import math
from typing import Any

from nexusdsl.ir.graph import Graph
from nexusdsl.ir.printer import format_type
from nexusdsl.ir.types import TensorType


def count_params(graph: Graph) -> dict[str, int]:
    """Unique parameters: shared nodes and tied parameters are counted once."""
    total = trainable = frozen = 0
    for node in graph.nodes():
        if node.shares:
            continue
        for inner in map(count_params, node.regions):
            total, trainable, frozen = (total + inner["total"], trainable + inner["trainable"],
                                        frozen + inner["frozen"])
        for spec in node.params.values():
            if spec.tied_to:
                continue
            total += spec.numel
            if spec.frozen:
                frozen += spec.numel
            else:
                trainable += spec.numel
    return {"total": total, "trainable": trainable, "frozen": frozen}


def symbolic_bindings(graph: Graph, context: int = 256) -> dict[str, int]:
    """Sizes for symbolic axes when estimating FLOPs: each input's first axis (the batch) is 1,
    every other symbolic axis is `context` long."""
    bindings: dict[str, int] = {}
    for node in graph.inputs():
        for i, axis in enumerate(node.type.axes):
            if axis.size is None and axis.name and axis.name not in bindings:
                bindings[axis.name] = 1 if i == 0 else context
    return bindings


def _sizes(t: TensorType, bindings: dict[str, int], context: int) -> tuple[int, ...]:
    return tuple(a.size if a.size is not None else bindings.get(a.name or "", context) for a in t.axes)


def total_flops(graph: Graph, context: int = 256) -> tuple[int, int]:
    """(FLOPs of one forward pass with batch 1, tokens in that pass)."""
    from nexusdsl.ops import REGISTRY

    bindings = symbolic_bindings(graph, context)
    flops = 0
    for node in graph.nodes():
        if node.op == "input":
            continue
        op = REGISTRY[node.op]
        attrs = op.Attrs.model_validate(node.attrs)
        ins = [_sizes(graph.type_of(r), bindings, context) for r in node.inputs]
        outs = [_sizes(t, bindings, context) for t in node.outputs]
        flops += int(op.flops(ins, outs, attrs))
        if node.regions:
            share = op.region_share(attrs, len(node.regions))
            flops += int(share * sum(total_flops(g, context)[0] for g in node.regions))
    return flops, _tokens(graph, bindings, context)


def _tokens(graph: Graph, bindings: dict[str, int], context: int) -> int:
    """Positions in one example: every axis after the batch of the first id input (a byte
    sequence [B, T] has T tokens, fixed or not); 1 per example for float-only models."""
    ids = [n.type for n in graph.inputs() if n.type.dtype == "i64"]
    if not ids:
        return 1
    return max(1, math.prod(_sizes(ids[0], bindings, context)[1:]))


def summarize(graph: Graph, context: int = 256) -> dict[str, Any]:
    flops, tokens = total_flops(graph, context)
    return {
        "model": graph.name,
        "params": count_params(graph),
        "nodes": sum(1 for n in graph.nodes() if n.op != "input"),
        "inputs": {n.name: format_type(n.type, True) for n in graph.inputs()},
        "outputs": {k: format_type(graph.type_of(v)) for k, v in graph.outputs.items()},
        "flops_per_token": flops // max(tokens, 1),
        "hyper": dict(graph.hyper),
    }
