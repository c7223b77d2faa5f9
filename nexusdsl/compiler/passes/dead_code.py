"""dead-code: removes nodes whose results reach no output.

Requires: a verified graph. Guarantees: every remaining non-input node has a path to an
output, or only holds parameters. Keeps: the outputs' values, inputs (a model's signature
never changes), the owners of parameters that live nodes share or tie to, and every
parameter: a dead node that owns parameters becomes a `params` node (same id, name and specs,
no inputs, nothing computed), so state_dict keys and initial values are the same at every
optimisation level and checkpoints load across levels (for MLIR targets, which do not run
`params` nodes, they are removed). A dead node with nested graphs
(experts) is kept whole, for the same reason, and so is one whose op does something besides
computing its results (`Traits.pure`). Nested graphs are left as they are.
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import Pass, can_emit
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.base import op_of
from nexusdsl.ops.fused import Params, holding


class DeadCode(Pass):
    name = "dead-code"

    def run(self, graph: Graph) -> Graph:
        live = self._live(graph)
        for node in reversed(graph.nodes()):
            if node.id in live or node.is_input or isinstance(op_of(node), Params):
                continue  # inputs are the model's signature; a params node is a holder already
            if self._owns_params(node) and can_emit(self, Params.name):
                graph.replace(node, holding(node, self._untied(node)))
                self.record("keep-params", f"{node.name}: computes nothing, keeps its weights")
            else:
                graph.erase(node)
                self.record("erase-dead")
        return graph

    def _live(self, graph: Graph) -> set[int]:
        work = [graph.node(ref.node) for ref in graph.outputs.values()]
        work += [n for n in graph.nodes() if n.regions or _has_effects(n)]
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
        return bool(node.owned_params())

    @staticmethod
    def _untied(node: Node) -> list[str]:
        return [k for k, s in node.params.items() if not s.tied_to]

    @staticmethod
    def _param_owners(graph: Graph, node: Node) -> list[Node]:
        names = [node.shares] if node.shares else []
        names += [s.tied_to.rsplit(".", 1)[0] for s in node.params.values() if s.tied_to]
        owners = [graph.by_name(n) for n in names]
        return [o for o in owners if o is not None]


def _has_effects(node: Node) -> bool:
    return not node.is_input and not op_of(node).traits.pure
