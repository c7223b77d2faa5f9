"""dead-code: removes nodes whose results reach no output.

Requires: a verified graph. Guarantees: every remaining non-input node has a path to an output.
Keeps: the outputs' values, inputs (a model's signature never changes), and the owners of
parameters that live nodes share or tie to."""

from __future__ import annotations

from nexusdsl.compiler.passes.base import Pass
from nexusdsl.ir.graph import Graph, Node


class DeadCode(Pass):
    name = "dead-code"

    def run(self, graph: Graph) -> Graph:
        live = self._live(graph)
        for node in reversed(graph.nodes()):
            if node.id not in live and node.op != "input":
                graph.erase(node)
        return graph

    def _live(self, graph: Graph) -> set[int]:
        work = [graph.node(ref.node) for ref in graph.outputs.values()]
        live: set[int] = set()
        while work:
            node = work.pop()
            if node.id in live:
                continue
            live.add(node.id)
            work.extend(graph.predecessors(node))
            work.extend(self._param_owners(graph, node))
        return live

    @staticmethod
    def _param_owners(graph: Graph, node: Node) -> list[Node]:
        names = [node.shares] if node.shares else []
        names += [s.tied_to.rsplit(".", 1)[0] for s in node.params.values() if s.tied_to]
        owners = [graph.by_name(n) for n in names]
        return [o for o in owners if o is not None]
