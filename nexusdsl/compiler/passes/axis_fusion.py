"""axis-fusion: linear maps along named axes, fused.

Patterns, in the order they are tried at each node:

- `fuse-mix-chain`: consecutive linear maps of one axis with nothing between (`mix(axis = i)`
  twice, a `linear` after a `linear`, a mix of the last axis after a linear) become one
  `mix_chain`: the matrices are multiplied and the biases folded in the forward pass, and the
  input is read once. Only where the cost model says the product is cheaper (a bottleneck
  n -> h -> n with h < n/2 is cheaper as two maps, and stays two).
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
from dataclasses import dataclass

from nexusdsl.compiler.passes.base import (
    PatternPass,
    RewritePattern,
    can_emit,
    private_params,
    sole_user,
)
from nexusdsl.compiler.passes.cost import Cost, Sizes, elementwise, gemm
from nexusdsl.ir.graph import Graph, Node, ValueRef
from nexusdsl.ops.fused import params_types

# ---------------------------------------------------------------------------- mix chains


@dataclass
class Step:
    """One linear map of an axis: its node, axis position, sizes and parameter key."""

    node: Node
    axis: int
    n: int
    to: int
    bias: bool
    causal: bool
    key: str

    def as_attrs(self) -> dict:
        return {"n": self.n, "to": self.to, "bias": self.bias, "causal": self.causal}


def map_step(graph: Graph, node: Node) -> Step | None:
    """The node as one linear map of one axis, if it is one that may be fused."""
    if not private_params(graph, node) or len(node.inputs) != 1:
        return None
    x = graph.type_of(node.inputs[0])
    if node.op == "linear":
        a = node.attrs
        return Step(node, x.rank - 1, x.axes[-1].size, a["out"], a["bias"], False, "")
    if node.op not in ("mix", "axial_mix"):
        return None
    a = node.attrs
    if a.get("wiring", "axial") != "axial" or len(a["axes"]) != 1 or a["share"][0] == "none":
        return None
    if a.get("pre") is not None or a.get("post") is not None:
        return None
    p = a["axes"][0]
    key = "" if a["share"][0] == "all" else a["labels"][0]
    return Step(node, p, x.axes[p].size, a["to"][0], a["bias"], a["causal"], key)


def chain_of(graph: Graph, node: Node) -> tuple[list[dict], list[ValueRef], ValueRef] | None:
    """What a mix_chain node already holds: (steps, absorbed parameter refs, input)."""
    if node.op != "mix_chain":
        return None
    return list(node.attrs["steps"]), list(node.inputs[1:]), node.inputs[0]


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
        outer = map_step(graph, node)
        if outer is None or not (can_emit(p, "mix_chain") and can_emit(p, "params")):
            return False
        inner = graph.node(node.inputs[0].node)
        if sole_user(graph, inner) is not node:
            return False
        held = self._inner(graph, inner, outer)
        if held is None:
            return False
        steps, absorbed, x_ref = held
        steps = [*steps, outer.as_attrs()]
        sizes = Sizes(graph, p.options.context)
        x = sizes.of(graph.type_of(x_ref))
        apart, fused = chain_cost(math.prod(x) // x[outer.axis], steps)
        if fused.seconds() >= apart.seconds():
            p.explain(f"{node.name}: kept {len(steps)} maps apart ({apart} < fused {fused})")
            return False
        absorbed += self._absorb(graph, inner)
        attrs = {"axis": outer.axis, "key": outer.key, "steps": steps}
        graph.replace(node, node.model_copy(update={
            "op": "mix_chain", "attrs": attrs, "inputs": [x_ref, *absorbed]}))
        p.explain(f"{node.name}: {len(steps)} maps of one axis as one ({fused} vs {apart})")
        return True

    @staticmethod
    def _inner(graph: Graph, inner: Node, outer: Step):
        chained = chain_of(graph, inner)
        if chained is not None:
            steps, absorbed, x_ref = chained
            if inner.attrs["axis"] != outer.axis or not private_params(graph, inner):
                return None
            return steps, absorbed, x_ref
        step = map_step(graph, inner)
        if step is None or step.axis != outer.axis or step.to != outer.n:
            return None
        return [step.as_attrs()], [], inner.inputs[0]

    @staticmethod
    def _absorb(graph: Graph, inner: Node) -> list[ValueRef]:
        """The inner map becomes a `params` node; refs to its weight (and bias)."""
        key = inner.attrs["key"] if inner.op == "mix_chain" else map_step(graph, inner).key
        prefix = f"{key}." if key else ""
        names = [prefix + "weight"] + ([prefix + "bias"] if prefix + "bias" in inner.params else [])
        specs = {k: inner.params[k] for k in names}
        holder = inner.model_copy(update={
            "op": "params", "attrs": {"was": inner.op, "keys": names}, "inputs": [],
            "outputs": params_types(specs), "params": specs})
        graph.replace(inner, holder)
        return [holder.ref(i) for i in range(len(names))]


# ---------------------------------------------------------------------------- axial mixes


def axial_costs(shape: tuple[int, ...], attrs: dict) -> dict[str, Cost]:
    """The cost of each strategy an axial mix can run with (einsum: the mix as written)."""
    total = math.prod(shape)
    costs = {"einsum": Cost(), "products": Cost()}
    current = list(shape)
    for p, to in zip(attrs["axes"], attrs["to"]):
        lead, n, rest = math.prod(current[:p]), current[p], math.prod(current[p + 1:])
        product = gemm(to, n, rest, batch=lead)
        costs["products"] += product
        costs["einsum"] += product + elementwise(total, 2).scaled(2)  # permute in and out
        if attrs["order"] == "sequential":
            current[p] = to
    if attrs["order"] == "parallel" and len(attrs["axes"]) > 1:
        costs["products"] += elementwise(total, 3).scaled(len(attrs["axes"]) - 1)
        costs["einsum"] += elementwise(total, 3).scaled(len(attrs["axes"]) - 1)
    if dense_possible(attrs):
        grid = sorted(attrs["axes"])
        cells = math.prod(shape[p] for p in grid)
        cells_out = math.prod(attrs["to"])
        lead, rest = math.prod(shape[:grid[0]]), math.prod(shape[grid[-1] + 1:])
        # per axis two Kronecker products (each a few reshapes and a multiply), identities,
        # the sum, and their backward passes: about eight small kernels per axis (measured)
        build = elementwise(cells * cells_out, 2).scaled(8 * len(grid) + 2)
        costs["dense"] = build + gemm(cells_out, cells, rest, batch=lead)
    return costs


def dense_possible(attrs: dict) -> bool:
    grid = sorted(attrs["axes"])
    adjacent = grid == list(range(grid[0], grid[0] + len(grid)))
    return (len(grid) > 1 and adjacent and not attrs["bias"]
            and all(s != "none" for s in attrs["share"]))


def view_of(graph: Graph, layout: Node, source: ValueRef) -> dict | None:
    """A pure-regrouping layout as the shape its output is viewed with: fixed sizes, and
    symbolic axes as {"axis": k}, the axis of `source` they come from. None if it permutes
    or a symbolic axis is not passed through whole."""
    from nexusdsl.ops import REGISTRY

    op = REGISTRY["layout"]
    attrs = op.Attrs.model_validate(layout.attrs)
    if op.bytes([(1,)], [(1,)], attrs) != 0:
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
        if node.op != "mix" or node.attrs["wiring"] != "axial" or not can_emit(p, "axial_mix"):
            return False
        if not private_params(graph, node):
            return False
        sizes = Sizes(graph, p.options.context)
        costs = axial_costs(sizes.of(graph.type_of(node.inputs[0])), node.attrs)
        strategy = min((k for k in costs if k != "einsum"), key=lambda k: costs[k].seconds())
        p.explain(f"{node.name}: {strategy} (" + "; ".join(f"{k} {c}" for k, c in
                                                       costs.items()) + ")")
        attrs = {k: v for k, v in node.attrs.items() if k not in ("wiring", "axis", "separate")}
        attrs["strategy"] = strategy
        pre = self._pre(graph, node)
        if pre is not None:
            attrs["pre"] = pre[1]
        inputs = list(pre[0].inputs) if pre else list(node.inputs)
        fused = node.model_copy(update={"op": "axial_mix", "attrs": attrs, "inputs": inputs})
        graph.replace(node, fused)
        if pre is not None:
            graph.erase(pre[0])
        self._fold_post(graph, fused)
        return True

    @staticmethod
    def _pre(graph: Graph, node: Node) -> tuple[Node, dict] | None:
        """The view layout the mix reads, if only the mix reads it."""
        layout = graph.node(node.inputs[0].node)
        if layout.op != "layout" or sole_user(graph, layout) is not node:
            return None
        view = view_of(graph, layout, layout.inputs[0])
        return None if view is None else (layout, view)

    @staticmethod
    def _fold_post(graph: Graph, fused: Node) -> None:
        layout = sole_user(graph, fused)
        if layout is None or layout.op != "layout":
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
