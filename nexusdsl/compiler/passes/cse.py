"""cse: common-subexpression elimination. Two nodes that apply the same parameter-free,
deterministic op with the same attributes to the same values compute the same tensors: the
later one is dropped and its users read the earlier one.

Requires: a verified graph. Guarantees: no two mergeable nodes compute the same thing.
Keeps: every parameter (nodes owning parameters are never merged), the outputs' values, and
random ops (`dropout` with p > 0 draws a fresh mask per node). Nested graphs are left alone.
"""

from __future__ import annotations

import json

from nexusdsl.compiler.passes.base import Pass
from nexusdsl.ir.graph import Graph, Node

# Parameter-free ops whose result is not a function of their inputs alone.
RANDOM_OPS = frozenset({"dropout"})


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
        if node.op == "input" or node.params or node.shares or node.regions:
            return None
        if node.op in RANDOM_OPS and node.attrs.get("p", 0) > 0:
            return None
        return json.dumps([node.op, node.attrs, [[r.node, r.index] for r in node.inputs],
                           [t.model_dump(mode="json") for t in node.outputs]], sort_keys=True)

    def merge(self, graph: Graph, node: Node, twin: Node) -> None:
        for i in range(len(node.outputs)):
            graph.replace_all_uses_with(node.ref(i), twin.ref(i))
        graph.erase(node)
        self.record("merge-duplicate", f"{node.name} is {twin.name}")
