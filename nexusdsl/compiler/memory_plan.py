"""The memory a training configuration needs, per process, from the IR alone (nothing is
allocated, torch is not imported): `nexus compile FILE --memory --batch B --context T
--precision P [--shard N] [--checkpoint]` (docs/language.md, "Limits").

- weights: every parameter in float32 (the master copy; autocast casts it per use);
- gradients: one float32 per trainable parameter; optimizer state: AdamW's two moments, two
  float32 per trainable parameter; all three divided by N when sharded (FSDP2 shards them);
- activations: what autograd keeps for the backward pass, estimated per node as its outputs'
  bytes (the next node saves them as its input) times a factor for ops that keep more
  (`SAVED`), at the precision's width for floating-point outputs, plus the loss's copy of
  the logits; in bf16/fp16 also the half-precision copy of each weight autocast keeps;
- activations with checkpointing: everything outside repeat steps, the steps' boundaries
  (one input per step), and one step's activations recomputed at a time;
- the generation cache: the decode cache's keys and values (compiler/lower/decode.py),
  2 x kv_heads x capacity x head_dim per attention node and batch row, at the precision.

Symbolic axes: `B` takes the batch, any other the context (a sequence axis).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nexusdsl.compiler.summary import count_params
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.types import TensorType
from nexusdsl.lang.diagnostics import UNKNOWN, Diagnostic, NexusError
from nexusdsl.memory import format_bytes

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OTHER_BYTES = {"i64": 8, "i32": 4, "bool": 1, "f64": 8}

# Ops that keep more than their output for the backward pass, in units of their output: an
# attention node keeps its fused q, k, v projection (3) and the heads' values before the
# output projection (1), besides its weights (`_scores`); a softmax keeps its output besides
# the input the next op saves.
SAVED = {"attention": 4.0, "softmax": 2.0, "latent_attention": 5.0}

# Ops whose outputs autocast makes in bf16/fp16 (matrix products, and elementwise functions
# of them); the others (norms, sums with the float32 residual stream, embeddings) stay float32.
HALF_UNDER_AUTOCAST = {"linear", "attention", "latent_attention", "unembed", "gelu", "relu",
                       "silu", "swiglu", "mlp", "conv", "matmul"}

# The outermost repeat step of a node's name (the scopes `blocks.{i}.`, docs/language.md,
# "Blocks and calls"), as train/checkpointing.py cuts the graph.
_STEP = re.compile(r"(?:^|\.)(blocks(?:_\d+)?\.\d+)(?=\.|$)")


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per process of one training configuration."""

    weights: int
    gradients: int
    optimizer: int
    activations: int  # without activation checkpointing
    activations_checkpointed: int
    cache: int  # the generation cache for `batch` rows of `context` tokens
    checkpoint: bool  # whether the total counts checkpointed activations

    @property
    def total(self) -> int:
        acts = self.activations_checkpointed if self.checkpoint else self.activations
        return self.weights + self.gradients + self.optimizer + acts

    def rows(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations,
                "activations_checkpointed": self.activations_checkpointed,
                "generation_cache": self.cache, "total": self.total}


def plan(graph: Graph, batch: int, context: int, precision: str = "fp32", shard: int = 1,
         checkpoint: bool = False) -> MemoryPlan:
    params = count_params(graph)
    width = PRECISION_BYTES[precision]
    sizes = {"B": batch}
    saved = Saved.of(graph, sizes, context, width)
    # the backward pass's gradients of one step's tensors, alive with what is saved; in
    # bf16/fp16 also autocast's half-precision copy of every weight
    extra = saved.largest_step + _logits_copy(graph, sizes, context)
    extra += params["total"] * width if precision != "fp32" else 0
    return MemoryPlan(
        weights=math.ceil(params["total"] * 4 / shard),
        gradients=math.ceil(params["trainable"] * 4 / shard),
        optimizer=math.ceil(params["trainable"] * 8 / shard),
        activations=saved.outside + sum(saved.steps.values()) + extra,
        activations_checkpointed=saved.outside + len(saved.steps) * saved.boundary
        + saved.largest_step + extra,
        cache=_cache(graph, batch, context, width), checkpoint=checkpoint)


