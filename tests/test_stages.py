"""The stages import one way only, in the order docs/design.md ("Stage order") writes down.

The import graph is read from the source (every `import` statement, inside functions too), so
a backward edge fails here even when it is lazy."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGE = ROOT / "nexusdsl"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    line: int
    top_level: bool  # at module level (not inside a function or class)


def stage_order() -> list[list[str]]:
    """The stages of docs/design.md, lowest first: each a list of module prefixes."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("<!-- stages: read by tests/test_stages.py -->")[1]
    block = block.split("<!-- end stages -->")[0]
    return [re.findall(r"`(nexusdsl[\w.]*)`", line.split(":")[0])
            for line in block.strip().splitlines()]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[Edge]:
    tree = ast.parse(path.read_text())
    source = module_name(path)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from nexusdsl.cli import build` imports the module nexusdsl.cli.build
            targets = [f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}")
                       else node.module for a in node.names]
        else:
            continue
        found += [Edge(source, t, node.lineno, id(node) in top)
                  for t in targets if t == "nexusdsl" or t.startswith("nexusdsl.")]
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def all_edges() -> list[Edge]:
    return [e for path in sorted(PACKAGE.rglob("*.py")) for e in imports(path)]


def stage_of(module: str, stages: list[list[str]]) -> int:
    """The stage whose longest prefix matches the module."""
    best, length = None, -1
    for index, prefixes in enumerate(stages):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    assert best is not None, f"{module} belongs to no stage of docs/design.md"
    return best


def backward_edges(edges: list[Edge], stages: list[list[str]]) -> list[str]:
    return [f"{e.source}:{e.line} imports {e.target} (stage {stage_of(e.target, stages) + 1} "
            f"after {stage_of(e.source, stages) + 1})"
            for e in edges if stage_of(e.target, stages) > stage_of(e.source, stages)]


def test_every_module_belongs_to_a_stage():
    stages = stage_order()
    assert len(stages) >= 10
    for path in PACKAGE.rglob("*.py"):
        stage_of(module_name(path), stages)


def test_no_stage_imports_a_later_one():
    assert backward_edges(all_edges(), stage_order()) == []


def test_the_check_catches_a_deliberate_backward_import():
    edges = all_edges()
    planted = Edge("nexusdsl.ir.graph", "nexusdsl.train.loop", 1, False)
    lazy = Edge("nexusdsl.ops.core", "nexusdsl.elaborate.program", 1, False)
    found = backward_edges([*edges, planted, lazy], stage_order())
    assert found == ["nexusdsl.ir.graph:1 imports nexusdsl.train.loop (stage 10 after 3)",
                     "nexusdsl.ops.core:1 imports nexusdsl.elaborate.program (stage 6 after 5)"]


def test_module_level_imports_have_no_cycle():
    graph = nx.DiGraph()
    for e in all_edges():
        if e.top_level and e.target != e.source and is_module(e.target):
            graph.add_edge(e.source, e.target)
    cycles = [c for c in nx.simple_cycles(graph) if not _package_init_cycle(c)]
    assert cycles == []


def _package_init_cycle(cycle: list[str]) -> bool:
    # A package's __init__ importing its own submodules, which import their siblings by the
    # package path, is how Python packages are built, not a cycle between modules.
    return any(b.startswith(a + ".") for a, b in zip(cycle, cycle[1:] + cycle[:1]))


def test_no_import_after_a_modules_code():
    """An import at the bottom of a module (to break a cycle) is refused: imports come first."""
    late = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        code_seen = False
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if code_seen:
                    late.append(f"{module_name(path)}:{node.lineno}")
            elif not _is_docstring_or_guard(node):
                code_seen = True
    assert late == []


def _is_docstring_or_guard(node: ast.stmt) -> bool:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True
    return isinstance(node, (ast.Try, ast.If))  # guarded imports (`try: import x`)
