"""activation-sparsity: the Modular Neural Networks paper's inference-time sparsity. With
`nexus compile --sparsity s`, every activation (`Traits.activation`) whose readers are all
projections of the last axis (`Traits.token_projection`: the hidden layer of an MLP) keeps
only the top (1 - s) of its values by magnitude at each position (along the channels) and
zeroes the rest: `topk_mask {act, keep}`.

Requires: a verified graph and s in [0, 1). Guarantees: each such activation is masked once.
Keeps: the shapes and every parameter. It changes what the model computes (that is the
point), so no level implies it; with s = 0 it changes nothing.
"""

from __future__ import annotations

import math

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, can_emit
from nexusdsl.compiler.passes.linear_fusion import is_activation
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.base import op_of
from nexusdsl.ops.fused import TopkMask


def kept(width: int, sparsity: float) -> int:
    """How many of `width` values survive sparsity s: round((1 - s) * width), at least 1."""
    return max(1, min(width, round((1.0 - sparsity) * width)))


class MaskActivation(RewritePattern):
    """act(x) read only by projections -> topk_mask(x) {act = act, keep = k}"""

    name = "mask-activation"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if p.options.sparsity <= 0 or not is_activation(node) or not can_emit(p, TopkMask.name):
            return False
        users = graph.users(node)
        if not users or not all(op_of(u).traits.token_projection for u in users):
            return False
        width = node.outputs[0].axes[-1].size
        if width is None or math.isnan(p.options.sparsity):
            return False
        keep = kept(width, p.options.sparsity)
        attrs = {"keep": keep, "act": {"op": node.op, "attrs": dict(node.attrs)}}
        graph.replace(node, node.model_copy(update={"op": TopkMask.name, "attrs": attrs}))
        p.explain(f"{node.name}: keeps {keep} of {width} values per position")
        return True


class ActivationSparsity(PatternPass):
    name = "activation-sparsity"
    patterns = (MaskActivation,)
