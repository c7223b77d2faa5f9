"""Fused ops (family "fused"): what the optimizer rewrites user ops into. Users never write
them; they appear in the IR after `--opt 2` (`nexus compile --emit ir -O 2`).

How parameters survive fusion (so a model compiled at `--opt 2` loads a checkpoint saved at
`--opt 0`, and the same seed gives the same initial weights at every level):

- a fused node that replaces one parameter-owning node takes that node's id, name and
  parameter specs: its state_dict keys, shapes and initial values are the original's;
- a node whose parameters a fused node absorbs becomes a `params` node (same id, name and
  specs) that only hands its parameters to the fused node as tensor inputs; the fused node
  computes the fused weight (a product of matrices, a Kronecker sum) in its forward pass, so
  gradients flow to the original parameters;
- `sparse_mix` alone changes a parameter's shape: a `random(density)` mix's dense `weight`
  [cells, cells] becomes its `weight` [connections], the values at the mask's positions in
  row-major order. Loading a dense (opt 0) checkpoint picks those values (a load hook), so
  old checkpoints still load; its initial values differ from the dense mix's.

Torch code is in `ops/fused_torch.py`, imported only when lowering.
"""

from __future__ import annotations

import math
from typing import Any

from nexusdsl.ir.graph import Node, ParamSpec
from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.ops.attrs import Bool, Float, PosInt, numel
from nexusdsl.ops.axis import AxialPlan, Mix, one_axis_map
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.traits import AxisMap, Traits

# The optimizer makes these ops only for targets that run them (PassOptions.backends);
# MLIR export of the fused forms is not tested, so they claim eager and torch.compile only.
FUSED_BACKENDS = ("eager", "compile")


class FusedOp(Op):
    """An op made only by the optimizer (or `nexus prune`), never written in a .nx file."""

    family = "fused"
    public = False
    backends = FUSED_BACKENDS

# ---------------------------------------------------------------------------- params


class Params(FusedOp):
    """Holds the parameters of a node that a fusion absorbed and gives them, in the order of
    its specs, to the fused node as tensors: `%a = params() : f32[16, 16]`. Its name, specs and
    place in the graph are the absorbed node's, so state_dict keys and initial values stay."""

    name = "params"
    inputs = ()

    class Attrs(OpAttrs):
        was: str  # the op it held the parameters of (for the reader of the IR)
        keys: list[str]  # its parameters, in the order it gives them

    def infer(self, ctx, inputs, attrs):
        raise OpError("params nodes are made by the optimizer, with their types")

    def flops(self, inputs, outputs, attrs):
        return 0

    def bytes(self, inputs, outputs, attrs):
        return 0

    def kernels(self, inputs, attrs):
        return 0.2  # an attribute read, no kernel

    def lower(self, attrs):
        keys = list(attrs.keys)

        def params(m):
            values = tuple(m.get_parameter(k) for k in keys)
            return values[0] if len(values) == 1 else values

        return params


def params_types(specs: dict[str, ParamSpec]) -> list[TensorType]:
    return [TensorType(dtype="f32", axes=tuple(Axis(size=s) for s in spec.shape))
            for spec in specs.values()]


def holding(node: Node, keys: list[str]) -> Node:
    """`node` turned into a `params` node holding its parameters `keys` (same id, name and
    specs): what a rewrite leaves of a node whose parameters must outlive its computation."""
    specs = {k: node.params[k] for k in keys}
    return node.model_copy(update={
        "op": Params.name, "attrs": {"was": node.op, "keys": list(keys)}, "inputs": [],
        "outputs": params_types(specs), "params": specs})


# ---------------------------------------------------------------------------- linear_act


class LinearAct(FusedOp):
    """`linear` and the activation after it as one module: [*, in] -> [*, out]. Parameters
    are the linear node's (`weight` [out, in], `bias` [out]); `act` is the activation as an op
    value, `{op: gelu, attrs: {approx: none}}`."""

    name = "linear_act"
    replaces = "linear"  # and the activation that is its only reader
    traits = Traits(tokenwise=True, token_projection=True)

    class Attrs(OpAttrs):
        out: PosInt
        bias: Bool = True
        act: dict[str, Any]

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        return [same_type_as(x, (*x.axes[:-1], Axis(size=attrs.out)))]

    def flops(self, inputs, outputs, attrs):
        return 2 * numel(inputs[0]) * attrs.out + numel(outputs[0])

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.linear_act(attrs)


# ---------------------------------------------------------------------------- axial_mix


