"""Incremental decoding of a compiled model, derived from its graph (ops/decode.py).

`Decoder(module, batch, capacity)` puts a model of one token input into decoding mode for a
batch: the same torch.fx graph runs, but every node on the way from the token input to the
outputs runs its op's decoding instead of its forward (tokenwise ops as they are, attention
with its key/value cache, positions from each row's length), and every node that does not
depend on the token input (an encoder's, a cross-attention's memory) runs once and keeps its
result. `decoder(tokens, mask)` feeds new tokens (a padded prompt first, then one token at a
time) and returns the model's outputs for them.

`decode_plan(graph)` says whether a model can decode this way, and if not, which op stops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import attrs_of
from nexusdsl.ops.decode import TOKENWISE, Decode, DecodeContext


@dataclass
class DecodePlan:
    tokens: str  # the token input
    mask: str | None  # the padding-mask input (bool, with a default), if the model has one
    ways: dict[int, Any] = field(default_factory=dict)  # node id -> TOKENWISE | Decode | "const"
    blocker: str | None = None  # why the model cannot decode, if it cannot


def token_input(graph: Graph) -> tuple[Node | None, Node | None]:
    """The integer input that generation grows, and its padding mask (a bool input of the
    same axes), if any. With several integer inputs (an encoder-decoder), the one whose
    sequence axis is the outputs' (T5's decoder tokens, not the encoder's)."""
    ints = [n for n in graph.inputs() if n.type.dtype == "i64" and n.type.rank == 2]
    if len(ints) > 1:
        out = graph.type_of(next(iter(graph.outputs.values())))
        sequence = out.axes[-2].name if out.rank >= 2 else None
        ints = [n for n in ints if n.type.axes[-1].name == sequence]
    if len(ints) != 1:
        return None, None
    tokens = ints[0]
    masks = [n for n in graph.inputs() if n.type.dtype == "bool" and n.type.axes == tokens.type.axes]
    return tokens, (masks[0] if len(masks) == 1 else None)


def decode_plan(graph: Graph) -> DecodePlan:
    tokens, mask = token_input(graph)
    if tokens is None:
        return DecodePlan("", None, blocker="the model has no single integer token input")
    plan = DecodePlan(tokens.name, mask.name if mask is not None else None)
    live = {tokens.id} | ({mask.id} if mask is not None else set())
    for node in graph.nodes():
        if node.is_input:
            continue
        if not any(ref.node in live for ref in node.inputs):
            plan.ways[node.id] = "const"  # the same at every step: computed once
            continue
        live.add(node.id)
        op = REGISTRY[node.op]
        way = op.decode(attrs_of(node), [graph.type_of(r) for r in node.inputs])
        if way is None:
            plan.blocker = plan.blocker or f"{node.op} at {node.name}"
        plan.ways[node.id] = way
    return plan


class _Calls:
    """A module's decoding across the nodes that call it (a `repeat N shared` body calls one
    module N times per forward): one state per call, taken in order."""

    def __init__(self, way, states: list):
        self.way, self.states, self.next = way, states, 0


