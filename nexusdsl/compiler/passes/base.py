"""The pass interface and the rewrite-pattern driver.

A pass is a `Graph -> Graph` function with a kebab-case name and a docstring saying what it
requires, what it guarantees and the invariant it keeps. It rewrites the graph it is given in
place and returns it: the pass manager hands every pipeline a copy (compiler/pipeline.py), so
the caller's graph never changes. Most passes are a list of small named rewrite patterns
(xDSL's `RewritePattern`, tinygrad's `PatternMatcher`): each pattern looks at one node and
either rewrites around it or leaves the graph alone; the pass body only orchestrates, running
its patterns to a fixed point. A pass counts what it changed (per pattern) and keeps notes on
the choices it made, for `--emit passes` and `--explain`.

Passes speak to the `Graph` API only (`users`, `replace_all_uses_with`, `replace`, `erase`,
`insert`, `by_name`); the helpers below are built on it. They never name an op: they ask what
ops declare about themselves (`op_of(node).traits`, `Op.no_op`, `Op.fuse`, `Op.axis_map`, a
fused op's `replaces`; ops/traits.py) and read attributes typed (`attrs_of(node).out`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nexusdsl.ir.graph import Graph, Node, ValueRef


@dataclass(frozen=True)
class PassOptions:
    """Settings a pipeline hands to its passes.

    `sparsity`: the fraction of activations `--sparsity s` zeroes per input (0: off).
    `measure`: let passes that choose between kernels time them on this machine (else the
    cost model decides). `context`: the length given to symbolic sequence axes by the cost
    model (batch axes count 1), as in `nexus compile`'s summary. `backends`: the op-level
    backends the result must lower to (`required_backends` of the compile target): a
    rewrite into an op that one of them cannot run is not made. `device`: where the model
    will run (`cpu`, `cuda`, `cuda:1`); the cost model prices choices with that device's
    profile (compiler/passes/cost.py `machine_for`), and measuring times it there."""

    sparsity: float = 0.0
    measure: bool = False
    context: int = 256
    backends: tuple[str, ...] = ("eager", "compile")
    device: str = "cpu"


class Pass:
    name: ClassVar[str]

    def __init__(self, options: PassOptions | None = None):
        self.options = options or PassOptions()
        self.changes: Counter[str] = Counter()
        self.notes: list[str] = []

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> Graph:
        return self.run(graph)

    def record(self, what: str, note: str | None = None) -> None:
        self.changes[what] += 1
        if note:
            self.notes.append(note)

    def explain(self, note: str) -> None:
        """A choice worth telling the user about (`--explain`) that changed nothing."""
        self.notes.append(note)


def can_emit(p: Pass, op: str) -> bool:
    """Whether pass `p` may create nodes of `op` (every backend asked for runs it)."""
    from nexusdsl.ops import REGISTRY

    return set(p.options.backends) <= set(REGISTRY[op].backends)


class RewritePattern:
    """One rewrite: `apply` looks at `node` and rewrites the graph around it if it matches."""

    name: ClassVar[str]

    def apply(self, graph: Graph, node: Node, p: Pass) -> bool | str:
        """Rewrite at `node` if it matches: True (or, to count it under a name of its own, a
        string naming the change) if the graph changed."""
        raise NotImplementedError


class PatternPass(Pass):
    """Runs its patterns over every node until none matches (at most `max_rounds` sweeps)."""

    patterns: ClassVar[tuple[type[RewritePattern], ...]] = ()
    max_rounds: ClassVar[int] = 50

    def run(self, graph: Graph) -> Graph:
        patterns = [cls() for cls in self.patterns]
        for _ in range(self.max_rounds):
            if not self._sweep(graph, patterns):
                break
        return graph

    def _sweep(self, graph: Graph, patterns: list[RewritePattern]) -> bool:
        changed = False
        for node in graph.nodes():
            if node.id not in graph or graph.node(node.id) is not node:
                continue  # erased or rewritten earlier in this sweep
            for pattern in patterns:
                done = pattern.apply(graph, node, self)
                if done:
                    self.record(done if isinstance(done, str) else pattern.name)
                    changed = True
                    break
        return changed


# ---------------------------------------------------------------------------- graph helpers


def is_output(graph: Graph, node: Node) -> bool:
    return any(ref.node == node.id for ref in graph.outputs.values())


def sole_user(graph: Graph, node: Node) -> Node | None:
    """The one node that uses `node`'s results, if there is exactly one and no graph output
    reads them (so a rewrite may swallow `node`)."""
    users = graph.users(node)
    if len(users) != 1 or is_output(graph, node):
        return None
    return users[0]


def private_params(graph: Graph, node: Node) -> bool:
    """Whether `node` owns its parameters alone: it shares no other node's, no node shares
    or ties to its, and none of its own is tied. Only such nodes may change op or shape."""
    if node.shares or any(spec.tied_to for spec in node.params.values()):
        return False
    return not _referenced(graph, node)


def _referenced(graph: Graph, node: Node) -> bool:
    prefix = node.name + "."
    for other in graph.nodes():
        if other.shares == node.name:
            return True
        if any(s.tied_to and s.tied_to.startswith(prefix) for s in other.params.values()):
            return True
    return False


def forward(graph: Graph, old: Node, new: ValueRef) -> None:
    """Every use of `old`'s (single) result now reads `new`; `old` is erased if unused."""
    graph.replace_all_uses_with(old.ref(), new)
    if not graph.users(old) and not is_output(graph, old):
        graph.erase(old)


@dataclass
class Changes:
    """What one pass did to a graph, for `--emit passes`."""

    name: str
    changes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0
    cost_before: Any = None
    cost_after: Any = None
    skipped: bool = False
