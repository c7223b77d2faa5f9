"""`swarm`: the adjacency of every topology against hand-written lists, information travelling
exactly `rounds` hops (perturbing one agent changes exactly the agents within that many hops),
one round computed by hand from the agents' own modules, the combine rules, and mistakes."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import nexusdsl
from nexusdsl.ops.swarm import neighbours, normalize_topology
from nexusdsl.ops.swarm_torch import swarm_states

# Hand-written adjacency: (topology as written, agents, N(i) for every i).
ADJACENCY = [
    ("ring(2)", 6, [[1, 5], [0, 2], [1, 3], [2, 4], [3, 5], [0, 4]]),
    ("ring(4)", 7, [[1, 2, 5, 6], [0, 2, 3, 6], [0, 1, 3, 4], [1, 2, 4, 5], [2, 3, 5, 6],
                    [0, 3, 4, 6], [0, 1, 4, 5]]),
    ("star", 5, [[1, 2, 3, 4], [0], [0], [0], [0]]),
    ("tree(2)", 7, [[1, 2], [0, 3, 4], [0, 5, 6], [1], [1], [2], [2]]),
    ("tree(3)", 6, [[1, 2, 3], [0, 4, 5], [0], [0], [1], [1]]),
    ("full", 4, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]),
]


def parse_topology(text: str) -> dict:
    name, _, rest = text.partition("(")
    args = [int(rest.rstrip(")"))] if rest else []
    return {"fn": name, "args": args, "kwargs": {}}


@pytest.mark.parametrize("text,agents,expected", ADJACENCY, ids=[a[0] for a in ADJACENCY])
def test_adjacency_is_exactly_the_topology(text, agents, expected):
    topology = normalize_topology(parse_topology(text), agents)
    assert neighbours(topology, agents) == expected


def program(topology: str, agents: int, rounds: int, combine: str = "mean", width: int = 4):
    src = f"""nexus 0.1
