"""Magnitude pruning of a trained model (`nexus prune`): a transformation of the IR *and* the
weights, so it is not a pass of the pipelines (which see no weights).

- unstructured (default): in every projection weight (ops declaring
  `Traits.projection_weights`: linear, mix, conv, attention, adapter, ...; not embedding
  tables or norms) the `amount` of entries smallest in magnitude are set to zero. The IR is
  unchanged, and so is the checkpoint's size (dense zeros).
- structured (`--structured`): whole units go, and the IR records the new widths:
  * MLP hidden units (projection -> elementwise activation -> projection, the projections
    declaring `Traits.token_projection`): a unit's score is |W1[u, :]| * |W2[:, u]| (L2
    norms of what goes in and comes out); the lowest `amount` of them are removed from both;
  * attention heads: a head's score is the norm of its q, k, v rows times the norm of its
    columns of the output projection; the node becomes `pruned_attention` with fewer heads
    of the same width;
  * experts of a `moe` with a learned router (`topk`, `knn`): an expert's score is the norm
    of all its trainable weights; the lowest `amount` go, with their router rows (topk's
    gate rows, knn's expert coordinates). At least k experts stay. A `hash` router assigns
    positions to experts by number and has no learned gate to remove, so it is left whole;
    frozen (pretrained) experts are scored by their adapters and kept by reference.
  At least one unit, head or expert always stays.

`prune_checkpoint` evaluates held-out loss before and after on the checkpoint's own data
(its train section's corpus by default) and writes a checkpoint holding the pruned IR
(`state.json` "ir"), which `nexus eval` and `nexus generate` load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nexusdsl.compiler.passes.base import private_params, sole_user
from nexusdsl.compiler.passes.linear_fusion import is_activation
from nexusdsl.ir.graph import Graph, Node, ParamSpec
from nexusdsl.ir.types import Axis
from nexusdsl.ops.base import attrs_of, op_of
from nexusdsl.ops.fused import PrunedAttention
from nexusdsl.ops.routing import Moe

Weights = dict[str, torch.Tensor]


@dataclass
class Pruned:
    graph: Graph
    weights: Weights
    removed: dict[str, tuple[int, int]] = field(default_factory=dict)  # what: (kept, total)


def keep_count(total: int, amount: float) -> int:
    return max(1, total - math.floor(amount * total + 1e-9))


def top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` highest scores' indices, in increasing order (units keep their order)."""
    return torch.sort(torch.topk(scores, count).indices).values


# ---------------------------------------------------------------------------- unstructured


def prune_magnitude(graph: Graph, weights: Weights, amount: float) -> Pruned:
    weights = dict(weights)
    zeroed = total = 0
    for node in graph.nodes():
        if node.is_input or node.shares or not op_of(node).traits.projection_weights:
            continue
        for key, spec in node.params.items():
            name = f"{node.name}.{key}"
            if spec.tied_to or len(spec.shape) < 2 or name not in weights:
                continue
            w = weights[name]
            k = math.floor(amount * w.numel())
            if k:
                cut = w.abs().flatten().kthvalue(k).values
                weights[name] = torch.where(w.abs() <= cut, torch.zeros_like(w), w)
            zeroed += int((weights[name] == 0).sum())
            total += w.numel()
    return Pruned(graph, weights, {"weights": (total - zeroed, total)})


# ---------------------------------------------------------------------------- structured


def prune_structured(graph: Graph, weights: Weights, amount: float) -> Pruned:
    graph = Graph.from_json(graph.to_json())
    result = Pruned(graph, dict(weights))
    for node in graph.nodes():
        if node.id not in graph or node.is_input:
            continue
        node = graph.node(node.id)
        op = op_of(node)
        if op.traits.token_projection:
            _prune_mlp(result, node, amount)
        elif node.op == PrunedAttention.replaces:
            _prune_heads(result, node, amount)
        elif isinstance(op, Moe):
            _prune_experts(result, node, amount)
    return result


def _count(result: Pruned, what: str, kept: int, total: int) -> None:
    k, t = result.removed.get(what, (0, 0))
    result.removed[what] = (k + kept, t + total)


def _mlp_match(graph: Graph, first: Node) -> tuple[Node, Node] | None:
    """first -> act -> second, each read only by the next: (act, second)."""
    act = sole_user(graph, first)
    if act is None or not is_activation(act) or not op_of(act).traits.elementwise:
        return None
    second = sole_user(graph, act)
    if second is None or not op_of(second).traits.token_projection:
        return None
    if not (private_params(graph, first) and private_params(graph, second)):
        return None
    return act, second


