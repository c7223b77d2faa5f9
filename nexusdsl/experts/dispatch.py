"""Dispatch: the torch implementation of `moe` and of `route`'s modal_take / modal_merge.

Token-wise experts see only their own tokens: assignments are sorted by expert (a stable
argsort, so priority order is kept inside each expert), gathered with index_select, run one
expert at a time on a contiguous block (one large matmul per expert layer), and added back
with gate weights by index_add_. With `capacity` > 0 every expert has a static number of slots
C = ceil(capacity * N * k / E); assignments beyond C are dropped. With `capacity = 0` nothing
is dropped: in eager mode the blocks have the exact sizes (one host sync for the counts);
while tracing (torch.compile, torch.export, torch-mlir) the same code runs with C = the most
tokens any expert can receive, so shapes stay static and the result is the same.

Experts that mix tokens along the sequence (attention, pretrained layers) run on the whole
input and their output is weighted per token by the (dropping-aware) gate weight, which is 0
for tokens not routed to them.
"""

from __future__ import annotations

import math

import torch

from nexusdsl.experts.routers import Routing, balance_loss, hash_route, knn_route, topk_route


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def route_tokens(m, attrs, x: torch.Tensor, seq: int) -> Routing:
    r = attrs.router
    if r["fn"] == "topk":
        return topk_route(m, x, r["kwargs"], m.training)
    if r["fn"] == "knn":
        return knn_route(m, x, r["kwargs"], m.training)
    return hash_route(m, x, r["kwargs"], m.training, attrs.experts, seq)


def capacity_of(attrs, tokens: int, assignments: int, chosen: int) -> int:
    """Slots per expert. Dropless: an expert gets each token at most once per routing round,
    and forced assignments add at most `assignments - chosen` more."""
    e = attrs.experts
    if attrs.capacity > 0:
        return max(1, math.ceil(attrs.capacity * chosen / e))
    return min(assignments, tokens + assignments - chosen)


class Plan:
    """Where every assignment goes: sorted order, its slot inside its expert, and whether it
    fits (static shapes throughout)."""

    def __init__(self, r: Routing, experts: int, capacity: int | None):
        self.order = torch.argsort(r.expert, stable=True)  # (A,)
        self.expert = r.expert[self.order]
        self.token = r.token[self.order]
        self.weight = r.weight[self.order]
        ones = torch.ones_like(r.expert)
        self.counts = torch.zeros(experts, dtype=torch.long, device=r.expert.device)
        self.counts = self.counts.scatter_add(0, r.expert, ones)  # (E,)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # (E,)
        rank = torch.arange(r.expert.numel(), device=r.expert.device) - self.starts[self.expert]
        self.rank = rank  # position of each sorted assignment inside its expert
        self.capacity = capacity
        self.kept = rank < capacity if capacity is not None else torch.ones_like(rank, dtype=torch.bool)
        self.kept_weight = torch.where(self.kept, self.weight, torch.zeros_like(self.weight))


def moe_forward(attrs):
    """The closure `fn(m, x)` of a `moe` node; `m.experts[i]` are the lowered regions."""
    sequence = list(attrs.sequence) or [False] * attrs.experts

    def moe(m, x):
        lead, d = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, d)  # (N, d)
        seq = x.shape[-2] if x.dim() >= 2 else flat.shape[0]
        r = route_tokens(m, attrs, flat, seq)
        dynamic = attrs.capacity == 0 and not _tracing()
        cap = None if dynamic else capacity_of(attrs, flat.shape[0], r.expert.numel(), r.chosen)
        plan = Plan(r, attrs.experts, cap)
        y = torch.zeros_like(flat)
        if not all(sequence):
            y = _tokenwise(m, plan, flat, y, sequence, x.dim())
        if any(sequence):
            y = _sequencewise(m, plan, x, y, sequence)
        _set_aux(m, attrs, r)
        return y.reshape(*lead, d)

    return moe


def _set_aux(m, attrs, r: Routing) -> None:
    if m.training and attrs.balance > 0 and r.probs is not None:
        m.aux_loss = balance_loss(r, attrs.experts, attrs.balance)
    elif not _tracing() and getattr(m, "aux_loss", None) is not None:
        m.aux_loss = None  # never leave a stale loss from an earlier training step