import std.nn
model S {{
  input x: float[B, T, {width}]
  output y = swarm(x, {agents} of mlp(mult = 1), topology = {topology}, rounds = {rounds},
                   combine = {combine})
}}
"""
    return nexusdsl.loads(src, "s.nx")


def states(model, x, rounds, topology, agents):
    links = neighbours(normalize_topology(parse_topology(topology), agents), agents)
    with torch.no_grad():
        return swarm_states(model.swarm, x, rounds, links)


@pytest.mark.parametrize("text,agents,expected", ADJACENCY, ids=[a[0] for a in ADJACENCY])
def test_information_needs_rounds_hops(text, agents, expected):
    """Perturb agent j's parameters: after r rounds agent i's state changes iff i is at most
    r hops from j on the hand-written graph (r = 0: only j itself)."""
    graph = nx.Graph([(i, j) for i, ns in enumerate(expected) for j in ns])
    distance = dict(nx.all_pairs_shortest_path_length(graph))
    model = nexusdsl.compile(program(text, agents, 1))  # the agents; rounds are chosen below
    x = torch.randn(2, 3, 4)
    for rounds in range(4):
        before = states(model, x, rounds, text, agents)
        for j in range(agents):
            agent = model.swarm.agents[j]
            saved = {k: v.clone() for k, v in agent.state_dict().items()}
            with torch.no_grad():
                for p in agent.parameters():
                    p.add_(0.5 * torch.randn_like(p))
            after = states(model, x, rounds, text, agents)
            agent.load_state_dict(saved)
            changed = {i for i in range(agents) if not torch.equal(after[i], before[i])}
            near = {i for i in range(agents) if distance[j][i] <= rounds}
            assert changed == near, (rounds, j, changed)


def test_one_round_by_hand():
    """h_i = agent_i(x); then h_i <- agent_i(h_i + mean of the neighbours' h_j)."""
    model = nexusdsl.compile(program("tree(2)", 5, 1))
    x = torch.randn(2, 3, 4)
    a = model.swarm.agents
    with torch.no_grad():
        h = [a[i](x) for i in range(5)]
        links = {0: [1, 2], 1: [0, 3, 4], 2: [0], 3: [1], 4: [1]}
        want = [a[i](h[i] + sum(h[j] for j in links[i]) / len(links[i])) for i in range(5)]
        got = states(model, x, 1, "tree(2)", 5)
        assert torch.allclose(got, torch.stack(want), atol=1e-6)
        assert torch.allclose(model(x), torch.stack(want).mean(0), atol=1e-6)


@pytest.mark.parametrize("agents", [5, 6])
def test_vote_is_the_elementwise_median(agents):
    model = nexusdsl.compile(program("full", agents, 1, "vote"))
    x = torch.randn(2, 3, 4)
    s = states(model, x, 1, "full", agents)
    ordered = s.sort(0).values
    want = (ordered[(agents - 1) // 2] + ordered[agents // 2]) / 2
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)


def test_router_weighs_agents_by_a_gate_on_the_input():
    model = nexusdsl.compile(program("star", 4, 2, "router"))
    x = torch.randn(2, 3, 4)
    s = states(model, x, 2, "star", 4)
    gate = torch.softmax(x @ model.swarm.router.weight.T, dim=-1)  # (2, 3, 4 agents)
    want = sum(gate[..., i:i + 1] * s[i] for i in range(4))
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)
    model(x).sum().backward()
    assert model.swarm.router.weight.grad.abs().max() > 0


def test_every_agent_and_round_trains():
    model = nexusdsl.compile(program("ring(2)", 4, 2, "vote"))
    model(torch.randn(2, 3, 4)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_agents_keep_their_own_parameters_and_names():
    model = nexusdsl.compile(program("full", 3, 1))
    keys = [k for k in model.state_dict() if k.startswith("swarm.agents.2.")]
    assert keys == ["swarm.agents.2.mlp.linear.weight", "swarm.agents.2.mlp.linear.bias",
                    "swarm.agents.2.mlp.linear_1.weight", "swarm.agents.2.mlp.linear_1.bias"]
    first, second = model.swarm.agents[0], model.swarm.agents[1]
    assert not torch.equal(first.mlp.linear.weight, second.mlp.linear.weight)


def test_forms_of_the_agents_argument():
    src = """nexus 0.1
import std.nn
model S {
  input x: float[B, T, 8]
  experts school = [mlp(mult = 2), transformer_block(heads = 2), hyena(order = 1)]
  a = swarm(x, school, topology = full)
  b = swarm(a, mlp, count = 3, topology = star, rounds = 0)
  output y = swarm(b, [mlp, mlp], topology = full, combine = vote)
}
"""
    graph = nexusdsl.loads(src, "s.nx").elaborate()
    counts = [len(n.regions) for n in graph.nodes() if n.op == "swarm"]
    assert counts == [3, 3, 2]
    model = nexusdsl.compile(nexusdsl.loads(src, "s.nx"))
    assert model(torch.randn(2, 5, 8)).shape == (2, 5, 8)


@pytest.mark.parametrize("call,caret,message", [
    ("swarm(x, 4)", "4", "agents must be a block"),
    ("swarm(x, 4 of mlp, topology = ring(3))", "swarm", "k must be even and below the 4 agents"),
    ("swarm(x, 4 of mlp, topology = ring(4))", "swarm", "k must be even and below the 4 agents"),
    ("swarm(x, 4 of widen)", "swarm", "agent 0 turns [B, T, 8] into [B, T, 16]"),
    ("swarm(x, mlp)", "mlp", "how many agents? Write `8 of mlp(...)`"),
    ("swarm(x, 3 of mlp, count = 4)", "count", "count = 4, but the agents given are 3"),
    ("swarm(x, 3 of mlp, topology = grid)", "swarm", "ring(k), star, tree(fanout) or full"),
    ("swarm(x, 3 of mlp, rounds = -1)", "rounds", "rounds"),
    ("swarm(x, 3 of mlp, combine = max)", "combine", "combine"),
])
def test_mistakes_are_located(call, caret, message):
    src = f"""nexus 0.1
import std.nn
block widen(x: [*, d]) {{ return linear(x, d * 2) }}
model S {{
  input x: float[B, T, 8]
  output y = {call}
}}
"""
    with pytest.raises(nexusdsl.NexusError) as err:
        nexusdsl.loads(src, "s.nx")
    first = str(err.value).splitlines()[0]
    assert first.startswith(f"s.nx:6:{14 + call.index(caret)}:") and message in first, first
