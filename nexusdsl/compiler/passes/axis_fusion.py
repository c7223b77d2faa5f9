"""axis-fusion: linear maps along named axes, fused.

Patterns, in the order they are tried at each node:

- `fuse-mix-chain`: consecutive linear maps of one axis with nothing between (`mix(axis = i)`
  twice, a `linear` after a `linear`, a mix of the last axis after a linear: any op whose
  `Op.axis_map` describes the node) become one `mix_chain`: the matrices are multiplied and
  the biases folded in the forward pass, and the input is read once. Only where the cost model
  says the product is cheaper (a bottleneck n -> h -> n with h < n/2 is cheaper as two maps,
  and stays two).
- `axial-einsum`: an axial `mix` (parallel per-axis products or sequential mode-n products)
  becomes one `axial_mix` whose strategy the cost model picks: `products` (one batched matmul
  per axis on a view of the input, no permutes) or `dense` (one matmul with the per-axis
  matrices combined over the flattened grid, for small grids). Layouts that only regroup
  axes (views) right before or after the mix fold into it (`pre`, `post`) instead of running
  as nodes of their own.

Requires: a verified graph. Guarantees: the patterns above no longer match. Keeps: values up
to float rounding (sums and products are reassociated), parameters by name, shape and initial
value (absorbed maps become `params` nodes with their own ids and names; see ops/fused.py),
and maps whose parameters are shared, tied or read by others, which stay as they are.
"""

from __future__ import annotations

import math

from nexusdsl.compiler.passes.base import (
    PatternPass,
    RewritePattern,
    can_emit,
    private_params,
    sole_user,
)
from nexusdsl.compiler.passes.cost import Sizes, machine_for, priced
from nexusdsl.ir.graph import Graph, Node, ValueRef
from nexusdsl.ops.axis import axial_costs, wiring_fn
from nexusdsl.ops.base import attrs_of, op_of
from nexusdsl.ops.cost import Cost, gemm
from nexusdsl.ops.fused import AxialMix, MixChain, Params, holding
from nexusdsl.ops.layout import Layout
from nexusdsl.ops.traits import AxisMap

# ---------------------------------------------------------------------------- mix chains


def axis_map(graph: Graph, node: Node) -> AxisMap | None:
    """The node as linear maps of one axis, if it is one whose parameters may be fused."""
    if node.is_input or not private_params(graph, node):
        return None
    return op_of(node).axis_map(attrs_of(node), [graph.type_of(r) for r in node.inputs])


def chain_cost(rest: int, steps: list[dict]) -> tuple[Cost, Cost]:
    """(the maps one by one, the fused map) for `rest` columns."""
    apart = sum((gemm(s["to"], s["n"], rest) for s in steps), Cost())
    n, to = steps[0]["n"], steps[-1]["to"]
    weights = sum((gemm(s["to"], s["n"], to) for s in steps[:-1]), Cost())
    return apart, gemm(to, n, rest) + weights