@dataclass
class Saved:
    """What autograd keeps, in bytes: outside the repeat steps, per step, and a step's input
    (what a checkpointed step keeps)."""

    outside: int
    steps: dict[str, int]
    boundary: int

    @property
    def largest_step(self) -> int:
        return max(self.steps.values(), default=0)

    @classmethod
    def of(cls, graph: Graph, sizes: dict[str, int], context: int, width: int) -> Saved:
        outside, steps, boundary = 0, {}, 0
        for node in graph.nodes():
            if node.is_input:
                continue
            kept = _saved(node, sizes, context, width)
            step = _STEP.search(node.name)
            if step is None:
                outside += kept
                continue
            steps[step.group(1)] = steps.get(step.group(1), 0) + kept
            boundary = max([boundary, *(_bytes(t, sizes, context, width) for t in node.outputs)])
        return cls(outside, steps, boundary)


def _numel(t: TensorType, sizes: dict[str, int], context: int) -> int:
    return math.prod(a.size if a.size is not None else sizes.get(a.name or "", context)
                     for a in t.axes)


def _bytes(t: TensorType, sizes: dict[str, int], context: int, width: int) -> int:
    each = width if t.dtype.startswith(("f", "bf")) and t.dtype != "f64" else \
        OTHER_BYTES.get(t.dtype, 4)
    return _numel(t, sizes, context) * each


def _saved(node: Node, sizes: dict[str, int], context: int, width: int) -> int:
    width = width if node.op in HALF_UNDER_AUTOCAST else 4
    out = sum(_bytes(t, sizes, context, width) for t in node.outputs)
    return int(out * SAVED.get(node.op, 1.0)) + _scores(node, sizes, context, width)


def _scores(node: Node, sizes: dict[str, int], context: int, width: int) -> int:
    """An attention's weights, [B, heads, T, T]: with a mask (causal, padding) torch's CPU
    attention takes the path that keeps them."""
    if node.op != "attention":
        return 0
    heads = node.attrs.get("heads") or 1
    return sizes["B"] * heads * context * context * width


def _logits_copy(graph: Graph, sizes: dict[str, int], context: int) -> int:
    """The loss's float32 log-probabilities of each output (cross-entropy keeps them), and
    the backward pass's first gradients of the same size (of the log-probabilities and the
    logits), alive at once when the peak is reached."""
    return 3 * sum(_numel(graph.type_of(ref), sizes, context) * 4
                   for ref in graph.outputs.values())


def _cache(graph: Graph, batch: int, context: int, width: int) -> int:
    """Keys and values of every self-attention node (compiler/lower/decode.py's shapes)."""
    total = 0
    for node in graph.nodes():
        if node.op != "attention" or "kv" in (node.attrs.get("given") or ()):
            continue
        heads = node.attrs.get("heads") or 1
        kv_heads = node.attrs.get("kv_heads") or heads
        dim = node.outputs[0].axes[-1].size or 0
        size = node.attrs.get("head_dim") or dim // heads
        window = node.attrs.get("window")
        slots = min(window, context) if window else context
        total += 2 * batch * kv_heads * slots * size * width
    return total


def format_plan(graph: Graph, p: MemoryPlan, batch: int, context: int, precision: str,
                shard: int) -> str:
    where = f", sharded over {shard} processes" if shard > 1 else ""
    lines = [f"memory plan of {graph.name}: batch {batch}, context {context}, {precision}"
             f"{where}, per process"]
    names = {"activations": "activations", "activations_checkpointed":
             "activations (checkpointed)", "generation_cache": "generation cache"}
    for key, value in p.rows().items():
        label = names.get(key, key)
        if key == "total":
            label = "total (" + ("checkpointed" if p.checkpoint else "no checkpointing") + ")"
        lines.append(f"  {label:<28} {format_bytes(value):>12}  ({value:,} bytes)")
    return "\n".join(lines)


def too_big(graph: Graph, p: MemoryPlan, available: int | None,
            span=None) -> NexusError | None:
    """A located error (at `span`, the model) when the plan needs more than `available`."""
    if available is None or p.total <= available:
        return None
    acts = p.total - p.weights - p.gradients - p.optimizer
    return NexusError(Diagnostic(
        span or UNKNOWN,
        f"training {graph.name} needs {format_bytes(p.total)} per process (weights "
        f"{format_bytes(p.weights)}, gradients {format_bytes(p.gradients)}, optimizer "
        f"{format_bytes(p.optimizer)}, activations {format_bytes(acts)}), more than the "
        f"{format_bytes(available)} this machine has available; a smaller batch, activation "
        "checkpointing or sharding needs less"))
