"""The cost model the passes consult, and the one place FLOPs are counted: every node costs
what its op declares (`Op.cost`: FLOPs, bytes of activations moved, kernels; ops/cost.py) plus
reading its weights, at concrete sizes, and a graph costs the sum over its nodes and the nodes
of its nested graphs (weighted by the share of tokens each nested graph sees). `seconds()`
turns a cost into an estimated time.

It is a forward-pass estimate (a training step costs about three times as much, in the same
proportions), with symbolic axes sized as `nexus compile`'s summary sizes them (batch 1,
sequence `context`): the summary's FLOPs (compiler/summary.py) and `nexus summary --by-node`
(tools/node_table.py) are this cost's FLOPs. `--explain` prints the estimates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.types import TensorType
from nexusdsl.ops.base import attrs_of, op_of
from nexusdsl.ops.cost import CPU, Cost, Machine

# ---------------------------------------------------------------------------- devices

# What a device kind does at most, for the passes' decisions: dense fp32 FLOP/s (CUDA cores,
# no TF32), memory bandwidth in bytes/s, and the host's seconds per kernel launch (eager
# PyTorch dispatch, the same order on every GPU). The GPU figures are the vendors' data
# sheets, not measured here; `cpu` is the cost model's own, measured on the 2-core CI machine.
# Decisions compare alternatives, so what matters is each device's balance: a GPU does a
# thousand times the work of a CPU core per kernel launch, so on a GPU fewer kernels win
# where on a CPU fewer bytes do.
GPU_LAUNCH = 1.0e-5
DEVICE_PROFILES: dict[str, Machine] = {
    "cpu": CPU,
    "v100": Machine(flops=1.57e13, bandwidth=9.0e11, launch=GPU_LAUNCH),
    "t4": Machine(flops=8.1e12, bandwidth=3.2e11, launch=GPU_LAUNCH),
    "a10": Machine(flops=3.12e13, bandwidth=6.0e11, launch=GPU_LAUNCH),
    "l4": Machine(flops=3.03e13, bandwidth=3.0e11, launch=GPU_LAUNCH),
    "a100": Machine(flops=1.95e13, bandwidth=1.55e12, launch=GPU_LAUNCH),
    "h100": Machine(flops=6.7e13, bandwidth=3.35e12, launch=GPU_LAUNCH),
}
DEFAULT_GPU = "a100"  # a CUDA device whose kind the table does not know is priced as this


def device_kind(device: str, gpu_name: str | None = None) -> str:
    """The profile of a device string (`cpu`, `cuda`, `cuda:1`): `cpu`, or for CUDA the
    table's entry named in the GPU's name ("NVIDIA A100-SXM4-80GB" -> a100), read from the
    visible GPU when `gpu_name` is not given, else the default GPU."""
    if not device.startswith("cuda"):
        return "cpu"
    if gpu_name is None:
        gpu_name = _visible_gpu_name(device)
    words = (gpu_name or "").lower().replace("-", " ").split()
    return next((kind for kind in DEVICE_PROFILES if kind != "cpu" and kind in words),
                DEFAULT_GPU)


def _visible_gpu_name(device: str) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def machine_for(device: str, gpu_name: str | None = None) -> Machine:
    """The roofline the passes price a device's kernels with."""
    return DEVICE_PROFILES[device_kind(device, gpu_name)]


def priced(cost: Cost, machine: Machine) -> str:
    """A cost as `--explain` prints it (Cost's own text), with its time on `machine`."""
    return f"{str(cost).rsplit(', ~', 1)[0]}, ~{cost.seconds(machine) * 1e3:,.3g} ms"

# ---------------------------------------------------------------------------- sizes


def symbolic_bindings(graph: Graph, context: int = 256) -> dict[str, int]:
    """Sizes for symbolic axes when estimating: each input's first axis (the batch) is 1,
    every other symbolic axis is `context` long."""
    bindings: dict[str, int] = {}
    for node in graph.inputs():
        for i, axis in enumerate(node.type.axes):
            if axis.size is None and axis.name and axis.name not in bindings:
                bindings[axis.name] = 1 if i == 0 else context
    return bindings


class Sizes:
    """Concrete sizes for a graph's types: symbolic axes bound as `symbolic_bindings` says,
    any other symbolic axis `context` long."""

    def __init__(self, graph: Graph, context: int = 256):
        self.context = context
        self.bindings = symbolic_bindings(graph, context)

    def of(self, t: TensorType) -> tuple[int, ...]:
        return tuple(a.size if a.size is not None else self.bindings.get(a.name or "",
                                                                          self.context)
                     for a in t.axes)


# ---------------------------------------------------------------------------- nodes


def node_cost(graph: Graph, node: Node, sizes: Sizes) -> Cost:
    """One run of the node itself (not of its nested graphs): its op's cost and the bytes of
    the weights it reads."""
    if node.is_input:
        return Cost()
    ins = [sizes.of(graph.type_of(r)) for r in node.inputs]
    outs = [sizes.of(t) for t in node.outputs]
    weights = sum(spec.numel for spec in node.params.values() if not spec.tied_to)
    return op_of(node).cost(ins, outs, attrs_of(node)) + Cost(bytes=4.0 * weights)


@dataclass(frozen=True)
class Placed:
    """A node met by `weighted_walk`, with where it sits: the graph holding it, the share of
    the tokens it sees (1 in the model; a nested graph's from its owner's `region_share`),
    the names of its owners (`blocks.0.moe.experts.2.`), how deep it is nested, and whether
    an owner shares another node's parameters (so they are not this node's to count)."""

    graph: Graph
    node: Node
    share: float = 1.0
    prefix: str = ""
    depth: int = 0
    shared: bool = False


def weighted_walk(graph: Graph) -> Iterator[Placed]:
    """Every node of `graph`, nested ones included (`Graph.walk`), with its place."""
    places = {id(graph): (1.0, "", 0, False)}  # per graph: share, prefix, depth, shared
    for g, node in graph.walk():
        share, prefix, depth, shared = places[id(g)]
        yield Placed(g, node, share, prefix, depth, shared)
        if node.regions:
            op = op_of(node)
            inner = share * op.region_share(attrs_of(node), len(node.regions))
            for i, region in enumerate(node.regions):
                places[id(region)] = (inner, f"{prefix}{node.name}.{op.region_name}.{i}.",
                                      depth + 1, shared or bool(node.shares))


def graph_cost(graph: Graph, context: int = 256) -> Cost:
    """One forward pass of the model, nested graphs included."""
    sizes: dict[int, Sizes] = {}
    total = Cost()
    for at in weighted_walk(graph):
        of = sizes.setdefault(id(at.graph), Sizes(at.graph, context))
        cost = node_cost(at.graph, at.node, of)
        total += cost if at.share == 1.0 else cost.scaled(at.share)
    return total


def positions(graph: Graph, context: int = 256) -> int:
    """Positions in one example: every axis after the batch of the first id input (a byte
    sequence [B, T] has T tokens, fixed or not); 1 per example for float-only models."""
    ids = [n.type for n in graph.inputs() if n.type.dtype == "i64"]
    if not ids:
        return 1
    return max(1, math.prod(Sizes(graph, context).of(ids[0])[1:]))
