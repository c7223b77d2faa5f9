"""The pass interface: a pass is a pure `Graph -> Graph` function with a kebab-case name and a
docstring saying what it requires, what it guarantees and the invariant it keeps."""

from __future__ import annotations

from typing import ClassVar

from nexusdsl.ir.graph import Graph


class Pass:
    name: ClassVar[str]

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> Graph:
        return self.run(graph)
