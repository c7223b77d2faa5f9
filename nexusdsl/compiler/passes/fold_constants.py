"""fold-constants: folds what is known before the model runs. Ops that do nothing disappear
(`identity`, `dropout(0)`, `scale(x, 1)`, `shift(x, 0)`), and chains of constant scalings
and shifts become one (`(x * a) * b` is `x * (a * b)`, `x + a + b` is `x + (a + b)`).

Requires: a verified graph. Guarantees: no node of the forms above is left. Keeps: the
outputs' values up to float rounding (a folded constant is rounded once instead of twice),
dtypes (a `scale` that turns integers into floats stays), every parameter.
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, forward, sole_user
from nexusdsl.ir.graph import Graph, Node


def _same_type(graph: Graph, node: Node) -> bool:
    return len(node.inputs) == 1 and graph.type_of(node.inputs[0]) == node.outputs[0]


class DropNoOp(RewritePattern):
    """identity(x), dropout(x, 0), scale(x, 1), shift(x, 0) -> x"""

    name = "drop-no-op"
    NO_OPS = {"identity": None, "dropout": ("p", 0.0), "scale": ("factor", 1.0),
              "shift": ("value", 0.0)}

    def apply(self, graph, node, p):
        if node.op not in self.NO_OPS or not _same_type(graph, node):
            return False
        setting = self.NO_OPS[node.op]
        if setting is not None and node.attrs.get(setting[0]) != setting[1]:
            return False
        forward(graph, node, node.inputs[0])
        return True


class FoldScalarChain(RewritePattern):
    """scale(scale(x, a), b) -> scale(x, a * b); shift(shift(x, a), b) -> shift(x, a + b)"""

    name = "fold-scalar-chain"
    FIELD = {"scale": "factor", "shift": "value"}

    def apply(self, graph, node, p):
        field = self.FIELD.get(node.op)
        if field is None:
            return False
        inner = graph.node(node.inputs[0].node)
        if inner.op != node.op or sole_user(graph, inner) is not node:
            return False
        if not _same_type(graph, node):
            return False
        a, b = inner.attrs[field], node.attrs[field]
        value = a * b if node.op == "scale" else a + b
        attrs = {**node.attrs, field: value}
        graph.replace(node, node.model_copy(update={"inputs": list(inner.inputs), "attrs": attrs}))
        graph.erase(inner)
        return True


class FoldConstants(PatternPass):
    name = "fold-constants"
    patterns = (DropNoOp, FoldScalarChain)
