"""Optimisation levels and the pass manager.

`--opt 0` runs no pass. `--opt 1` runs the passes that keep every parameter as it is (same
state_dict keys, shapes and initial values): clean-ups only. `--opt 2` adds the fusions and
the compaction of static sparsity; parameters keep their names and initial values there too
(fused ops compute fused weights in their forward pass), except that a `random(density)`
wiring stores only its connections (an opt-0 checkpoint still loads: see `ops/fused.py`).
`--sparsity s` adds inference-time activation sparsity at any level (it changes what the
model computes, so it is never implied by a level).

The pass manager verifies the IR before and after every pass when asked (always under
pytest), prints the IR after chosen passes, skips disabled ones and records what each
changed (`nexus compile --emit passes`, `--explain`).
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Callable, Iterable

from nexusdsl.compiler.passes.activation_sparsity import ActivationSparsity
from nexusdsl.compiler.passes.axis_fusion import AxisFusion
from nexusdsl.compiler.passes.base import Changes, Pass, PassOptions
from nexusdsl.compiler.passes.cost import graph_cost
from nexusdsl.compiler.passes.cse import CommonSubexpressions
from nexusdsl.compiler.passes.dead_code import DeadCode
from nexusdsl.compiler.passes.fold_constants import FoldConstants
from nexusdsl.compiler.passes.kernel_fusion import KernelFusion
from nexusdsl.compiler.passes.layout_cancel import LayoutCancel
from nexusdsl.compiler.passes.linear_fusion import LinearFusion
from nexusdsl.compiler.passes.sparsity_pruning import SparsityPruning
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.verify import verify
from nexusdsl.ops import REGISTRY

CLEANUP: list[type[Pass]] = [DeadCode, FoldConstants, CommonSubexpressions, LayoutCancel,
                             DeadCode]
PIPELINES: dict[int, list[type[Pass]]] = {
    0: [],
    1: CLEANUP,
    2: [*CLEANUP, SparsityPruning, ActivationSparsity, AxisFusion, LinearFusion, KernelFusion,
        DeadCode],
}
ALL_PASSES: dict[str, type[Pass]] = {
    cls.name: cls for cls in (DeadCode, FoldConstants, CommonSubexpressions, LayoutCancel,
                              SparsityPruning, ActivationSparsity, AxisFusion, LinearFusion,
                              KernelFusion)}


class PassError(ValueError):
    """A pass named on the command line that does not exist."""


def check_pass_names(names: Iterable[str], flag: str) -> None:
    for name in names:
        if name not in ALL_PASSES:
            close = difflib.get_close_matches(name, list(ALL_PASSES), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise PassError(f"{flag}: there is no pass `{name}`{hint} (passes: "
                            f"{', '.join(ALL_PASSES)})")


def passes_for(opt: int, options: PassOptions | None = None) -> list[type[Pass]]:
    if opt not in PIPELINES:
        raise ValueError(f"--opt must be one of {sorted(PIPELINES)}, got {opt}")
    chosen = list(PIPELINES[opt])
    if options is not None and options.sparsity > 0 and ActivationSparsity not in chosen:
        chosen.append(ActivationSparsity)
    return chosen


def options_for(target: str = "torch", route: str | None = None, **settings) -> PassOptions:
    """Pass options for a compile target: rewrites only into ops every backend it needs
    runs (fused ops are eager and torch.compile only)."""
    from nexusdsl.compiler.backends import DEFAULT_ROUTE, required_backends

    return PassOptions(backends=required_backends(target, route or DEFAULT_ROUTE), **settings)


def _under_pytest() -> bool:
    return "PYTEST_CURRENT_TEST" in os.environ


class PassManager:
    """Runs passes in order on a copy of a graph and records what each did."""

    def __init__(self, passes: list[type[Pass]], options: PassOptions | None = None, *,
                 check: bool | None = None, disable: Iterable[str] = (),
                 print_after: Iterable[str] = (), print_all: bool = False,
                 explain: bool = False, emit: Callable[[str], None] = print):
        self.passes = passes
        self.options = options or PassOptions()
        self.check = _under_pytest() if check is None else check
        self.disable, self.print_after = set(disable), set(print_after)
        check_pass_names(self.disable, "--disable-pass")
        check_pass_names(self.print_after, "--print-after")
        self.print_all, self.explain, self.emit = print_all, explain, emit
        self.records: list[Changes] = []

    def run(self, graph: Graph) -> Graph:
        graph = Graph.from_json(graph.to_json())
        self.records = []
        for cls in self.passes:
            if cls.name in self.disable:
                self.records.append(Changes(cls.name, skipped=True))
                continue
            graph = self._run_one(cls, graph)
        return graph

    def _run_one(self, cls: type[Pass], graph: Graph) -> Graph:
        from nexusdsl.ir.printer import print_graph

        if self.check:
            verify(graph, REGISTRY)
        record = Changes(cls.name, nodes_before=len(graph))
        if self.explain:
            record.cost_before = graph_cost(graph, self.options.context)
        p = cls(self.options)
        start = time.perf_counter()
        graph = p(graph)
        record.seconds = time.perf_counter() - start
        if self.check:
            verify(graph, REGISTRY)
        record.changes, record.notes = dict(p.changes), list(p.notes)
        record.nodes_after = len(graph)
        if self.explain:
            record.cost_after = graph_cost(graph, self.options.context)
        self.records.append(record)
        if self.print_all or cls.name in self.print_after:
            self.emit(f"// IR after {cls.name}\n{print_graph(graph)}")
        return graph


def optimize(graph: Graph, opt: int = 1, check: bool | None = None, *,
             options: PassOptions | None = None, disable: Iterable[str] = ()) -> Graph:
    """Run the passes of level `opt` on a copy of `graph`; `check` verifies the IR before and
    after every pass (by default only under pytest)."""
    manager = PassManager(passes_for(opt, options), options, check=check, disable=disable)
    return manager.run(graph)


# ---------------------------------------------------------------------------- reports


def passes_report(records: list[Changes], explain: bool = False) -> str:
    """What each pass changed (`nexus compile --emit passes`), with costs when explained."""
    lines = []
    for r in records:
        if r.skipped:
            lines.append(f"{r.name:<20} disabled")
            continue
        changed = ", ".join(f"{k} x{v}" for k, v in sorted(r.changes.items())) or "no change"
        lines.append(f"{r.name:<20} {r.nodes_before:>4} -> {r.nodes_after:<4} nodes  "
                     f"{r.seconds * 1e3:6.1f} ms  {changed}")
        if explain and r.cost_before is not None:
            lines.append(f"{'':<20} cost {r.cost_before}")
            lines.append(f"{'':<20}   -> {r.cost_after}")
        if explain:
            lines.extend(f"{'':<20} {note}" for note in r.notes)
    return "\n".join(lines)