class Decoder:
    """A model in decoding mode for `batch` rows of at most `capacity` tokens each. Use as a
    context manager (the model is restored on exit), or call `close()`."""

    def __init__(self, module, batch: int, capacity: int, **fixed):
        """`fixed`: the model's other inputs, the same at every step (an encoder's tokens)."""
        plan = decode_plan(module.graph)
        if plan.blocker:
            raise ValueError(f"{module.graph.name} cannot decode token by token: "
                             f"{plan.blocker} looks at the whole sequence")
        self.module, self.plan, self.fixed = module, plan, fixed
        first = next(iter(module.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None else torch.float32
        self.ctx = DecodeContext(batch, capacity, device, dtype)
        self._installed: list = []
        self._compiled = None
        self.last_only = False
        self._install()

    def _install(self) -> None:
        calls: dict[str, list] = {}
        last = _last_position_outputs(self.module.graph, self.plan)
        for node in self.module.graph.nodes():
            way = self.plan.ways.get(node.id)
            if node.id in last:
                way = _LastPosition(last[node.id], self)
            if way is None or way is TOKENWISE:
                continue
            calls.setdefault(node.shares or node.name, []).append(way)
        for target, ways in calls.items():
            op_module = self.module.get_submodule(target)
            states = [way.init(op_module, self.ctx) if isinstance(way, Decode) else None
                      for way in ways]
            op_module.__dict__["_decoding"] = (self.ctx, _Calls(ways, states))
            self._installed.append(op_module)

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                 last_only: bool = False):
        """The model's outputs for `tokens` [B, new] (a left-padded prompt with its mask, or
        one new token per row), given every token fed before. `last_only`: an output made
        position by position (the logits) only at the last position, [B, 1, ...]; that is
        all generation reads of a prompt, and the unembedding of every prompt position
        costs as much as several layers."""
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        self.ctx.begin(mask)
        self.ctx.__dict__["memo"] = {}  # what the layers of this call share (attention_torch)
        for op_module in self._installed:
            op_module.__dict__["_decoding"][1].next = 0
        one_token = tokens.shape[1] == 1
        self.last_only = last_only and not one_token
        out = (self._compiled if one_token and self._compiled else self._run)(tokens, mask)
        self.ctx.end()
        return out

    def _run(self, tokens: torch.Tensor, mask: torch.Tensor):
        inputs = {**self.fixed, self.plan.tokens: tokens}
        if self.plan.mask is not None:
            inputs[self.plan.mask] = mask
        return self.module(**inputs)

    def compile(self, **options) -> Decoder:
        """Run every one-token step under torch.compile (a prompt of several tokens runs
        eagerly). The step has fixed shapes: the cache is preallocated, its write position a
        0-d tensor and each row's positions tensors the step reads, so N steps compile
        once, not once per length. The bookkeeping between steps (DecodeContext.begin and
        end) stays outside the compiled graph."""
        self._compiled = torch.compile(self._run, dynamic=False, **options)
        return self

    def close(self) -> None:
        for op_module in self._installed:
            op_module.__dict__.pop("_decoding", None)
        self._installed = []

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _last_position_outputs(graph: Graph, plan: DecodePlan) -> dict[int, tuple[int, ...]]:
    """The outputs a tokenwise op makes along the token sequence (the logits), each with the
    indices of its inputs along that sequence: at the last position alone they give the
    output's last position. A node whose module another node also calls is left out."""
    tokens = next(n for n in graph.inputs() if n.name == plan.tokens)
    sequence = tokens.type.axes[-1].name
    callers: dict[str, int] = {}
    for node in graph.nodes():
        if not node.is_input:
            target = node.shares or node.name
            callers[target] = callers.get(target, 0) + 1
    found = {}
    for ref in graph.outputs.values():
        node = graph.node(ref.node)
        out = graph.type_of(ref)
        if (plan.ways.get(node.id) is not TOKENWISE or callers[node.shares or node.name] != 1
                or out.rank < 2 or out.axes[-2].name != sequence):
            continue
        types = [graph.type_of(r) for r in node.inputs]
        along = tuple(i for i, t in enumerate(types) if t.rank >= 2 and t.axes[-2].name == sequence)
        if along:
            found[node.id] = along
    return found


class _LastPosition(Decode):
    """A tokenwise output node: its inputs cut to their last position when the decoder's
    call asks for the last position only."""

    def __init__(self, along: tuple[int, ...], decoder: Decoder):
        self.along, self.decoder = along, decoder

    def run(self, m, state, ctx, *xs):
        if self.decoder.last_only:
            xs = tuple(x[..., -1:, :] if i in self.along else x for i, x in enumerate(xs))
        return m._fn(m, *xs)


def run_decoding(op_module, fn, xs):
    """OpModule.forward in decoding mode: the node's decoding, its stored constant, or its
    forward (tokenwise)."""
    ctx, calls = op_module.__dict__["_decoding"]
    i = calls.next
    calls.next += 1
    way = calls.way[i]
    if way == "const":
        if calls.states[i] is None:
            calls.states[i] = fn(op_module, *xs)
        return calls.states[i]
    return way.run(op_module, calls.states[i], ctx, *xs)
