"""Dispatch: the torch implementation of `moe` and of `route`'s modal_take / modal_merge.

Token-wise experts see only their own tokens: assignments are grouped by expert (priority
order kept inside each expert, see `Plan`), gathered with index_select, run one
expert at a time on a contiguous block (one large matmul per expert layer), and added back
with gate weights by index_add_. With `capacity` > 0 every expert has a static number of slots
C = ceil(capacity * N * k / E); assignments beyond C are dropped. With `capacity = 0` nothing
is dropped: in eager mode on the CPU the blocks have the exact sizes (the counts are read on
the host, which costs nothing there); on an accelerator, and while tracing (torch.compile,
torch.export, torch-mlir), the same code runs with C = the most tokens any expert can
receive, so shapes stay static, nothing waits for the device, and the result is the same
(the padded slots cost E*C rows of expert work instead of N*k).

Experts that mix tokens along the sequence (attention, pretrained layers) run on the whole
input and their output is weighted per token by the (dropping-aware) gate weight, which is 0
for tokens not routed to them.
"""

from __future__ import annotations

import math

import torch

from nexusdsl.ops.routers_torch import (
    Routing,
    balance_loss,
    hash_route,
    knn_route,
    topk_route,
    update_bias,
)
from nexusdsl.ops.routing import router_settings
from nexusdsl.ops.trace_torch import tracing as _tracing


def route_tokens(m, attrs, x: torch.Tensor, seq: int) -> Routing:
    r = attrs.router
    if r["fn"] == "topk":
        return topk_route(m, x, router_settings(r), m.training)
    if r["fn"] == "knn":
        return knn_route(m, x, r["kwargs"], m.training)
    return hash_route(m, x, r["kwargs"], m.training, attrs.experts, seq)


# Devices whose tensors the host reads without waiting for a queue of kernels: there the
# dropless dispatch reads the per-expert counts and runs blocks of the exact sizes.
HOST_READ_DEVICES = frozenset({"cpu"})


def reads_are_free(device: torch.device) -> bool:
    return device.type in HOST_READ_DEVICES


def capacity_of(attrs, tokens: int, assignments: int, chosen: int) -> int:
    """Slots per expert. Dropless: an expert gets each token at most once per routing round,
    and forced assignments add at most `assignments - chosen` more."""
    e = attrs.experts
    if attrs.capacity > 0:
        return max(1, math.ceil(attrs.capacity * chosen / e))
    return min(assignments, tokens + assignments - chosen)


class Plan:
    """Where every assignment goes, with static shapes: its rank inside its expert, its place
    in expert-sorted order, and whether it fits the capacity.

    The order is computed without a sort (torch-mlir's TOSA path has none, and no backend has
    a stable one): the rank is a cumulative count over a one-hot (A, E) matrix, the sorted
    position is the expert's start plus the rank, and `order` inverts the positions."""

    def __init__(self, r: Routing, experts: int, capacity: int | None, tokens: int):
        onehot = torch.nn.functional.one_hot(r.expert, experts)  # (A, E)
        self.counts = onehot.sum(0)  # (E,)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # (E,)
        self.rank = (torch.cumsum(onehot, 0) * onehot).sum(1) - 1  # (A,) rank in its expert
        self.position = self.starts[r.expert] + self.rank  # (A,) place in sorted order
        arange = torch.arange(r.expert.numel(), device=r.expert.device)
        self.order = torch.zeros_like(self.position).scatter(0, self.position, arange)
        self.capacity = capacity
        self.kept = self.rank < capacity if capacity is not None else torch.ones_like(
            self.rank, dtype=torch.bool)
        self.weight = torch.where(self.kept, r.weight, torch.zeros_like(r.weight))  # (A,)
        self.routing = r
        self.tokens = tokens


class _Gather(torch.autograd.Function):
    """`src[index]` whose backward gathers (`grad[inverse]`) instead of scattering: CPU
    scatter-add is slow, and here every source row has at most one reader that matters."""

    @staticmethod
    def forward(ctx, src, index, inverse, valid):
        ctx.save_for_backward(inverse, valid)
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        inverse, valid = ctx.saved_tensors
        return grad.index_select(0, inverse) * valid[:, None].to(grad.dtype), None, None, None


def gather_rows(src, index, inverse, valid):
    """src[index] where source row i is read by output row inverse[i] (if valid[i]) and by no
    other output row whose gradient can be nonzero."""
    if _tracing() or not torch.is_grad_enabled():
        return src.index_select(0, index)
    return _Gather.apply(src, index, inverse, valid)


def moe_forward(attrs):
    """The closure `fn(m, x, shared?)` of a `moe` node; `m.experts[i]` are the lowered
    regions; `shared`, when given, is the shared expert's output, added to the routed sum."""
    sequence = list(attrs.sequence) or [False] * attrs.experts
    rate = router_settings(attrs.router).get("bias_rate", 0.0)

    def moe(m, x, *shared):
        lead, d = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, d)  # (N, d)
        seq = x.shape[-2] if x.dim() >= 2 else flat.shape[0]
        r = route_tokens(m, attrs, flat, seq)
        dynamic = attrs.capacity == 0 and not _tracing() and reads_are_free(flat.device)
        cap = None if dynamic else capacity_of(attrs, flat.shape[0], r.expert.numel(), r.chosen)
        plan = Plan(r, attrs.experts, cap, flat.shape[0])
        y = torch.zeros_like(flat)
        if not all(sequence):
            y = _tokenwise(m, plan, flat, sequence, x.dim())
        if any(sequence):
            y = _sequencewise(m, plan, x, y, sequence)
        _set_aux(m, attrs, r)
        if rate > 0 and m.training:
            update_bias(m, r, attrs.experts, rate)
        y = y.reshape(*lead, d)
        return y + shared[0] if shared else y

    return moe


