"""Which backend can run which op, checked before any backend work starts.

Every op declares the backends it lowers to (`Op.backends`, from `ALL_BACKENDS`). A target
needs a set of them (`iree-cpu` through the torch dialect needs `mlir-torch` and `iree`);
`check_backend` walks the graph, nested regions included, and reports every node whose op
does not support the backend as a located error, so that an unsupported combination never
surfaces as a crash deep inside torch-mlir or IREE.
"""

from __future__ import annotations

from nexusdsl.ir.graph import Graph, Node
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import ALL_BACKENDS

# What each backend means, for messages and the docs table.
DESCRIPTIONS = {
    "eager": "the torch.fx module run by PyTorch",
    "compile": "torch.compile (Inductor)",
    "mlir-torch": "torch-mlir, torch dialect",
    "mlir-linalg": "torch-mlir, linalg-on-tensors",
    "mlir-stablehlo": "torch-mlir, StableHLO",
    "mlir-tosa": "torch-mlir, TOSA",
    "iree": "IREE compiles and runs the torch-dialect and linalg MLIR",
}

# The MLIR route IREE is fed by default: the most robust one (see docs/backends.md).
DEFAULT_ROUTE = "mlir-torch"
IREE_ROUTES = ("mlir-torch", "mlir-linalg", "mlir-stablehlo")


class BackendError(Exception):
    """A backend cannot do what was asked (no C++ compiler, no GPU, a tool failed). Not a
    mistake in the .nx file, so it carries no source location; the CLI prints it plainly."""


def required_backends(target: str, route: str = DEFAULT_ROUTE) -> tuple[str, ...]:
    """The op-level backends a compile target depends on."""
    if target in ("torch", "eager"):
        return ("eager",)
    if target in ("torch.compile", "compile"):
        return ("eager", "compile")
    if target.startswith("mlir-"):
        return ("eager", target)
    if target.startswith("iree-"):
        return ("eager", route, "iree")
    raise ValueError(f"unknown target {target!r}")


def _supported(op_name: str, backend: str) -> bool:
    op = REGISTRY.get(op_name)
    if op is None:  # graph inputs and other non-ops
        return True
    known = getattr(op, "backends", ALL_BACKENDS)
    # Backends this version of the registry does not know yet count as supported.
    return backend in known or backend not in ALL_BACKENDS


def unsupported(graph: Graph, backend: str) -> list[Node]:
    """Every node (nested regions included) whose op does not lower to `backend`."""
    found = []
    for node in graph.nodes():
        if node.op != "input" and not _supported(node.op, backend):
            found.append(node)
        for region in node.regions:
            found.extend(unsupported(region, backend))
    return found


def check_backend(graph: Graph, target: str, route: str = DEFAULT_ROUTE,
                  sources: dict[str, str] | None = None) -> None:
    """Raise one located error listing every node that cannot lower to `target`
    (`sources`: the program's texts, to quote the lines)."""
    sink = DiagnosticSink()
    seen: set[tuple[str, str]] = set()
    for backend in required_backends(target, route):
        for node in unsupported(graph, backend):
            if (node.name, backend) in seen:
                continue
            seen.add((node.name, backend))
            sink.add(_unsupported_error(node, backend, target))
    sink.raise_if_any(sources or {})


def _unsupported_error(node: Node, backend: str, target: str) -> NexusError:
    op = REGISTRY[node.op]
    others = ", ".join(b for b in op.backends) or "none"
    via = f" (needed by target {target})" if target != backend else ""
    return NexusError.at(node.span, f"op `{node.op}` (node {node.name}) does not lower to "
                         f"backend {backend}{via}",
                         Note(f"`{node.op}` supports: {others}; see docs/backends.md"))


def support_table() -> str:
    """The per-op support table of docs/backends.md, generated from the registry."""
    header = "| op | family | " + " | ".join(ALL_BACKENDS) + " |"
    rule = "|" + "---|" * (len(ALL_BACKENDS) + 2)
    rows = [header, rule]
    for name in sorted(REGISTRY):
        op = REGISTRY[name]
        marks = ["yes" if _supported(name, b) else "**no**" for b in ALL_BACKENDS]
        rows.append(f"| `{name}` | {op.family} | " + " | ".join(marks) + " |")
    return "\n".join(rows)
