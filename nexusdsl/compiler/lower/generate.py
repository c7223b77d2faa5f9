"""Generation from a compiled model of one token input and logits over its vocabulary:
`NexusModule.generate(prompts, max_new_tokens, ...)`.

Prompts of different lengths go in one batch, padded on the left (each row with its own
positions and padding mask: ops/decode.py). A model whose every op on the way from its token
input decodes step by step (decode.decode_plan) feeds the padded prompts once and then one
token per row into a preallocated cache (decode.Decoder; `compile = True` runs that step
under torch.compile); any other model recomputes: every step runs each row's whole sequence
again, one row at a time, and `recompute_reason` says which op forces that. Both give the
same tokens: a row of a batch is what the row alone gives.

Temperature 0 is greedy; otherwise the logits are divided by the temperature, cut to the
`top_k` likeliest ids and then to the smallest set whose probability reaches `top_p`, and
one id per row is drawn with a torch.Generator seeded by `seed` (the same seed, the same
ids). A row ends when it draws one of the `stop` ids (kept as its last id); the other rows
go on while it waits, fed nothing its cache keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from nexusdsl.compiler.lower.decode import Decoder, decode_plan, token_input
from nexusdsl.compiler.lower.mlir import id_bound
from nexusdsl.ir.graph import Graph, Node


class GenerationError(ValueError):
    """What generation cannot do with these arguments or this model, in one sentence."""


class NonFiniteLogits(GenerationError):
    """The model's logits hold NaN or inf at generation step `step` (from 1)."""

    def __init__(self, step: int):
        super().__init__(f"the model's logits for token {step} are not all finite numbers "
                         "(NaN or inf), so nothing can be sampled")
        self.step = step


@dataclass(frozen=True)
class TokenModel:
    """What generation needs to know about a model's graph."""

    name: str  # the model's
    tokens: str  # the token input
    output: str  # the logits over its vocabulary
    vocab: int | None  # how many ids the token input holds (None: not bounded by a table)
    positions: int | None  # the most tokens a row may hold (a position table), if bounded
    positions_by: str | None  # what bounds them
    others: tuple[str, ...]  # other inputs without a default: given once, fixed
    blocker: str | None  # the op that keeps it from decoding step by step, if any


def token_model(graph: Graph, output: str | None = None) -> TokenModel:
    """The model's token input, logits output and limits, or a GenerationError saying why
    the model cannot generate."""
    tokens, mask = token_input(graph)
    if tokens is None:
        raise GenerationError(f"generate needs a model of one token input [B, T] and logits "
                              f"[B, T, vocab]; {graph.name} has {_inputs(graph)}")
    if tokens.type.axes[-1].size is not None:
        raise GenerationError(f"{graph.name}'s input {tokens.name} is {tokens.type}: it takes "
                              f"exactly {tokens.type.axes[-1].size} tokens, and generation "
                              "grows the sequence")
    vocab = id_bound(graph, tokens)
    name = output or _logits(graph, tokens, vocab)
    if name not in graph.outputs:
        raise GenerationError(f"{graph.name} has no output {name} (its outputs: "
                              f"{', '.join(graph.outputs)})")
    others = tuple(n.name for n in graph.inputs()
                   if n is not tokens and n is not mask and "default" not in n.attrs)
    positions, by = _position_limit(graph, tokens)
    plan = decode_plan(graph)
    return TokenModel(graph.name, tokens.name, name, vocab, positions, by, others, plan.blocker)


def recompute_reason(module, output: str | None = None) -> str | None:
    """Why `generate` runs the whole sequence again at every step (the first op on the way
    from the token input that cannot decode step by step: `mean at pool`), or None when it
    decodes step by step."""
    blocker = token_model(module.graph, output).blocker
    return None if blocker is None else f"{blocker} cannot decode step by step"


def _inputs(graph: Graph) -> str:
    return ", ".join(f"{n.name}: {n.type}" for n in graph.inputs()) or "no inputs"


def _logits(graph: Graph, tokens: Node, vocab: int | None) -> str:
    """The output over the token input's positions and vocabulary: [B, T, vocab]."""
    sequence = tokens.type.axes[-1].name
    fits = [name for name, ref in graph.outputs.items()
            if graph.type_of(ref).rank == 3 and graph.type_of(ref).axes[-2].name == sequence
            and (vocab is None or graph.type_of(ref).axes[-1].size == vocab)]
    if not fits:
        shown = ", ".join(f"{k}: {graph.type_of(v)}" for k, v in graph.outputs.items())
        raise GenerationError(f"generate needs logits [B, {sequence}, vocab] over the ids of "
                              f"{graph.name}'s input {tokens.name}; its outputs are {shown}")
    return fits[0]


