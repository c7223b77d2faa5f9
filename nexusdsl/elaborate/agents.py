"""Agents in the elaborator: an op that declares `takes_agents = True` (`swarm`) receives a
block value, `N of block(...)`, a list of blocks or a set of experts as its `agents` argument.
Each agent becomes one nested graph (region): the agent applied to a fresh input of x's type;
the argument is replaced by the number of agents. Unlike the experts of `moe`, agents are not
wrapped in adapters: an agent maps x's type to itself (the op checks it).

    swarm(x, 8 of agent(heads = 2), topology = ring(2), rounds = 2)
    swarm(x, transformer_block(heads = 2), count = 8, topology = tree(2))
    experts school = [mlp(mult = 2), transformer_block(heads = 2)]
    swarm(x, school, topology = full, combine = router)
"""

from __future__ import annotations

from dataclasses import replace

from nexusdsl.elaborate.core import Core
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.modules import FileScope
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.values import Arg, ExpertSet, Partial, Tensor, describe
from nexusdsl.ir.graph import Graph
from nexusdsl.lang.diagnostics import NexusError, Note, Span

FORMS = "a block (`transformer_block(heads = 2)` with `count = 8`), `8 of block(...)`, a list " \
        "of blocks or a set of experts"


class Agents:
    def __init__(self, nodes: NodeWriter, core: Core, root: FileScope):
        self.nodes = nodes
        self.core = core
        self.root = root

    def agent_args(self, op, tensors: list[Arg], rest: list[Arg], kwargs, span: Span):
        """(rest, kwargs, regions) with the agents argument replaced by its count; None when
        the op takes no agents."""
        if not getattr(op, "takes_agents", False):
            return None
        where, arg = _find(op, rest, kwargs, span)
        count = _count(op, kwargs)
        members, label = _members(op, arg, count)
        x = tensors[0].value
        regions = [self._region(m, x.type, f"{label}.{i}", i, label, arg.span)
                   for i, m in enumerate(members)]
        number = Arg(len(regions), None, arg.span)
        if isinstance(where, int):
            rest = [number if i == where else a for i, a in enumerate(rest)]
        else:
            kwargs = [(k, number if k == where else a) for k, a in kwargs]
        return rest, kwargs, regions

    def _region(self, member, xtype, label: str, index: int, name: str, span: Span) -> Graph:
        if not isinstance(member, Partial):
            raise NexusError.at(span, f"agent {index} is {describe(member)}, not a block or op")
        try:
            return self.build_region(member, [xtype], label, span)
        except NexusError as err:
            note = Note(f"while building agent {index} of {name}", span)
            raise NexusError([replace(d, notes=d.notes + (note,)) for d in err.diagnostics],
                             err.sources) from None

    def build_region(self, value, inputs: list, label: str, span: Span) -> Graph:
        """Elaborate `value` (a block or op waiting for its tensor inputs) on its own, on fresh
        inputs of the given types: a nested graph whose outputs are its results."""
        with self.nodes.region(label) as graph:
            args = [self.nodes.region_input(t, i, len(inputs), span) for i, t in enumerate(inputs)]
            result = self.core.apply(value, args, [], span, None, Frame(self.root, ""))
            results = result if isinstance(result, tuple) else (result,)
            for i, r in enumerate(results):
                if not isinstance(r, Tensor):
                    raise NexusError.at(span, f"{label} must give tensors, got {describe(r)}")
                graph.outputs["out" if len(results) == 1 else f"out{i}"] = r.ref
            return graph


def _find(op, rest: list[Arg], kwargs, span: Span):
    for key, arg in kwargs:
        if key == "agents":
            return key, arg
    if rest:
        return 0, rest[0]
    raise NexusError.at(span, f"`{op.name}` needs its agents: {FORMS}")


def _count(op, kwargs) -> tuple[int, Span] | None:
    for key, arg in kwargs:
        if key == "count":
            value = arg.value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NexusError.at(arg.span, f"`{op.name}`: count must be a positive whole "
                                    f"number, got {describe(value)}")
            return value, arg.span
    return None


def _members(op, arg: Arg, count: tuple[int, Span] | None) -> tuple[list, str]:
    value = arg.value
    if isinstance(value, list):
        value = ExpertSet(value, arg.span)
    if isinstance(value, ExpertSet):
        if count is not None and count[0] != len(value.members):
            raise NexusError.at(count[1], f"`{op.name}`: count = {count[0]}, but the agents "
                                f"given are {len(value.members)}", Note("the agents are given", arg.span))
        return list(value.members), value.name or "agents"
    if isinstance(value, Partial):
        if count is None:
            raise NexusError.at(arg.span, f"`{op.name}`: how many agents? Write `8 of "
                                f"{value.name}(...)` or give `count = 8`")
        return [value] * count[0], "agents"
    raise NexusError.at(arg.span, f"`{op.name}`: agents must be {FORMS}, got {describe(value)}")
