"""The IR verifier: invariants every graph keeps, before and after every pass.

A violation is a compiler bug, not a user mistake, so it raises `VerifyError` (an ordinary
exception) showing the IR around the bad node, as JAX's `check_jaxpr` does."""

from __future__ import annotations

from collections.abc import Container

from nexusdsl.ir.graph import Graph, Node


class VerifyError(AssertionError):
    pass


def _fail(graph: Graph, node: Node | None, message: str):
    from nexusdsl.ir.printer import print_graph

    text = print_graph(graph, around=node.name if node else None)
    where = f" at node `{node.name}`" if node else ""
    raise VerifyError(f"IR verification failed{where}: {message}\n{text}")


def verify(graph: Graph, known_ops: Container[str] | None = None) -> None:
    """Check the invariants; with `known_ops` (the op registry), also that every op exists.
    The IR does not import the ops that are built on it: its callers hand the registry in."""
    seen: set[int] = set()
    names: set[str] = set()
    params: dict[str, tuple] = {}
    for node in graph.nodes():
        if node.name in names:
            _fail(graph, node, "duplicate node name")
        names.add(node.name)
        if known_ops is not None and node.op != "input" and node.op not in known_ops:
            _fail(graph, node, f"unknown op {node.op}")
        for ref in node.inputs:
            if ref.node not in seen:
                _fail(graph, node, f"input %{ref.node} is not defined before its use")
            if ref.index >= len(graph.node(ref.node).outputs):
                _fail(graph, node, f"input %{ref.node}#{ref.index} does not exist")
        if not node.outputs:
            _fail(graph, node, "a node without outputs")
        for region in node.regions:
            verify(region, known_ops)
        for key, spec in node.params.items():
            params[f"{node.name}.{key}"] = spec.shape
        seen.add(node.id)
    _verify_links(graph, params)
    for out, ref in graph.outputs.items():
        if ref.node not in seen or ref.index >= len(graph.node(ref.node).outputs):
            _fail(graph, None, f"output {out} refers to a missing value %{ref.node}#{ref.index}")


def _verify_links(graph: Graph, params: dict[str, tuple]) -> None:
    for node in graph.nodes():
        for key, spec in node.params.items():
            if spec.tied_to and params.get(spec.tied_to) != spec.shape:
                _fail(graph, node, f"{key} is tied to {spec.tied_to}, which has shape "
                      f"{params.get(spec.tied_to)}, not {spec.shape}")
        if node.shares:
            owner = graph.by_name(node.shares)
            if owner is None or owner.op != node.op or owner.params != node.params:
                _fail(graph, node, f"shares parameters with {node.shares}, which does not match")
