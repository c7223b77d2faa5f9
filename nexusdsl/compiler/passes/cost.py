"""The cost model the passes consult: FLOPs and bytes from the op registry (`Op.flops`,
`Op.bytes`, parameters from the node's specs) and a kernel count, turned into an estimated
time by a three-term roofline of one CPU core:

    seconds = kernels * launch + flops / peak + bytes / bandwidth

It is a forward-pass estimate (a training step costs about three times as much, in the same
proportions), with symbolic axes sized as `nexus compile`'s summary sizes them (batch 1,
sequence `context`). The constants are round numbers measured on the 2-core CI machine with
benchmarks/passes.py; decisions only compare alternatives, so they need the ratios right,
not the absolute times. `--explain` prints the estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.types import TensorType


@dataclass(frozen=True)
class Machine:
    flops: float = 2.0e10  # FLOP/s of a dense f32 GEMM on one core
    bandwidth: float = 4.0e9  # bytes/s of elementwise traffic (allocation included)
    launch: float = 1.5e-5  # seconds of Python and dispatch overhead per kernel


CPU = Machine()


@dataclass(frozen=True)
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    kernels: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes,
                    self.kernels + other.kernels)

    def scaled(self, factor: float) -> Cost:
        return Cost(self.flops * factor, self.bytes * factor, self.kernels * factor)

    def seconds(self, machine: Machine = CPU) -> float:
        return (self.kernels * machine.launch + self.flops / machine.flops
                + self.bytes / machine.bandwidth)

    def __str__(self) -> str:
        return (f"{_scaled(self.flops, 'FLOP')}, {_scaled(self.bytes, 'B')}, "
                f"{self.kernels:g} kernels, ~{self.seconds() * 1e3:,.3g} ms")


def _scaled(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:,.3g} {prefix}{unit}"
    return f"{value:,.0f} {unit}"


CACHE = 1 << 20  # tensors below this many bytes stay in cache: their traffic is cheaper
CACHED = 0.25  # ... by this factor (measured on the CI machine's 1 MB L2)


def traffic(nbytes: float, largest: float | None = None) -> float:
    """Bytes moved, discounted when the largest tensor involved fits in cache."""
    return nbytes * (CACHED if (largest if largest is not None else nbytes) < CACHE else 1.0)


def gemm(m: int, k: int, n: int, batch: int = 1) -> Cost:
    """One (batched) matrix product (m x k) @ (k x n): reads both, writes the result."""
    largest = 4.0 * batch * max(m * k, k * n, m * n)
    return Cost(2.0 * batch * m * k * n, traffic(4.0 * batch * (m * k + k * n + m * n), largest),
                1)


def elementwise(count: int, operands: int = 2) -> Cost:
    """One elementwise kernel over `count` elements reading `operands - 1` tensors."""
    return Cost(float(count), traffic(4.0 * count * operands, 4.0 * count), 1)


# ---------------------------------------------------------------------------- sizes


class Sizes:
    """Concrete sizes for a graph's types: symbolic axes bound as the summary binds them."""

    def __init__(self, graph: Graph, context: int = 256):
        from nexusdsl.compiler.summary import symbolic_bindings

        self.context = context
        self.bindings = symbolic_bindings(graph, context)

    def of(self, t: TensorType) -> tuple[int, ...]:
        return tuple(a.size if a.size is not None else self.bindings.get(a.name or "",
                                                                          self.context)
                     for a in t.axes)


def node_cost(graph: Graph, node: Node, sizes: Sizes) -> Cost:
    from nexusdsl.ops import REGISTRY

    if node.op == "input":
        return Cost()
    op = REGISTRY[node.op]
    attrs = op.Attrs.model_validate(node.attrs)
    ins = [sizes.of(graph.type_of(r)) for r in node.inputs]
    outs = [sizes.of(t) for t in node.outputs]
    weights = sum(math.prod(s.shape) for s in node.params.values() if not s.tied_to)
    if node.op in ESTIMATES:
        return ESTIMATES[node.op](node, ins[0])
    kernels = getattr(op, "kernels", None)
    cost = Cost(float(op.flops(ins, outs, attrs)), float(op.bytes(ins, outs, attrs) + 4 * weights),
                float(kernels(ins, attrs)) if kernels else 1.0)
    if node.regions:
        share = op.region_share(attrs, len(node.regions))
        inner = sum((graph_cost(g, sizes.context) for g in node.regions), Cost())
        cost = cost + inner.scaled(share)
    return cost


def graph_cost(graph: Graph, context: int = 256) -> Cost:
    sizes = Sizes(graph, context)
    return sum((node_cost(graph, n, sizes) for n in graph.nodes()), Cost())


def _mix_cost(node: Node, shape: tuple[int, ...]) -> Cost:
    """A `mix` as written: per-axis einsums (permute copies included) for axial wirings, a
    masked dense einsum over the flattened grid for full and random ones."""
    from nexusdsl.compiler.passes.axis_fusion import axial_costs

    attrs = node.attrs
    if attrs["wiring"] == "axial":
        return axial_costs(shape, attrs)["einsum"]
    grid = sorted(attrs["axes"])
    cells = math.prod(shape[p] for p in grid)
    rest = math.prod(shape) // cells
    total = math.prod(shape)
    return gemm(cells, cells, rest) + elementwise(total, 2).scaled(2) + elementwise(cells * cells)


# Ops whose registry estimate does not see how they run (written here, not in their files).
ESTIMATES = {"mix": _mix_cost}
