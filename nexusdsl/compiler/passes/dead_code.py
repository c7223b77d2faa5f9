"""dead-code: removes nodes whose results reach no output.

Requires: a verified graph. Guarantees: every remaining non-input node has a path to an
output, or only holds parameters. Keeps: the outputs' values, inputs (a model's signature
never changes), the owners of parameters that live nodes share or tie to, and every
parameter: a dead node that owns parameters becomes a `params` node (same id, name and specs,
no inputs, nothing computed), so state_dict keys and initial values are the same at every
optimisation level and checkpoints load across levels (for MLIR targets, which do not run
`params` nodes, they are removed). A dead node with nested graphs
(experts) is kept whole, for the same reason. Nested graphs are left as they are.
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import Pass, can_emit
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.fused import params_types


class DeadCode(Pass):
    name = "dead-code"

    def run(self, graph: Graph) -> Graph:
        live = self._live(graph)
        for node in reversed(graph.nodes()):
            if node.id in live or node.op in ("input", "params"):
                continue
            if self._owns_params(node) and can_emit(self, "params"):
                graph.replace(node, self._holder(node))
                self.record("keep-params", f"{node.name}: computes nothing, keeps its weights")
            else:
                graph.erase(node)
                self.record("erase-dead")
        return graph

    def _live(self, graph: Graph) -> set[int]:
        work = [graph.node(ref.node) for ref in graph.outputs.values()]
        work += [n for n in graph.nodes() if n.regions]
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
    def _owns_params(node: Node) -> bool:
        return not node.shares and any(not s.tied_to for s in node.params.values())

    @staticmethod
    def _holder(node: Node) -> Node:
        params = {k: s for k, s in node.params.items() if not s.tied_to}
        return node.model_copy(update={
            "op": "params", "attrs": {"was": node.op, "keys": list(params)}, "inputs": [],
            "outputs": params_types(params), "params": params})

    @staticmethod
    def _param_owners(graph: Graph, node: Node) -> list[Node]:
        names = [node.shares] if node.shares else []
        names += [s.tied_to.rsplit(".", 1)[0] for s in node.params.values() if s.tied_to]
        owners = [graph.by_name(n) for n in names]
        return [o for o in owners if o is not None]