def _position_limit(graph: Graph, tokens: Node) -> tuple[int | None, str | None]:
    """The fewest positions of a position table on the way from the token input (a learned
    or sinusoidal `position(x, max = N)` has N rows); rotary and relative positions have no
    such bound."""
    live, best, by = {tokens.id}, None, None
    for node in graph.nodes():
        if node.is_input or not any(ref.node in live for ref in node.inputs):
            continue
        live.add(node.id)
        limit = node.attrs.get("max") if node.op == "position" else None
        if limit is not None and (best is None or limit < best):
            best, by = limit, f"position(max = {limit}) at {node.name}"
    return best, by


# ---------------------------------------------------------------------------- sampling


def choose(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
           generator: torch.Generator) -> torch.Tensor:
    """One id per row of logits [B, V]: the likeliest at temperature 0, else drawn from the
    softmax of logits / temperature among the top_k likeliest ids (0: all), then among the
    fewest likeliest ids whose probabilities add up to top_p (1: all)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        cutoff = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1.0:
        probs = nucleus(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """probs [B, V] with every id zeroed that is not among the fewest likeliest whose sum
    reaches top_p: an id stays while the ids likelier than it hold less than top_p (the
    likeliest always stays)."""
    ordered, order = probs.sort(-1, descending=True)
    before = ordered.cumsum(-1) - ordered  # the mass of the ids likelier than each
    kept = torch.zeros_like(probs).scatter(-1, order, (before < top_p).to(probs.dtype))
    return probs * kept


# ---------------------------------------------------------------------------- the loop


def check_settings(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens = {max_new_tokens}: give a whole number of at "
                              "least 1")
    if not math.isfinite(temperature) or temperature < 0:
        raise GenerationError(f"temperature = {temperature}: give a finite number >= 0 "
                              "(0: greedy)")
    if top_k < 0:
        raise GenerationError(f"top_k = {top_k}: give 0 (every id) or a positive count")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top_p = {top_p}: give a probability in (0, 1] (1: every id)")


def prompt_rows(prompts, mask: torch.Tensor | None, vocab: int | None) -> list[list[int]]:
    """Prompts as lists of ids: a list of id lists, or a [B, T] tensor (with `mask`, true at
    real tokens, which may be padded on either side)."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise GenerationError(f"prompts: a tensor of ids needs [B, T], not {tuple(prompts.shape)}")
        keep = torch.ones_like(prompts, dtype=torch.bool) if mask is None else mask.bool()
        if keep.shape != prompts.shape:
            raise GenerationError(f"mask {tuple(keep.shape)} differs from prompts "
                                  f"{tuple(prompts.shape)}")
        rows = [row[real].tolist() for row, real in zip(prompts.cpu(), keep.cpu())]
    else:
        rows = [list(map(int, row)) for row in prompts]
    if not rows:
        raise GenerationError("no prompts: give at least one")
    for r, row in enumerate(rows):
        if not row:
            raise GenerationError(f"prompt {r} is empty: give it at least one id")
        bad = [i for i in row if i < 0 or (vocab is not None and i >= vocab)]
        if bad:
            raise GenerationError(f"prompt {r} holds id {bad[0]}, outside the model's "
                                  f"vocabulary of {vocab} ids" if vocab is not None else
                                  f"prompt {r} holds the negative id {bad[0]}")
    return rows


@torch.no_grad()
def generate(module, prompts, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop: int | Iterable[int] | None = None, seed: int = 0,
             compile: bool = False, *, mask: torch.Tensor | None = None,
             context: int | None = None, output: str | None = None,
             done: Callable[[int, list[int]], bool] | None = None,
             forward: Callable | None = None, recompute: str | None = None,
             started: Callable[[], None] | None = None,
             **fixed: torch.Tensor) -> list[list[int]]:
    """Up to `max_new_tokens` new ids for each prompt (see the module docstring).

    `context`: the most ids the model sees at once (older ones slide out, by recomputation
    once the window is full); `output`: the logits output, when the model has several;
    `done(row, its new ids)`: end that row early; `fixed`: the model's other inputs (an
    image, an encoder's tokens), batch first, the same at every step. `forward(row, ids
    [1, T])` and `recompute` (the reason) make generation recompute through another module
    (a model with a learned prefix); `started()` is called once every argument is checked."""
    check_settings(max_new_tokens, temperature, top_k, top_p)
    spec = token_model(module.graph, output)
    missing = [name for name in spec.others if name not in fixed]
    if missing:
        raise GenerationError(f"{spec.name} also takes {', '.join(missing)}: give "
                              f"{'them' if len(missing) > 1 else 'it'} to generate (the same "
                              "at every step)")
    rows = prompt_rows(prompts, mask, spec.vocab)
    if context is not None:
        rows = [row[-context:] for row in rows]
    _check_room(spec, rows, max_new_tokens, context)
    stops = {stop} if isinstance(stop, int) else set(stop or ())
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    reason = recompute or spec.blocker
    forward = forward or _row_forward(module, spec, fixed, device)
    width = max(map(len, rows))
    capacity = width + max_new_tokens - 1  # the last id drawn is never fed
    if context is not None:
        capacity = min(capacity, context)
    if started is not None:
        started()
    was_training = module.training
    module.eval()
    try:
        if reason is None:
            with Decoder(module, len(rows), capacity, **fixed) as decoder:
                if compile:
                    decoder.compile()
                feed = _Cached(decoder, spec, rows, device, forward, context)
                return _loop(feed, rows, max_new_tokens, temperature, top_k, top_p, stops,
                             seed, done)
        feed = _Recomputed(forward, rows, context, device)
        return _loop(feed, rows, max_new_tokens, temperature, top_k, top_p, stops, seed, done)
    finally:
        module.train(was_training)


