"""The torch implementation of `swarm` (ops/swarm.py). Imported only when lowering."""

from __future__ import annotations

import torch


def message_matrix(links: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """W (agents, agents): W[i, j] = 1 / |N(i)| for j in N(i), else 0 (an agent without
    neighbours hears nothing)."""
    n = len(links)
    rows = [[(1.0 / len(links[i]) if j in links[i] else 0.0) for j in range(n)] for i in range(n)]
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


class MessageWeights:
    """The message matrix of one swarm, built once on the host when the op is lowered and
    copied once to each device and dtype it meets: a forward makes no host-to-device copy
    (a per-forward `torch.tensor` of Python rows waits for the device on a GPU)."""

    def __init__(self, links: list[list[int]]):
        self.host = message_matrix(links, torch.empty((), dtype=torch.float64))
        self.copies: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        key = (str(x.device), x.dtype)
        if key not in self.copies:
            self.copies[key] = self.host.to(device=x.device, dtype=x.dtype)
        return self.copies[key]


def exchange(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Messages: the mean of each agent's neighbours' states. states (n, ...) -> (n, ...)."""
    n = states.shape[0]
    return (weights @ states.reshape(n, -1)).reshape(states.shape)


def swarm_states(m, x: torch.Tensor, rounds: int, links: list[list[int]],
                 messages: MessageWeights | None = None) -> torch.Tensor:
    """Every agent's state after `rounds` rounds, (agents, *x.shape)."""
    agents = list(m.agents)
    states = torch.stack([agent(x) for agent in agents])
    weights = (messages or MessageWeights(links)).like(x)
    for _ in range(rounds):
        heard = states + exchange(states, weights)
        states = torch.stack([agent(h) for agent, h in zip(agents, heard.unbind(0))])
    return states


def median(states: torch.Tensor) -> torch.Tensor:
    """The element-wise median over dim 0 (the mean of the two middle values for an even
    count), without a sort: ranks from pairwise comparisons, ties broken by index, so that
    every backend can run it and the gradient goes to the middle values."""
    n = states.shape[0]
    a, b = states.unsqueeze(1), states.unsqueeze(0)  # (n, 1, ...), (1, n, ...)
    index = torch.arange(n, device=states.device)
    shape = (n, n) + (1,) * (states.dim() - 1)
    earlier = (index[None, :] < index[:, None]).reshape(shape)  # j before i
    rank = ((b < a) | ((b == a) & earlier)).sum(1)  # (n, ...): i's place in sorted order
    middle = (rank == (n - 1) // 2).to(states.dtype) + (rank == n // 2).to(states.dtype)
    return (states * middle).sum(0) / 2


def swarm_forward(attrs, links: list[list[int]]):
    import torch.nn.functional as F

    messages = MessageWeights(links)

    def swarm(m, x):
        states = swarm_states(m, x, attrs.rounds, links, messages)  # (n, *, T, d)
        if attrs.combine == "mean":
            return states.mean(0)
        if attrs.combine == "vote":
            return median(states)
        gate = F.softmax(F.linear(x, m.router.weight), dim=-1)  # (*, T, n)
        return (states * gate.movedim(-1, 0).unsqueeze(-1)).sum(0)

    return swarm