def _set_aux(m, attrs, r: Routing) -> None:
    if m.training and attrs.balance > 0 and r.probs is not None:
        m.aux_loss = balance_loss(r, attrs.experts, attrs.balance)
    elif not _tracing() and getattr(m, "aux_loss", None) is not None:
        m.aux_loss = None  # never leave a stale loss from an earlier training step


def _as_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """(n, d) tokens shaped like the region's declared input (rank >= 2): (1, .., n, d)."""
    return t.reshape(*([1] * (rank - 2)), *t.shape) if rank > 2 else t


class _TokenGather(torch.autograd.Function):
    """Rows of the tokens for a list of assignments: `flat[tokens]`. Its backward reads each
    assignment's gradient (`grad[inverse]`, routing order) and sums a token's k assignments,
    so neither direction scatters or copies the tokens k times."""

    @staticmethod
    def forward(ctx, flat, tokens, inverse, valid, plan):
        ctx.save_for_backward(inverse, valid)
        ctx.plan = plan
        return flat.index_select(0, tokens)

    @staticmethod
    def backward(ctx, grad):
        inverse, valid = ctx.saved_tensors
        per_assignment = grad.index_select(0, inverse) * valid[:, None].to(grad.dtype)
        ones = torch.ones_like(ctx.plan.weight, dtype=grad.dtype)
        n = ctx.plan.tokens
        return _fold(per_assignment, ctx.plan.routing, ones, n), None, None, None, None


def gather_tokens(flat, plan: Plan, assignments, inverse, valid):
    """The input rows of `assignments` (indices in routing order)."""
    tokens = plan.routing.token[assignments]
    if _tracing() or not torch.is_grad_enabled():
        return flat.index_select(0, tokens)
    return _TokenGather.apply(flat, tokens, inverse, valid, plan)


def _fold(rows, r: Routing, weight, n: int):
    """sum over each token's assignments of weight * row (rows in routing order)."""
    w = weight[:, None].to(rows.dtype)
    k = r.chosen // n
    y = (rows[: r.chosen] * w[: r.chosen]).reshape(k, n, -1).sum(0)
    if rows.shape[0] > r.chosen:  # forced assignments (knn min_tokens): few, so scatter them
        y = y.index_add(0, r.token[r.chosen:], rows[r.chosen:] * w[r.chosen:])
    return y


def _combined(out, plan: Plan, n: int):
    """y[t] = sum of token t's assignments' outputs times their (kept) gate weights."""
    return _fold(out, plan.routing, plan.weight, n)


def _tokenwise(m, plan: Plan, flat, sequence, rank: int):
    if plan.capacity is not None:
        return _slotted(m, plan, flat, sequence, rank)
    # exact blocks (eager, dropless): one contiguous block per expert in sorted order
    ones = torch.ones_like(plan.order, dtype=torch.bool)
    ordered = gather_tokens(flat, plan, plan.order, plan.position, ones)  # (A, d) by expert
    blocks = ordered.split(plan.counts.tolist())
    outs = [_run(m.experts[e], b, rank) if b.shape[0] and not sequence[e] else
            b.new_zeros(b.shape[0], flat.shape[1]) for e, b in enumerate(blocks)]
    out = gather_rows(torch.cat(outs), plan.position, plan.order, ones)  # routing order
    return _combined(out, plan, flat.shape[0])


def _slotted(m, plan: Plan, flat, sequence, rank: int):
    """Static layout: expert e owns slots [e*C, (e+1)*C); slot c holds its c-th assignment;
    assignments ranked C or later are dropped."""
    e_count, cap = plan.counts.shape[0], plan.capacity
    slot = torch.arange(cap, device=flat.device)
    filled = (slot[None, :] < plan.counts[:, None]).reshape(-1)  # (E*C,)
    last = plan.order.numel() - 1
    sorted_at = (plan.starts[:, None] + slot[None, :]).reshape(-1).clamp_max(last)
    owner = plan.order[sorted_at]  # (E*C,) the assignment in each slot (if filled)
    expert = plan.routing.expert
    slot_of = (expert * cap + plan.rank).clamp_max(e_count * cap - 1)  # (A,) if kept
    buf = gather_tokens(flat, plan, owner, slot_of, plan.kept).reshape(e_count, cap, -1)
    outs = [_run(m.experts[e], buf[e], rank) if not sequence[e] else
            buf.new_zeros(cap, flat.shape[1]) for e in range(e_count)]
    out = gather_rows(torch.cat(outs), slot_of, owner, filled)  # (A, d); dropped get weight 0
    return _combined(out, plan, flat.shape[0])


def _run(region, tokens: torch.Tensor, rank: int) -> torch.Tensor:
    out = region(_as_rank(tokens, rank))
    return out.reshape(tokens.shape[0], -1)


def _sequencewise(m, plan: Plan, x, y, sequence):
    """Experts that mix tokens run on the whole input, weighted per token."""
    n, e_count = y.shape[0], len(sequence)
    dense = torch.zeros(n * e_count, dtype=y.dtype, device=y.device)
    r = plan.routing
    dense = dense.index_add(0, r.token * e_count + r.expert, plan.weight.to(y.dtype))
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
