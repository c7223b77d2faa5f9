"""The routers of `moe`: each maps tokens (N, d) to a `Routing` of static shape.

A routing is a list of A assignments (token, expert, weight), ordered by priority (every
token's first choice, then every token's second choice, ..., then forced assignments), plus the
router probabilities used by the balance loss. Shapes depend only on N, k and the number of
experts, never on the data, so `torch.export` and torch-mlir can take them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    """Top-k routing; `s` holds every setting (routing.router_settings). Softmax scores follow
    transformers' Mixtral and Qwen3-MoE routers (probabilities in float32), sigmoid scores its
    DeepSeek-V3 router (logits and scores in float32, the correction bias and the groups for
    choosing only, weights the unbiased scores of the chosen, renormalised, times `scale`)."""
    sigmoid = s["score"] == "sigmoid"
    if sigmoid:
        logits = F.linear(x.float(), m.router.weight.float())  # (N, E)
    else:
        logits = (x @ m.router.weight.t()).float()
    scores = _scores(logits, sigmoid)
    chosen_from = scores
    if training and s["noise"] > 0:
        chosen_from = _scores(logits + s["noise"] * torch.randn_like(logits), sigmoid)
    top_idx = _choose(chosen_from, m.router.bias if s["bias"] else None, s)  # (N, k)
    top_w = chosen_from.gather(1, top_idx)
    if s["normalize"]:
        # transformers: DeepSeek-V3 guards its sum with 1e-20, Mixtral and Qwen3-MoE do not
        top_w = top_w / (top_w.sum(-1, keepdim=True) + (1e-20 if sigmoid else 0.0))
    if s["scale"] != 1:
        top_w = top_w * s["scale"]
    token, expert, weight = _slot_major(top_idx, top_w.to(x.dtype))
    probs = scores / scores.sum(-1, keepdim=True) if sigmoid else scores  # for the balance loss
    return Routing(token, expert, weight, probs, token.numel())


def _scores(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    return logits.sigmoid() if sigmoid else torch.softmax(logits, dim=-1)


def _choose(scores: torch.Tensor, bias: torch.Tensor | None, s: dict) -> torch.Tensor:
    """The k experts each token picks (N, k), best first: by score plus the correction bias,
    among the experts of its `topk_groups` best groups (a group scored by the sum of its two
    best biased scores)."""
    choice = scores if bias is None else scores + bias
    groups = int(s["groups"])
    if groups > 1:
        n, e = choice.shape
        group_scores = choice.view(n, groups, e // groups).topk(2, dim=-1)[0].sum(dim=-1)
        best = torch.topk(group_scores, int(s["topk_groups"]), dim=-1)[1]  # (N, kept)
        kept = torch.zeros_like(group_scores).scatter(1, best, 1.0).bool()  # (N, groups)
        kept = kept.unsqueeze(-1).expand(n, groups, e // groups).reshape(n, e)
        choice = choice.masked_fill(~kept, float("-inf"))
    return torch.topk(choice, int(s["k"]), dim=-1)[1]


def update_bias(m, r: Routing, experts: int, rate: float) -> None:
    """DeepSeek-V3's balancing without a loss: every expert's correction bias moves by
    `rate` toward balance, down for an expert chosen more than the mean, up for one chosen
    less (bias += rate * sign(mean load - load))."""
    with torch.no_grad():
        chosen = r.expert[: r.chosen]
        load = torch.zeros(experts, device=chosen.device).scatter_add_(
            0, chosen, torch.ones_like(chosen, dtype=torch.float32))
        m.router.bias += rate * torch.sign(load.mean() - load).to(m.router.bias.dtype)


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