def _prune_mlp(result: Pruned, first: Node, amount: float) -> None:
    graph, w = result.graph, result.weights
    match = _mlp_match(graph, first)
    if match is None:
        return
    act, second = match
    w1, w2 = w[f"{first.name}.weight"], w[f"{second.name}.weight"]
    width = w1.shape[0]
    kept = top_indices(w1.norm(dim=1) * w2.norm(dim=0), keep_count(width, amount))
    w[f"{first.name}.weight"] = w1[kept]
    if attrs_of(first).bias:
        w[f"{first.name}.bias"] = w[f"{first.name}.bias"][kept]
    w[f"{second.name}.weight"] = w2[:, kept]
    n = len(kept)
    _resize(graph, first, {"out": n}, {"weight": (n, w1.shape[1]), "bias": (n,)})
    _resize(graph, act, {}, {})
    _resize(graph, second, {}, {"weight": (w2.shape[0], n)}, last=False)
    _count(result, "mlp units", n, width)


def _resize(graph: Graph, node: Node, attrs: dict, shapes: dict, last: bool = True) -> None:
    """New attributes, parameter shapes and (if `last`) last-axis size for a node whose
    width changed; an activation takes the width of its input."""
    node = graph.node(node.id)
    params = {k: (s.model_copy(update={"shape": shapes[k]}) if k in shapes else s)
              for k, s in node.params.items()}
    outputs = node.outputs
    if last:
        size = attrs.get("out") or graph.type_of(node.inputs[0]).axes[-1].size
        t = outputs[0]
        outputs = [t.with_axes((*t.axes[:-1], Axis(name=t.axes[-1].name, size=size)))]
    graph.replace(node, node.model_copy(update={"attrs": {**node.attrs, **attrs},
                                                "params": params, "outputs": outputs}))


def _prune_heads(result: Pruned, node: Node, amount: float) -> None:
    graph, w = result.graph, result.weights
    if not private_params(graph, node):
        return
    attention = attrs_of(node)
    heads = attention.heads
    qkv, proj = w[f"{node.name}.qkv.weight"], w[f"{node.name}.out.weight"]
    width = qkv.shape[1]
    size = width // heads
    rows = qkv.view(3, heads, size, width)
    scores = rows.pow(2).sum(dim=(0, 2, 3)).sqrt() * proj.view(width, heads, size).norm(dim=(0, 2))
    kept = top_indices(scores, keep_count(heads, amount))
    n = len(kept)
    w[f"{node.name}.qkv.weight"] = rows[:, kept].reshape(3 * n * size, width)
    w[f"{node.name}.out.weight"] = proj.view(width, heads, size)[:, kept].reshape(width, n * size)
    if attention.bias:
        bias = w[f"{node.name}.qkv.bias"].view(3, heads, size)
        w[f"{node.name}.qkv.bias"] = bias[:, kept].reshape(3 * n * size)
    attrs = {**node.attrs, "heads": n, "head_dim": size}
    params = dict(node.params)
    params["qkv.weight"] = ParamSpec(**{**params["qkv.weight"].model_dump(),
                                        "shape": (3 * n * size, width)})
    params["out.weight"] = ParamSpec(**{**params["out.weight"].model_dump(),
                                        "shape": (width, n * size)})
    if "qkv.bias" in params:
        params["qkv.bias"] = ParamSpec(**{**params["qkv.bias"].model_dump(),
                                          "shape": (3 * n * size,)})
    graph.replace(node, node.model_copy(update={"op": PrunedAttention.name, "attrs": attrs,
                                                "params": params}))
    _count(result, "attention heads", n, heads)


