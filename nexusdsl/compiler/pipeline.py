"""Optimisation levels: which passes run, in order. `--opt 0` runs none."""

from __future__ import annotations

from nexusdsl.compiler.passes.base import Pass
from nexusdsl.compiler.passes.dead_code import DeadCode
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.verify import verify

PIPELINES: dict[int, list[type[Pass]]] = {
    0: [],
    1: [DeadCode],
    2: [DeadCode],
}


def optimize(graph: Graph, opt: int = 1, check: bool = False) -> Graph:
    """Run the passes of level `opt` on a copy of `graph`; `check` verifies after each pass."""
    if opt not in PIPELINES:
        raise ValueError(f"--opt must be one of {sorted(PIPELINES)}, got {opt}")
    graph = Graph.from_json(graph.to_json())
    for cls in PIPELINES[opt]:
        graph = cls()(graph)
        if check:
            verify(graph)
    return graph