def _as_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """(n, d) tokens shaped like the region's declared input (rank >= 2): (1, .., n, d)."""
    return t.reshape(*([1] * (rank - 2)), *t.shape) if rank > 2 else t


def _tokenwise(m, plan: Plan, flat, y, sequence, rank: int):
    if plan.capacity is not None:
        return _slotted(m, plan, flat, y, sequence, rank)
    # exact blocks (eager, dropless): gather each expert's tokens and add its output back in
    # place, so no (A, d) intermediate is split, concatenated or copied
    y = y.clone()
    start = 0
    for e, count in enumerate(plan.counts.tolist()):
        if count and not sequence[e]:
            token = plan.token.narrow(0, start, count)
            out = _run(m.experts[e], flat.index_select(0, token), rank)  # (count, d)
            y.index_add_(0, token, out * plan.kept_weight.narrow(0, start, count)[:, None])
        start += count
    return y


def _slotted(m, plan: Plan, flat, y, sequence, rank: int):
    """Static layout: expert e owns slots [e*C, (e+1)*C); slot c holds its c-th assignment."""
    e_count, cap = plan.counts.shape[0], plan.capacity
    slot = torch.arange(cap, device=flat.device)
    source = plan.starts[:, None] + slot[None, :]  # (E, C) sorted positions
    valid = slot[None, :] < plan.counts[:, None]
    source = torch.where(valid, source, torch.zeros_like(source)).clamp_max(
        plan.token.numel() - 1)
    tokens = plan.token[source.reshape(-1)]  # (E*C,)
    buf = flat.index_select(0, tokens).reshape(e_count, cap, -1)  # (E, C, d)
    outs = [_run(m.experts[e], buf[e], rank) if not sequence[e] else torch.zeros_like(buf[e])
            for e in range(e_count)]
    out = torch.stack(outs).reshape(e_count * cap, -1)  # (E*C, d)
    # weight of each slot: its assignment's (0 for empty slots); dropped ones have no slot
    w = torch.where(valid.reshape(-1), plan.weight[source.reshape(-1)],
                    torch.zeros_like(plan.weight[source.reshape(-1)]))
    return y.index_add(0, tokens, out * w[:, None])


def _run(region, tokens: torch.Tensor, rank: int) -> torch.Tensor:
    out = region(_as_rank(tokens, rank))
    return out.reshape(tokens.shape[0], -1)


def _sequencewise(m, plan: Plan, x, y, sequence):
    """Experts that mix tokens run on the whole input, weighted per token."""
    n, e_count = y.shape[0], len(sequence)
    dense = torch.zeros(n * e_count, dtype=y.dtype, device=y.device)
    dense = dense.index_add(0, plan.token * e_count + plan.expert, plan.kept_weight)
    dense = dense.reshape(n, e_count)  # (N, E) gate weight after dropping
    for e, whole in enumerate(sequence):
        if whole:
            out = m.experts[e](x).reshape(n, -1)
            y = y + out * dense[:, e:e + 1]
    return y


# ---------------------------------------------------------------------------- route


def _lengths(segments, total: int) -> list[int]:
    """Run-time length of each code segment; symbolic ones share what the fixed ones leave."""
    fixed = sum(size for _, size, _ in segments if size is not None)
    free = [i for i, (_, size, _) in enumerate(segments) if size is None]
    each = (total - fixed) // len(free) if free else 0
    return [size if size is not None else each for _, size, _ in segments]


def modal_take(code: int, segments):
    def take(m, x):
        lengths, parts, start = _lengths(segments, x.shape[-2]), [], 0
        for (c, _, _), n in zip(segments, lengths):
            if c == code:
                parts.append(x.narrow(-2, start, n))
            start += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    return take


def modal_merge(order: list[int], segments):
    def merge(m, *parts):
        sizes = {code: p.shape[-2] for code, p in zip(order, parts)}
        total = sum(sizes.values())
        lengths = _lengths(segments, total)
        offsets = dict.fromkeys(order, 0)
        pieces = []
        for (c, _, _), n in zip(segments, lengths):
            part = parts[order.index(c)]
            pieces.append(part.narrow(-2, offsets[c], n))
            offsets[c] += n
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)

    return merge
