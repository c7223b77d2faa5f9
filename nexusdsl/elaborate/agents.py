"""Agents in the elaborator: an op that declares `takes_agents = True` (`swarm`) receives a
block value, `N of block(...)`, a list of blocks or a set of experts as its `agents` argument.
Each agent becomes one nested graph (region) built on a fresh input of x's type with
`Builder.build_region`; the argument is replaced by the number of agents. Unlike the experts of
`moe`, agents are not wrapped in adapters: an agent maps x's type to itself (the op checks it).

    swarm(x, 8 of agent(heads = 2), topology = ring(2), rounds = 2)
    swarm(x, transformer_block(heads = 2), count = 8, topology = tree(2))
    experts school = [mlp(mult = 2), transformer_block(heads = 2)]
    swarm(x, school, topology = full, combine = router)
"""

from __future__ import annotations

from dataclasses import replace

from nexusdsl.elaborate.values import Arg, ExpertSet, Partial, describe
from nexusdsl.lang.diagnostics import NexusError, Note, Span

FORMS = "a block (`transformer_block(heads = 2)` with `count = 8`), `8 of block(...)`, a list " \
        "of blocks or a set of experts"


def agent_args(builder, op, tensors: list[Arg], rest: list[Arg], kwargs, span: Span):
    """(rest, kwargs, regions) with the agents argument replaced by its count; None when the op
    takes no agents."""
    if not getattr(op, "takes_agents", False):
        return None
    where, arg = _find(op, rest, kwargs, span)
    count = _count(op, kwargs)
    members, label = _members(op, arg, count)
    x = tensors[0].value
    regions = [_region(builder, m, x.type, f"{label}.{i}", i, label, arg.span)
               for i, m in enumerate(members)]
    number = Arg(len(regions), None, arg.span)
    if isinstance(where, int):
        rest = [number if i == where else a for i, a in enumerate(rest)]
    else:
        kwargs = [(k, number if k == where else a) for k, a in kwargs]
    return rest, kwargs, regions


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


def _region(builder, member, xtype, label: str, index: int, name: str, span: Span):
    if not isinstance(member, Partial):
        raise NexusError.at(span, f"agent {index} is {describe(member)}, not a block or op")
    try:
        return builder.build_region(member, [xtype], label, span)
    except NexusError as err:
        note = Note(f"while building agent {index} of {name}", span)
        raise NexusError([replace(d, notes=d.notes + (note,)) for d in err.diagnostics],
                         err.sources) from None
