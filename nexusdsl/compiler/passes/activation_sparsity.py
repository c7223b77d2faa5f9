"""activation-sparsity: the Modular Neural Networks paper's inference-time sparsity. With
`nexus compile --sparsity s`, every activation whose readers are all `linear` layers (the
hidden layer of an MLP) keeps only the top (1 - s) of its values by magnitude at each
position (along the channels) and zeroes the rest: `topk_mask {act, keep}`.

Requires: a verified graph and s in [0, 1). Guarantees: each such activation is masked once.
Keeps: the shapes and every parameter. It changes what the model computes (that is the
point), so no level implies it; with s = 0 it changes nothing.
"""

from __future__ import annotations

import math

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, can_emit
from nexusdsl.compiler.passes.linear_fusion import is_activation
from nexusdsl.ir.graph import Graph, Node


def kept(width: int, sparsity: float) -> int:
    """How many of `width` values survive sparsity s: round((1 - s) * width), at least 1."""
    return max(1, min(width, round((1.0 - sparsity) * width)))


class MaskActivation(RewritePattern):
    """act(x) read only by linears -> topk_mask(x) {act = act, keep = k}"""

    name = "mask-activation"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if p.options.sparsity <= 0 or not is_activation(node) or not can_emit(p, "topk_mask"):
            return False
        users = graph.users(node)
        if not users or any(u.op != "linear" for u in users):
            return False
        width = node.outputs[0].axes[-1].size
        if width is None or math.isnan(p.options.sparsity):
            return False
        act = {"op": node.op, "attrs": dict(node.attrs)}
        attrs = {"keep": kept(width, p.options.sparsity), "act": act}
        graph.replace(node, node.model_copy(update={"op": "topk_mask", "attrs": attrs}))
        p.explain(f"{node.name}: keeps {attrs['keep']} of {width} values per position")
        return True


class ActivationSparsity(PatternPass):
    name = "activation-sparsity"
    patterns = (MaskActivation,)