class AxialMix(FusedOp):
    """An axial `mix` computed without the per-axis permutes of einsum: the same attributes
    and parameters as the `mix` it replaces, and a `strategy`:

    - `products`: each axis's mode-n product is one batched matmul on a view of the input
      (the matrix multiplies from the left, everything after the axis is the matmul's
      columns), summed into one buffer (parallel) or chained (sequential);
    - `dense`: the per-axis matrices are combined into one matrix over the flattened grid (a
      Kronecker sum for parallel order, a Kronecker product for sequential) applied as one
      matmul; cheaper for small grids, where one large product beats several tiny ones.

    `pre` and `post` fold layouts into the op: `pre` is the einops pattern (and sizes) of a
    layout read as a view before mixing, `post` the pattern applied after it."""

    name = "axial_mix"
    replaces = "mix"

    class Attrs(OpAttrs):
        axes: list[int]
        to: list[int]
        order: str = "parallel"
        share: list[str]
        bias: Bool = False
        causal: Bool = False
        labels: list[str]
        strategy: str = "products"
        pre: dict[str, Any] | None = None
        post: dict[str, Any] | None = None

    def infer(self, ctx, inputs, attrs):
        raise OpError("axial_mix nodes are made by the optimizer, with their types")

    @staticmethod
    def attrs_from(mix: dict[str, Any], strategy: str) -> dict[str, Any]:
        """The attributes of the axial_mix standing in for a mix with attributes `mix`."""
        return {**{k: v for k, v in mix.items() if k not in ("wiring", "axis", "separate")},
                "strategy": strategy}

    def axis_map(self, attrs, inputs):
        if attrs.pre is not None or attrs.post is not None:
            return None
        return one_axis_map(inputs[0], attrs)

    def flops(self, inputs, outputs, attrs):
        grid = math.prod(inputs[0][p] for p in attrs.axes)
        if attrs.strategy == "dense":
            out_grid = math.prod(attrs.to)
            return 2 * numel(inputs[0]) // grid * grid * out_grid
        return AxialPlan(inputs[0], _mix_like(attrs)).flops(numel(inputs[0]))

    def kernels(self, inputs, attrs):
        if attrs.strategy == "dense":
            return 2 + len(attrs.axes)  # building the matrix, one product
        return 2 * len(attrs.axes)

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.axial_mix(attrs)


def _mix_like(attrs) -> Any:
    """The attributes of the `mix` an axial_mix was made from (for the shared plan code)."""
    return Mix.Attrs(axes=attrs.axes, to=attrs.to, wiring="axial", order=attrs.order,
                     share=attrs.share, bias=attrs.bias, causal=attrs.causal,
                     labels=attrs.labels)


# ---------------------------------------------------------------------------- mix_chain


class MixChain(FusedOp):
    """Consecutive linear maps of one axis with nothing between, as one: `y = W_k ... W_1 x`
    along axis `axis` with the biases folded (b = W_k (... (W_2 b_1 + b_2) ...) + b_k).

    Inputs: x, then the absorbed maps' parameters in order (from `params` nodes: a weight
    [to, n] and, when that map has a bias, a bias [to]); the last map's parameters are the
    node's own (`key` names them: `i.weight`, or `weight` for a linear). `steps` lists each
    map's {n, to, bias, causal}; a causal map uses its lower triangle, as `mix` does."""

    name = "mix_chain"
    variadic = True

    class Attrs(OpAttrs):
        axis: int
        key: str
        steps: list[dict[str, Any]]

    def infer(self, ctx, inputs, attrs):
        raise OpError("mix_chain nodes are made by the optimizer, with their types")

    def axis_map(self, attrs, inputs):
        return AxisMap(axis=attrs.axis, steps=tuple(attrs.steps), key=attrs.key)

    def flops(self, inputs, outputs, attrs):
        x = inputs[0]
        rest = numel(x) // x[attrs.axis]
        n, to = attrs.steps[0]["n"], attrs.steps[-1]["to"]
        weights = sum(2 * s["to"] * s["n"] * to for s in attrs.steps[:-1])
        return 2 * rest * n * to + weights

    def kernels(self, inputs, attrs):
        return 1 + 2 * (len(attrs.steps) - 1)

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.mix_chain(attrs)


# ---------------------------------------------------------------------------- sparse_mix


class SparseMix(FusedOp):
    """A `random(density, seed)` mix with only its connections stored: `weight` [count] holds
    the values at the mask's positions (row-major), `bias` is the mix's. `kernel = gather`
    gathers each output node's inputs (rows padded to the longest), `csr` runs a sparse
    matrix product; the sparsity pass picks the faster one."""

    name = "sparse_mix"
    replaces = "mix"  # with wiring = random(density, seed)

    class Attrs(OpAttrs):
        axes: list[int]
        density: Float
        seed: int
        causal: Bool = False
        bias: Bool = False
        cells: PosInt  # grid nodes (the product of the mixed axes' sizes)
        count: PosInt
        kernel: str = "gather"

    def infer(self, ctx, inputs, attrs):
        raise OpError("sparse_mix nodes are made by the optimizer, with their types")

    def flops(self, inputs, outputs, attrs):
        cells = math.prod(inputs[0][p] for p in attrs.axes)
        return 2 * numel(inputs[0]) // cells * attrs.count

    def finish(self, module, attrs, node):
        from nexusdsl.ops import fused_torch

        fused_torch.accept_dense_weight(module, attrs)

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.sparse_mix(attrs)