class FuseMixChain(RewritePattern):
    """map_2(map_1(x)) along one axis -> mix_chain(x, params of map_1) {steps}"""

    name = "fuse-mix-chain"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if not (can_emit(p, MixChain.name) and can_emit(p, Params.name)):
            return False
        outer = axis_map(graph, node)
        if outer is None or len(outer.steps) != 1 or len(node.inputs) != 1:
            return False
        inner = graph.node(node.inputs[0].node)
        if sole_user(graph, inner) is not node:
            return False
        held = axis_map(graph, inner)
        if held is None or held.axis != outer.axis or held.steps[-1]["to"] != outer.steps[0]["n"]:
            return False
        steps = [*held.steps, *outer.steps]
        x_ref, absorbed = inner.inputs[0], list(inner.inputs[1:])
        x = Sizes(graph, p.options.context).of(graph.type_of(x_ref))
        apart, fused = chain_cost(math.prod(x) // x[outer.axis], steps)
        machine = machine_for(p.options.device)
        if fused.seconds(machine) >= apart.seconds(machine):
            p.explain(f"{node.name}: kept {len(steps)} maps apart ({priced(apart, machine)} < "
                      f"fused {priced(fused, machine)})")
            return False
        absorbed += self._absorb(graph, inner, held.key)
        attrs = {"axis": outer.axis, "key": outer.key, "steps": steps}
        graph.replace(node, node.model_copy(update={
            "op": MixChain.name, "attrs": attrs, "inputs": [x_ref, *absorbed]}))
        p.explain(f"{node.name}: {len(steps)} maps of one axis as one "
                  f"({priced(fused, machine)} vs {priced(apart, machine)})")
        return True

    @staticmethod
    def _absorb(graph: Graph, inner: Node, key: str) -> list[ValueRef]:
        """The inner map becomes a `params` node; refs to its weight (and bias)."""
        prefix = f"{key}." if key else ""
        names = [prefix + "weight"] + ([prefix + "bias"] if prefix + "bias" in inner.params else [])
        holder = holding(inner, names)
        graph.replace(inner, holder)
        return [holder.ref(i) for i in range(len(names))]


# ---------------------------------------------------------------------------- axial mixes


def view_of(graph: Graph, layout: Node, source: ValueRef) -> dict | None:
    """A pure-regrouping layout as the shape its output is viewed with: fixed sizes, and
    symbolic axes as {"axis": k}, the axis of `source` they come from. None if it is not a
    layout or it permutes, or a symbolic axis is not passed through whole."""
    if not isinstance(op_of(layout), Layout) or not Layout.is_view(attrs_of(layout)):
        return None
    src = graph.type_of(source)
    shape = []
    for axis in layout.outputs[0].axes:
        if axis.size is not None:
            shape.append(axis.size)
            continue
        k = next((i for i, a in enumerate(src.axes) if a.size is None and a.name == axis.name),
                 None)
        if k is None:
            return None
        shape.append({"axis": k})
    return {"shape": shape}


class AxialEinsum(RewritePattern):
    """mix(x) {wiring = axial} -> axial_mix(x) {strategy = products | dense}, with view
    layouts before and after it folded in"""

    name = "axial-einsum"

    def apply(self, graph: Graph, node: Node, p) -> bool:
        if node.op != AxialMix.replaces or not can_emit(p, AxialMix.name):
            return False
        mix = attrs_of(node)
        if wiring_fn(mix.wiring) != "axial" or not private_params(graph, node):
            return False
        sizes = Sizes(graph, p.options.context)
        costs = axial_costs(sizes.of(graph.type_of(node.inputs[0])), mix)
        machine = machine_for(p.options.device)
        strategy = min((k for k in costs if k != "einsum"),
                       key=lambda k: costs[k].seconds(machine))
        notes = "; ".join(f"{k} {priced(c, machine)}" for k, c in costs.items())
        p.explain(f"{node.name}: {strategy} ({notes})")
        attrs = AxialMix.attrs_from(node.attrs, strategy)
        pre = self._pre(graph, node)
        if pre is not None:
            attrs["pre"] = pre[1]
        inputs = list(pre[0].inputs) if pre else list(node.inputs)
        fused = node.model_copy(update={"op": AxialMix.name, "attrs": attrs, "inputs": inputs})
        graph.replace(node, fused)
        if pre is not None:
            graph.erase(pre[0])
        self._fold_post(graph, fused)
        return True

    @staticmethod
    def _pre(graph: Graph, node: Node) -> tuple[Node, dict] | None:
        """The view layout the mix reads, if only the mix reads it."""
        layout = graph.node(node.inputs[0].node)
        if layout.is_input or sole_user(graph, layout) is not node:
            return None
        view = view_of(graph, layout, layout.inputs[0])
        return None if view is None else (layout, view)

    @staticmethod
    def _fold_post(graph: Graph, fused: Node) -> None:
        layout = sole_user(graph, fused)
        if layout is None:
            return
        view = view_of(graph, layout, fused.ref())  # symbolic axes: of the mix's result
        if view is None:
            return
        merged = fused.model_copy(update={"attrs": {**fused.attrs, "post": view},
                                          "outputs": list(layout.outputs)})
        graph.replace(fused, merged)
        graph.replace_all_uses_with(layout.ref(), merged.ref())
        graph.erase(layout)


class AxisFusion(PatternPass):
    name = "axis-fusion"
    patterns = (FuseMixChain, AxialEinsum)
