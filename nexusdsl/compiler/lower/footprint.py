"""The memory a model's weights take, compared with what the machine has before anything is
allocated (docs/language.md, "Limits"). Without it, `--set dim=2147483648` fails deep in
torch's allocator, or, worse, a model a little too big is allocated lazily and the kernel
kills the process (or a neighbour) once initialisation touches the pages.

Torch is not imported here: `nexus check` warns with the same estimate."""

from __future__ import annotations

from nexusdsl.compiler.summary import count_params
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.lang.diagnostics import UNKNOWN, Diagnostic, NexusError
from nexusdsl.memory import format_bytes

DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2}
MAX_TENSOR_BYTES = 2**63 - 1  # torch sizes storage in a signed 64-bit count of bytes


def weight_bytes(graph: Graph, dtype: str = "f32") -> int:
    """Bytes of the model's parameters (shared and tied ones once)."""
    return count_params(graph)["total"] * DTYPE_BYTES[dtype]


def _own_params(node: Node) -> int:
    """Parameters a node holds, those of its regions included (a moe's experts)."""
    if node.shares:
        return 0
    regions = sum(count_params(g)["total"] for g in node.regions)
    return regions + sum(s.numel for s in node.params.values() if not s.tied_to)


def too_big(graph: Graph, dtype: str, available: int | None,
            severity: str = "error") -> NexusError | None:
    """A diagnostic at the node with the most parameters when the weights need more than
    `available` bytes; None when they fit or nothing is known about the machine."""
    need = weight_bytes(graph, dtype)
    if available is None or need <= available:
        return None
    largest = max(graph.nodes(), key=_own_params)
    part = _own_params(largest) * DTYPE_BYTES[dtype]
    total = count_params(graph)["total"]
    message = (f"model {graph.name} needs {format_bytes(need)} for its {total:,} parameters "
               f"({dtype}), more than the {format_bytes(available)} this machine has "
               f"available; `{largest.name}` alone takes {format_bytes(part)} (the meta device "
               "builds the model without allocating weights)")
    return NexusError(Diagnostic(largest.span or UNKNOWN, message, severity=severity))



def oversized_tensor(graph: Graph, dtype: str) -> NexusError | None:
    """A parameter too large for any torch tensor (even on the meta device), at its node."""
    for node in _all_nodes(graph):
        for key, spec in node.params.items():
            if not spec.tied_to and spec.numel * DTYPE_BYTES[dtype] > MAX_TENSOR_BYTES:
                return NexusError.at(node.span, f"{node.name}.{key} would have {spec.numel:,} "
                                     f"elements ({list(spec.shape)}), more than a torch tensor "
                                     "can hold")
    return None


def _all_nodes(graph: Graph):
    for node in graph.nodes():
        yield node
        for region in node.regions:
            yield from _all_nodes(region)
