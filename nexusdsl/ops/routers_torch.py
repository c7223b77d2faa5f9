"""The routers of `moe`: each maps tokens (N, d) to a `Routing` of static shape.

A routing is a list of A assignments (token, expert, weight), ordered by priority (every
token's first choice, then every token's second choice, ..., then forced assignments), plus the
router probabilities used by the balance loss. Shapes depend only on N, k and the number of
experts, never on the data, so `torch.export` and torch-mlir can take them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Routing:
    token: torch.Tensor  # (A,) int64: which token
    expert: torch.Tensor  # (A,) int64: which expert
    weight: torch.Tensor  # (A,) float: its gate weight
    probs: torch.Tensor | None  # (N, E) router probabilities, for the balance loss
    chosen: int  # the first N * k assignments are routing choices (the rest are forced)


def _slot_major(top_idx: torch.Tensor, top_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(N, k) choices -> assignments in priority order: all first choices, then all second."""
    n, k = top_idx.shape
    token = torch.arange(n, device=top_idx.device).repeat(k)  # (k*N,)
    return token, top_idx.t().reshape(-1), top_w.t().reshape(-1)


def topk_route(m, x: torch.Tensor, s: dict, training: bool) -> Routing:
    logits = x @ m.router.weight.t()  # (N, E)
    probs = torch.softmax(logits.float(), dim=-1)
    noisy = probs
    if training and s["noise"] > 0:
        noisy = torch.softmax(logits.float() + s["noise"] * torch.randn_like(logits.float()), -1)
    top_w, top_idx = torch.topk(noisy, int(s["k"]), dim=-1)  # (N, k)
    if s["normalize"]:
        top_w = top_w / top_w.sum(-1, keepdim=True)
    token, expert, weight = _slot_major(top_idx, top_w.to(x.dtype))
    return Routing(token, expert, weight, probs, token.numel())


def _euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.cdist, written out while exporting to MLIR (torch-mlir has no cdist)."""
    if torch.compiler.is_exporting():
        return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1).sqrt()
    return torch.cdist(a, b)


def knn_route(m, x: torch.Tensor, s: dict, training: bool) -> Routing:
    q = x @ m.router.proj.t()  # (N, coords): the token's coordinates
    dist = _euclidean(q.float(), m.router.coords.float())  # (N, E)
    scale = dist.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    closeness = 1.0 - dist / scale  # 1 at the token's own place, 0 for its farthest expert
    near_d, near_idx = torch.topk(dist, int(s["k"]), dim=-1, largest=False)  # (N, k)
    top_w = torch.gather(closeness, 1, near_idx)
    token, expert, weight = _slot_major(near_idx, top_w)
    chosen = token.numel()
    m_tokens = min(int(s["min_tokens"]), x.shape[0])
    if m_tokens > 0:
        token, expert, weight = _with_forced(dist, closeness, near_idx, m_tokens,
                                             (token, expert, weight))
    probs = torch.softmax(-dist, dim=-1)
    return Routing(token, expert, weight.to(x.dtype), probs, chosen)


def _with_forced(dist, closeness, near_idx, m_tokens: int, routed):
    """MNN: every expert also takes its `m_tokens` nearest tokens; a token that already chose
    that expert gets weight 0 for the forced copy, so nothing is counted twice."""
    n, e = dist.shape
    _, tok = torch.topk(dist, m_tokens, dim=0, largest=False)  # (m, E)
    exp = torch.arange(e, device=dist.device).expand(m_tokens, e)
    tok, exp = tok.reshape(-1), exp.reshape(-1)
    already = (near_idx[tok] == exp[:, None]).any(-1)  # (m*E,)
    w = torch.where(already, torch.zeros_like(tok, dtype=closeness.dtype), closeness[tok, exp])
    token, expert, weight = routed
    return torch.cat([token, tok]), torch.cat([expert, exp]), torch.cat([weight, w])


_GOLDEN = 2654435761  # Knuth's multiplicative hash constant


def hash_route(m, x: torch.Tensor, s: dict, training: bool, experts: int, seq: int) -> Routing:
    """Hash layers (Roller et al. 2021) without token ids: a token's expert is a fixed hash of
    its position in the sequence (a balanced, parameter-free assignment)."""
    n = x.shape[0]
    position = torch.arange(n, device=x.device) % seq
    mixed = (position * _GOLDEN + int(s["seed"]) * 40503) % (2**32)
    expert = (mixed // 65536) % experts
    token = torch.arange(n, device=x.device)
    return Routing(token, expert, torch.ones(n, dtype=x.dtype, device=x.device), None, n)


def balance_loss(r: Routing, experts: int, balance: float) -> torch.Tensor:
    """Switch Transformer: balance * E * sum_i f_i * P_i, with f_i the share of the routing
    choices that picked expert i (counted before dropping) and P_i the mean probability."""
    chosen = r.expert[: r.chosen]
    f = torch.zeros(experts, device=chosen.device).scatter_add_(
        0, chosen, torch.ones_like(chosen, dtype=torch.float32)) / max(r.chosen, 1)
    p = r.probs.mean(dim=0)
    return balance * experts * (f * p).sum()
