"""linear-fusion: a projection followed by its activation becomes one `linear_act` module
(matmul, bias and activation in one op: one fewer node to dispatch, one fewer stored
intermediate to look up). The activation is any op declaring `Traits.activation`; the
projection, the op `linear_act` declares it replaces.

Requires: a verified graph. Guarantees: no activation reads a projection whose only reader it
is. Keeps: values exactly (the same kernels run in the same order), the projection's
parameters (same node id, name and specs: state_dict keys and initial values), and
projections whose parameters are shared, tied or read by others, which stay as they are.
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import (
    PatternPass,
    RewritePattern,
    can_emit,
    private_params,
    sole_user,
)
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.base import op_of
from nexusdsl.ops.fused import LinearAct


def is_activation(node: Node) -> bool:
    """A one-input activation node (`Traits.activation`)."""
    return not node.is_input and len(node.inputs) == 1 and op_of(node).traits.activation


class LinearBiasAct(RewritePattern):
    """act(linear(x)) -> linear_act(x) {act = act}"""

    name = "linear-bias-act"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if not is_activation(node) or not can_emit(p, LinearAct.name):
            return False
        linear = graph.node(node.inputs[0].node)
        if linear.op != LinearAct.replaces or sole_user(graph, linear) is not node:
            return False
        if not private_params(graph, linear):
            return False
        act = {"op": node.op, "attrs": dict(node.attrs)}
        fused = linear.model_copy(update={"op": LinearAct.name,
                                          "attrs": {**linear.attrs, "act": act},
                                          "outputs": list(node.outputs)})
        graph.replace(linear, fused)
        graph.replace_all_uses_with(node.ref(), fused.ref())
        graph.erase(node)
        return True


class LinearFusion(PatternPass):
    name = "linear-fusion"
    patterns = (LinearBiasAct,)
