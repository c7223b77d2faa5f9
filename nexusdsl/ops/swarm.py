"""Shuurai's school of models (family "routing"): `swarm`.

    y = swarm(x, 8 of agent(heads = 2), topology = ring(2), rounds = 2, combine = mean)

Every agent is a nested graph (a region; see `elaborate/agents.py`) mapping `[*, T, d]` to the
same type. Round 0: each agent reads x, `h_i = agent_i(x)`. Each further round (there are
`rounds` of them) every agent reads the mean of its neighbours' states as a message and runs
again on its own state plus that message, with the same parameters:
`h_i <- agent_i(h_i + mean_{j in N(i)} h_j)`. Information therefore travels one hop per round:
after r rounds agent i has heard from exactly the agents at most r hops away. `rounds = 0`
gives independent agents. The agents' final states are combined:

- `mean`: their average;
- `vote`: their element-wise median (a majority vote for continuous values: robust to a few
  agents that disagree; with an even number of agents, the mean of the two middle values);
- `router`: a learned gate on x (`router.weight` [agents, d]), softmax over agents per token.

Topologies (undirected; N(i) never holds i):
- `ring(k)`: agents on a circle, each connected to its k nearest (k / 2 on each side; k even,
  k < agents); `ring` alone is `ring(2)`;
- `star`: agent 0 is the centre, connected to every other agent; the others only to it;
- `tree(fanout)`: agent 0 the root, the parent of agent i > 0 is (i - 1) // fanout; each agent
  is connected to its parent and its children; `tree` alone is `tree(2)`;
- `full`: everyone to everyone.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from nexusdsl.ops.attrs import Choice, Int, PosInt, fixed_width, normal, numel, require_float
from nexusdsl.ops.base import Op, OpAttrs, OpError, describe_axes, same_type_as

TOPOLOGIES = {"ring": {"k": 2}, "star": {}, "tree": {"fanout": 2}, "full": {}}


def _error(message: str) -> OpError:
    return OpError(f"swarm: {message}")


def normalize_topology(raw: Any, agents: int) -> dict[str, Any]:
    """`ring(2)` as it arrives ({"fn", "args", "kwargs"}) or a bare `star` to the full form
    {"fn": "ring", "args": [], "kwargs": {"k": 2}}, checked against the number of agents."""
    if isinstance(raw, str):
        raw = {"fn": raw, "args": [], "kwargs": {}}
    if not isinstance(raw, dict) or raw.get("fn") not in TOPOLOGIES:
        shown = raw.get("fn", raw) if isinstance(raw, dict) else raw
        raise _error(f"topology must be ring(k), star, tree(fanout) or full, got {shown!r}")
    name, defaults = raw["fn"], TOPOLOGIES[raw["fn"]]
    args, kwargs = list(raw.get("args") or []), dict(raw.get("kwargs") or {})
    if len(args) > len(defaults):
        raise _error(f"{name} takes {len(defaults)} setting(s), got {len(args)}")
    kwargs.update(zip(defaults, args))
    for key, value in kwargs.items():
        if key not in defaults:
            raise _error(f"{name}(...) has no setting `{key}`")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _error(f"{name}({key} = ...) must be a positive whole number, got {value!r}")
    full = {**defaults, **kwargs}
    if name == "ring" and (full["k"] % 2 or full["k"] >= agents):
        raise _error(f"ring(k) connects each agent to its k nearest, k / 2 on each side: k must "
                     f"be even and below the {agents} agents, got k = {full['k']}")
    return {"fn": name, "args": [], "kwargs": full}


def neighbours(topology: dict[str, Any], agents: int) -> list[list[int]]:
    """N(i) for every agent, sorted: the exact adjacency of a normalised topology."""
    name, s = topology["fn"], topology["kwargs"]
    links: list[set[int]] = [set() for _ in range(agents)]

    def link(i: int, j: int) -> None:
        if i != j:
            links[i].add(j)
            links[j].add(i)

    for i in range(agents):
        if name == "ring":
            for step in range(1, s["k"] // 2 + 1):
                link(i, (i + step) % agents)
        elif name == "star" and i:
            link(0, i)
        elif name == "tree" and i:
            link(i, (i - 1) // s["fanout"])
        elif name == "full":
            for j in range(i + 1, agents):
                link(i, j)
    return [sorted(n) for n in links]


class Swarm(Op):
    """`swarm(x, agents, topology = ring(2), rounds = 1, combine = mean)`: a school of agents
    exchanging messages (see the module docstring). `agents` is a block or op value with
    `count = n`, `n of block(...)`, a list of blocks, or a set of experts; each agent has its
    own parameters (`swarm.agents.3...`), reused in every round."""

    name = "swarm"
    family = "routing"
    parameters = {"router.weight": "[agents, d] with combine = router"}
    region_name = "agents"
    takes_agents = True  # the elaborator turns the agents argument into regions

    class Attrs(OpAttrs):
        agents: PosInt
        topology: Any = Field("ring", description="ring(k) | star | tree(fanout) | full")
        rounds: Annotated[Int, Field(ge=0)] = 1
        combine: Choice("mean", "vote", "router") = "mean"
        count: PosInt | None = None

    def resolve(self, ctx, inputs, attrs):
        if len(ctx.regions) != attrs.agents:
            raise _error("the second argument must be the agents: a block with `count = n`, "
                         "`n of block(...)`, a list of blocks or a set of experts")
        return attrs.model_copy(update={"topology": normalize_topology(attrs.topology,
                                                                       attrs.agents)})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("swarm", x)
        fixed_width("swarm", x)
        for i, region in enumerate(ctx.regions):
            outs = list(region.outputs.values())
            got = region.type_of(outs[0]) if len(outs) == 1 else None
            if got is None or got.rank != x.rank or not all(
                    a.same_extent(b) for a, b in zip(got.axes, x.axes)):
                shown = describe_axes(got) if got is not None else f"{len(outs)} tensors"
                raise _error(f"agent {i} turns {describe_axes(x)} into {shown}; an agent must "
                             "give back its input's shape, since it reads its own state and "
                             "its neighbours' in the next round")
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        if attrs.combine != "router":
            return {}
        return {"router.weight": normal((attrs.agents, inputs[0].axes[-1].size))}

    def flops(self, inputs, outputs, attrs):
        n, size = attrs.agents, numel(inputs[0])
        messages = attrs.rounds * 2 * n * n * size  # the mean of the neighbours' states
        combine = {"mean": n * size, "vote": 3 * n * n * size,
                   "router": 2 * n * size + 2 * size * n}[attrs.combine]
        return messages + combine

    def region_share(self, attrs, count):
        return float(attrs.rounds + 1)  # every agent runs on every token in every round

    def lower(self, attrs):
        from nexusdsl.ops.swarm_torch import swarm_forward

        return swarm_forward(attrs, neighbours(attrs.topology, attrs.agents))
