"""kernel-fusion: ops whose torch form runs many small kernels, replaced by fused kernels
with hand-written backward passes (same inputs, parameters and values). A fused kernel
declares the op it stands in for (`Op.replaces`) and, through `Op.fuse`, the nodes of that op
it can take over and its attributes for them; this pass makes every swap that applies.
Today:

- rmsnorm -> fused_rmsnorm (autograd's backward of rms_norm runs about ten elementwise
  kernels; the fused one three, and saves x and 1/rms instead of x_n);
- a conv with one filter per channel (groups = in = out, stride 1) -> depthwise_conv:
  `kernel` shifted multiply-adds on channels-last tokens, with no transposes to
  channels-first and back (the causal convolution of examples/mnn.nx).

Requires: a verified graph. Guarantees: no node is left that a fused kernel could take over.
Keeps: values up to float rounding, every parameter (the node keeps its id, name and specs),
and nodes whose parameters are shared or tied, which stay as they are. Each swap is counted
under the fused op's name, kebab-cased like a pattern's (`fused-rmsnorm`, `depthwise-conv`).
"""

from __future__ import annotations

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, can_emit, private_params
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops.base import Op, attrs_of


def fused_forms(op: str) -> list[Op]:
    """The registered ops that declare they stand in for `op` (those that are not drop-in
    kernels turn every node down in `fuse`)."""
    from nexusdsl.ops import REGISTRY

    return [fused for fused in REGISTRY.values() if fused.replaces == op]


class SwapForFusedKernel(RewritePattern):
    """op(x) -> fused(x), where a fused kernel declares it replaces op and accepts the node"""

    name = "fused-kernel"

    def apply(self, graph: Graph, node: Node, p) -> bool | str:
        if node.is_input:
            return False
        inputs = [graph.type_of(r) for r in node.inputs]
        for kernel in fused_forms(node.op):
            if not can_emit(p, kernel.name):
                continue
            attrs = kernel.fuse(attrs_of(node), inputs)
            if attrs is None or not private_params(graph, node):
                continue
            graph.replace(node, node.model_copy(update={"op": kernel.name, "attrs": attrs}))
            return kernel.name.replace("_", "-")  # counted per fused op: `depthwise-conv x2`
        return False


class KernelFusion(PatternPass):
    name = "kernel-fusion"
    patterns = (SwapForFusedKernel,)
