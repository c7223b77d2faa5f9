"""fold-constants: folds what is known before the model runs. Nodes that give back their
input (`Op.no_op`: `identity`, `dropout(0)`, `scale(x, 1)`, `shift(x, 0)`) disappear, and chains
of one op that composes with itself (`Op.compose`) become one node (`(x * a) * b` is
`x * (a * b)`, `x + a + b` is `x + (a + b)`).

Requires: a verified graph. Guarantees: no node of the forms above is left. Keeps: the
outputs' values up to float rounding (a folded constant is rounded once instead of twice),
dtypes (a `scale` that turns integers into floats stays), every parameter.
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, forward, sole_user
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.base import attrs_of, op_of


def _same_type(graph: Graph, node: Node) -> bool:
    return len(node.inputs) == 1 and graph.type_of(node.inputs[0]) == node.outputs[0]


class DropNoOp(RewritePattern):
    """identity(x), dropout(x, 0), scale(x, 1), shift(x, 0) -> x"""

    name = "drop-no-op"

    def apply(self, graph, node, p):
        if node.is_input or not op_of(node).no_op(attrs_of(node)) or not _same_type(graph, node):
            return False
        forward(graph, node, node.inputs[0])
        return True


class FoldScalarChain(RewritePattern):
    """scale(scale(x, a), b) -> scale(x, a * b); shift(shift(x, a), b) -> shift(x, a + b)"""

    name = "fold-scalar-chain"

    def apply(self, graph, node, p):
        if node.is_input or len(node.inputs) != 1:
            return False
        inner = graph.node(node.inputs[0].node)
        if inner.op != node.op or sole_user(graph, inner) is not node:
            return False
        attrs = op_of(node).compose(attrs_of(inner), attrs_of(node))
        if attrs is None or not _same_type(graph, node):
            return False
        graph.replace(node, node.model_copy(update={"inputs": list(inner.inputs), "attrs": attrs}))
        graph.erase(inner)
        return True


class FoldConstants(PatternPass):
    name = "fold-constants"
    patterns = (DropNoOp, FoldScalarChain)