def _prune_experts(result: Pruned, node: Node, amount: float) -> None:
    graph, w = result.graph, result.weights
    moe = attrs_of(node)
    row_key = Moe.expert_rows(moe)
    if row_key is None or not private_params(graph, node):
        return
    count, k = moe.experts, int(moe.router["kwargs"].get("k", 1))
    prefix = f"{node.name}.experts."
    scores = torch.zeros(count)
    for key, value in w.items():
        if key.startswith(prefix):
            scores[int(key[len(prefix):].split(".", 1)[0])] += value.float().pow(2).sum()
    kept = top_indices(scores.sqrt(), max(k, keep_count(count, amount))).tolist()
    if len(kept) == count:
        return
    renumber = {old: new for new, old in enumerate(kept)}
    for key in [key for key in w if key.startswith(prefix)]:
        index, rest = key[len(prefix):].split(".", 1)
        value = w.pop(key)
        if int(index) in renumber:
            w[f"{prefix}{renumber[int(index)]}.{rest}"] = value
    full = f"{node.name}.{row_key}"
    w[full] = w[full][kept]
    params = dict(node.params)
    params[row_key] = params[row_key].model_copy(update={"shape": tuple(w[full].shape)})
    attrs = {**node.attrs, "experts": len(kept), "sequence": [moe.sequence[i] for i in kept]}
    graph.replace(node, node.model_copy(update={
        "attrs": attrs, "params": params, "regions": [node.regions[i] for i in kept]}))
    _count(result, "experts", len(kept), count)


# ---------------------------------------------------------------------------- checkpoints


@dataclass
class PruneResult:
    amount: float
    structured: bool
    before: dict[str, float]
    after: dict[str, float]
    removed: dict[str, tuple[int, int]]
    params: tuple[int, int]
    out: Path

    def summary(self) -> str:
        key = next((k for k in ("bpb", "loss") if k in self.before), next(iter(self.before)))
        kind = "structured" if self.structured else "unstructured"
        lines = [f"{kind} magnitude pruning, amount {self.amount:g}"]
        lines += [f"  {what}: kept {k:,} of {t:,}" for what, (k, t) in self.removed.items()]
        lines.append(f"  parameters: {self.params[0]:,} -> {self.params[1]:,}")
        lines.append(f"  held-out {key}: {self.before[key]:.4f} before, "
                     f"{self.after[key]:.4f} after ({self.after[key] - self.before[key]:+.4f})")
        lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def prune_checkpoint(program, path: Path, amount: float, structured: bool, out: Path, *,
                     model: str | None = None, batches: int | None = None,
                     device: str = "cpu") -> PruneResult:
    from nexusdsl.compiler.summary import count_params
    from nexusdsl.train.loop import evaluate
    from nexusdsl.train.session import from_checkpoint

    session = from_checkpoint(program, model, path, {"eval_batches": batches}, device)
    if session.trainee.base_sha256:  # its checkpoint holds adapters, not the weights to prune
        from nexusdsl.train.checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint {session.resumed.path} is a LoRA run: merge it "
                              "first (nexus merge FILE --checkpoint RUN -o MERGED), then prune "
                              "the merged run")
    before = evaluate(session)
    graph = session.module.graph
    weights = {k: v.detach().to("cpu", copy=True) for k, v in session.module.state_dict().items()}
    pruned = (prune_structured if structured else prune_magnitude)(graph, weights, amount)
    swap_model(session, pruned)
    after = evaluate(session)
    written = save_pruned(session, out, pruned, amount, structured)
    params = (count_params(graph)["total"], count_params(pruned.graph)["total"])
    return PruneResult(amount, structured, before, after, pruned.removed, params, written)


def swap_model(session, pruned: Pruned) -> None:
    """Put the pruned model in the session (weights loaded, prompt prefix kept)."""
    from nexusdsl.compiler.lower.fx import lower
    from nexusdsl.train.trainee import Trainee

    device = next(session.module.parameters()).device
    module = lower(pruned.graph, device=device, seed=session.config.seed)
    module.load_state_dict(pruned.weights)
    old = session.trainee
    trainee = Trainee(module, old.n_prefix, None, session.config.seed)
    if old.n_prefix:
        with torch.no_grad():
            trainee.prefix.copy_(old.prefix)
    session.module, session.trainee = module, trainee


def save_pruned(session, out: Path, pruned: Pruned, amount: float, structured: bool) -> Path:
    from nexusdsl.train import checkpoint as ckpt

    state: dict[str, Any] = session.metadata()
    state |= {"ir": pruned.graph.to_dict(), "elapsed": session.elapsed,
              "pruned": {"amount": amount, "structured": structured,
                         "removed": {k: list(v) for k, v in pruned.removed.items()},
                         "from": str(session.resumed.path if session.resumed else "")}}
    tied = ckpt.aliases(session.trainee)
    model = {k: v for k, v in session.trainee.state_dict(keep_vars=False).items()}
    return ckpt.save(Path(out), session.step, model, tied, {"state": {}, "param_groups": []},
                     state)