def _check_room(spec: TokenModel, rows: list[list[int]], new: int, context: int | None) -> None:
    """A row may not outgrow the model's positions (a window that slides never does, if it
    fits)."""
    if spec.positions is None:
        return
    if context is not None:
        if context > spec.positions:
            raise GenerationError(f"a context of {context} tokens needs {context} positions, "
                                  f"but {spec.name} has {spec.positions} "
                                  f"({spec.positions_by})")
        return
    longest = max(map(len, rows))
    need = longest + new - 1  # the last id drawn is never fed
    if need > spec.positions:
        room = max(spec.positions - longest + 1, 0)
        raise GenerationError(f"{new} new tokens after a prompt of {longest} need {need} "
                              f"positions, but {spec.name} has {spec.positions} "
                              f"({spec.positions_by}): at most {room} new tokens fit")


def _row_forward(module, spec: TokenModel, fixed: dict, device) -> Callable:
    """The whole forward of one row: logits [V] after its ids."""

    def forward(row: int, ids: list[int]) -> torch.Tensor:
        mine = {k: v[row:row + 1] for k, v in fixed.items()}
        tokens = torch.tensor([ids], dtype=torch.int64, device=device)
        out = module(**mine, **{spec.tokens: tokens})
        return (out[spec.output] if isinstance(out, dict) else out)[0, -1]

    return forward


class _Recomputed:
    """Every step runs each unfinished row's whole sequence (its last `context` ids)."""

    def __init__(self, forward: Callable, rows: list[list[int]], context: int | None, device):
        self.forward, self.rows, self.context, self.device = forward, rows, context, device

    def first(self) -> torch.Tensor:
        return self._logits([True] * len(self.rows))

    def next(self, picks: torch.Tensor, alive: list[bool]) -> torch.Tensor:
        return self._logits(alive)

    def _logits(self, alive: list[bool]) -> torch.Tensor:
        out = [self.forward(r, row[-self.context:] if self.context else row) if live else None
               for r, (row, live) in enumerate(zip(self.rows, alive))]
        like = next(o for o in out if o is not None)
        return torch.stack([o if o is not None else torch.zeros_like(like) for o in out])


class _Cached:
    """The padded prompts through the decoder once, then one id per row: the cache keeps the
    rest. A window (`context`) that fills up hands over to recomputation."""

    def __init__(self, decoder: Decoder, spec: TokenModel, rows: list[list[int]], device,
                 forward: Callable, context: int | None):
        self.decoder, self.spec, self.rows, self.device = decoder, spec, rows, device
        self.fed = 0
        self.recomputed = _Recomputed(forward, rows, context, device)

    def first(self) -> torch.Tensor:
        width = max(map(len, self.rows))
        tokens = torch.zeros(len(self.rows), width, dtype=torch.int64)
        mask = torch.zeros(len(self.rows), width, dtype=torch.bool)
        for r, row in enumerate(self.rows):  # padded on the left: every row ends at the edge
            tokens[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = True
        self.fed = width
        return self._last(self.decoder(tokens.to(self.device), mask.to(self.device),
                                       last_only=True))

    def next(self, picks: torch.Tensor, alive: list[bool]) -> torch.Tensor:
        if self.fed >= self.decoder.ctx.capacity:  # the window is full: it slides from here
            self.decoder.close()  # the model's own forward again
            return self.recomputed.next(picks, alive)
        self.fed += 1
        live = torch.tensor(alive, device=self.device)[:, None]
        return self._last(self.decoder(picks.to(self.device)[:, None], live))

    def _last(self, out) -> torch.Tensor:
        return (out[self.spec.output] if isinstance(out, dict) else out)[:, -1]


def _loop(feed, rows: list[list[int]], steps: int, temperature: float, top_k: int,
          top_p: float, stops: set[int], seed: int, done) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    new: list[list[int]] = [[] for _ in rows]
    alive = [True] * len(rows)
    logits = feed.first()
    for step in range(steps):
        logits = logits.float().cpu()
        live = torch.tensor(alive)
        if not torch.isfinite(logits[live]).all():  # finite weights can still overflow
            raise NonFiniteLogits(step + 1)
        picks = choose(logits, temperature, top_k, top_p, generator)
        for r, pick in enumerate(picks.tolist()):
            if not alive[r]:
                continue
            new[r].append(pick)
            rows[r].append(pick)
            if pick in stops or (done is not None and done(r, new[r])):
                alive[r] = False
        if step == steps - 1 or not any(alive):
            break
        logits = feed.next(picks, alive)
    return new

