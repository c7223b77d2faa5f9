"""kernel-fusion: ops whose torch form runs many small kernels, replaced by fused kernels
with hand-written backward passes (same attributes, parameters and values):

- `fuse-rmsnorm`: rmsnorm -> fused_rmsnorm (autograd's backward of rms_norm runs about ten
  elementwise kernels; the fused one three, and saves x and 1/rms instead of x_n);
- `depthwise-conv`: a conv with one filter per channel (groups = in = out, stride 1) ->
  depthwise_conv: `kernel` shifted multiply-adds on channels-last tokens, with no transposes
  to channels-first and back (the causal convolution of examples/mnn.nx).

Requires: a verified graph. Guarantees: the patterns above no longer match. Keeps: values up
to float rounding, every parameter (the node keeps its id, name and specs), and nodes whose
parameters are shared or tied, which stay as they are.
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, can_emit, private_params
from nexusdsl.ir.graph import Graph, Node


class FuseRMSNorm(RewritePattern):
    """rmsnorm(x) -> fused_rmsnorm(x)"""

    name = "fuse-rmsnorm"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if node.op != "rmsnorm" or not can_emit(p, "fused_rmsnorm"):
            return False
        if not private_params(graph, node):
            return False
        graph.replace(node, node.model_copy(update={"op": "fused_rmsnorm"}))
        return True


class DepthwiseConv(RewritePattern):
    """conv(x) {groups = C = out, stride = 1} -> depthwise_conv(x)"""

    name = "depthwise-conv"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if node.op != "conv" or not can_emit(p, "depthwise_conv"):
            return False
        a = node.attrs
        width = graph.type_of(node.inputs[0]).axes[-1].size
        if not (a["groups"] == a["out"] == width and a["stride"] == 1):
            return False
        if not private_params(graph, node):
            return False
        attrs = {k: a[k] for k in ("out", "kernel", "causal", "bias")}
        graph.replace(node, node.model_copy(update={"op": "depthwise_conv", "attrs": attrs}))
        return True


class KernelFusion(PatternPass):
    name = "kernel-fusion"
    patterns = (FuseRMSNorm, DepthwiseConv)