# ---------------------------------------------------------------------------- topk_mask


class TopkMask(FusedOp):
    """Inference-time activation sparsity (`nexus compile --sparsity s`): applies `act` (an
    activation as an op value, if given), then keeps the `keep` largest-magnitude values
    along the last axis of each position and zeroes the rest."""

    name = "topk_mask"
    traits = Traits(tokenwise=True)

    class Attrs(OpAttrs):
        keep: PosInt
        act: dict[str, Any] | None = None

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        if not x.axes or x.axes[-1].size is None or attrs.keep > x.axes[-1].size:
            raise OpError(f"topk_mask: cannot keep {attrs.keep} values of {x}")
        return [same_type_as(x)]

    def flops(self, inputs, outputs, attrs):
        return 4 * numel(inputs[0])

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.topk_mask(attrs)


# ---------------------------------------------------------------------------- pruned_attention


class PrunedAttention(FusedOp):
    """`attention` after structured pruning (`nexus prune --structured`) removed some heads:
    `heads` heads of `head_dim` each, so the inner width heads * head_dim is below the model
    width d. Parameters: qkv [3 * inner, d], out [d, inner] (biases as `attention`)."""

    name = "pruned_attention"
    replaces = "attention"
    traits = Traits(projection_weights=True)

    class Attrs(OpAttrs):
        heads: PosInt
        head_dim: PosInt
        causal: Bool = False
        axis: int | None = None
        bias: Bool = True
        dropout: Float = 0.0

    def infer(self, ctx, inputs, attrs):
        return [same_type_as(inputs[0])]

    def flops(self, inputs, outputs, attrs):
        sizes = inputs[0]
        T = sizes[-2 if attrs.axis is None else attrs.axis]
        d, inner = sizes[-1], attrs.heads * attrs.head_dim
        batch = numel(sizes) // (T * d)
        mixing = 2 * T * T * inner * 2 // (2 if attrs.causal else 1)
        return batch * (2 * T * d * 3 * inner + mixing + 2 * T * inner * d)

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.pruned_attention(attrs)


# ---------------------------------------------------------------------------- rms_norm


class FusedRMSNorm(FusedOp):
    """`rmsnorm` with a hand-written backward pass (autograd's own backward of rms_norm runs
    some ten elementwise kernels). Same attributes and parameters (`weight` [d]), and the same
    forward values, `offset` and half precision included."""

    name = "fused_rmsnorm"
    replaces = "rmsnorm"
    traits = Traits(tokenwise=True)

    class Attrs(OpAttrs):
        eps: Float = 1e-6
        offset: Float = 0.0

    def infer(self, ctx, inputs, attrs):
        return [same_type_as(inputs[0])]

    def fuse(self, attrs, inputs):
        # no offset key when there is none: fused nodes print as they did before offsets
        return {"eps": attrs.eps, **({"offset": attrs.offset} if attrs.offset else {})}

    def flops(self, inputs, outputs, attrs):
        return 4 * numel(inputs[0])

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.fused_rmsnorm(attrs)


# ---------------------------------------------------------------------------- depthwise_conv


class DepthwiseConv(FusedOp):
    """A `conv` with one filter per channel (groups = channels = out, stride 1) computed as
    `kernel` shifted multiply-adds on the channels-last tokens, with a hand-written backward
    pass: no transposes to channels-first and back. Same attributes and parameters (`weight`
    [C, 1, kernel], `bias` [C]) as the conv it replaces."""

    name = "depthwise_conv"
    replaces = "conv"

    class Attrs(OpAttrs):
        out: PosInt
        kernel: PosInt
        causal: Bool = False
        bias: Bool = True

    def infer(self, ctx, inputs, attrs):
        return [same_type_as(inputs[0])]

    def fuse(self, attrs, inputs):
        width = inputs[0].axes[-1].size
        if attrs.axes is not None:  # a convolution over named axes, not over the tokens
            return None
        if not (attrs.groups == attrs.out == width and attrs.stride == 1):
            return None
        return {"out": attrs.out, "kernel": attrs.kernel, "causal": attrs.causal,
                "bias": attrs.bias}

    def flops(self, inputs, outputs, attrs):
        return 2 * numel(inputs[0]) * attrs.kernel

    def kernels(self, inputs, attrs):
        return attrs.kernel

    def lower(self, attrs):
        from nexusdsl.ops import fused_torch

        return fused_torch.depthwise_conv(attrs)
