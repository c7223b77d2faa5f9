"""`nexus summary --by-node`: one row per node with its output shape, its parameters and its
FLOPs, computed like `compiler.summary` (batch 1, symbolic axes `context` long), so the rows
add up to the model's totals. Nodes inside experts and loop bodies are listed under their owner
(`blocks.0.moe.experts.2.mlp.linear`), their FLOPs weighted by the share of tokens they see."""

from __future__ import annotations

from dataclasses import dataclass

from nexusdsl.compiler.summary import symbolic_bindings
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.printer import format_type
from nexusdsl.ir.types import TensorType
from nexusdsl.ops import REGISTRY


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    shape: str
    params: int  # unique parameters: a shared node or a tied weight counts zero here
    flops: int  # forward FLOPs with batch 1 and symbolic axes `context` long
    depth: int  # 0 for a node of the model, 1 inside an expert or loop body, ...


def _sizes(t: TensorType, bindings: dict[str, int], context: int) -> tuple[int, ...]:
    return tuple(a.size if a.size is not None else bindings.get(a.name or "", context) for a in t.axes)


def _own_params(node: Node) -> int:
    if node.shares:
        return 0
    return sum(spec.numel for spec in node.params.values() if not spec.tied_to)


def node_rows(graph: Graph, context: int = 256, prefix: str = "", share: float = 1.0,
              depth: int = 0) -> list[Row]:
    """Every node of `graph` (and of its nodes' regions), in topological order."""
    bindings = symbolic_bindings(graph, context)
    rows = []
    for node in graph.nodes():
        if node.op == "input":
            continue
        op = REGISTRY[node.op]
        attrs = op.Attrs.model_validate(node.attrs)
        ins = [_sizes(graph.type_of(r), bindings, context) for r in node.inputs]
        outs = [_sizes(t, bindings, context) for t in node.outputs]
        flops = int(share * int(op.flops(ins, outs, attrs)))
        shape = ", ".join(format_type(t) for t in node.outputs)
        rows.append(Row(prefix + node.name, node.op, shape, _own_params(node), flops, depth))
        inner_share = share * op.region_share(attrs, len(node.regions)) if node.regions else 0
        for i, region in enumerate(node.regions):
            inner_prefix = f"{prefix}{node.name}.{op.region_name}.{i}."
            inner = node_rows(region, context, inner_prefix, inner_share, depth + 1)
            if node.shares:  # the regions of a shared node are its owner's parameters
                inner = [Row(r.name, r.op, r.shape, 0, r.flops, r.depth) for r in inner]
            rows += inner
    return rows
