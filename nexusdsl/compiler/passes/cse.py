"""cse: common-subexpression elimination. Two nodes that apply the same parameter-free,
deterministic op with the same attributes to the same values compute the same tensors: the
later one is dropped and its users read the earlier one.

Requires: a verified graph. Guarantees: no two mergeable nodes compute the same thing.
Keeps: every parameter (nodes owning parameters are never merged), the outputs' values, ops
with effects besides their results (`Traits.pure`) and random ops (`Traits.random`: dropout
with p > 0 draws a fresh mask per node). Nested graphs are left alone.
"""

from __future__ import annotations

import json

from nexusdsl.compiler.passes.base import Pass
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.base import attrs_of, op_of


class CommonSubexpressions(Pass):
    name = "cse"

    def run(self, graph: Graph) -> Graph:
        seen: dict[str, Node] = {}
        for node in graph.nodes():
            key = self.key(node)
            if key is None:
                continue
            twin = seen.setdefault(key, node)
            if twin is not node:
                self.merge(graph, node, twin)
        return graph

    @staticmethod
    def key(node: Node) -> str | None:
        """What the node computes, or None if it may not be merged."""
        if node.is_input or node.params or node.shares or node.regions:
            return None
        if not deterministic(node):
            return None
        return json.dumps([node.op, node.attrs, [[r.node, r.index] for r in node.inputs],
                           [t.model_dump(mode="json") for t in node.outputs]], sort_keys=True)

    def merge(self, graph: Graph, node: Node, twin: Node) -> None:
        for i in range(len(node.outputs)):
            graph.replace_all_uses_with(node.ref(i), twin.ref(i))
        graph.erase(node)
        self.record("merge-duplicate", f"{node.name} is {twin.name}")


def deterministic(node: Node) -> bool:
    """Whether the node's results are a function of its inputs alone and computing them does
    nothing else. A random op that does nothing with its attributes (dropout(0)) is."""
    op = op_of(node)
    return op.traits.pure and (not op.traits.random or op.no_op(attrs_of(node)))
