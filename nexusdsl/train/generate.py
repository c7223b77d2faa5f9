"""Sampling from a trained model of one token input and logits [B, T, vocab]: bytes from a
byte model, or text through a tokenizer (train/tokenizer.py finds it) from a model of ids.

The loop itself is the compiler's (compiler/lower/generate.py: a cache when every op decodes
step by step, else recomputation); this module turns text into prompts and ids back into
text, and its mistakes into one-line errors."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nexusdsl.compiler.lower.generate import (
    GenerationError,
    NonFiniteLogits,
    generate,
    recompute_reason,
)
from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.objectives import first_output, ports
from nexusdsl.train.tokenizer import check_fits
from nexusdsl.weights.tokenizer import TextTokenizer

DEFAULT_BYTES = 200  # what `nexus generate` writes when told no length


def check_byte_model(graph) -> str:
    """The output name of a model `generate` can sample from, or a one-line error."""
    inputs, outputs = ports(graph)
    fits = (len(inputs) == 1 and inputs[0].discrete and len(outputs) == 1
            and outputs[0].type.rank == 3 and outputs[0].type.axes[-1].size == 256)
    if not fits:
        sig = ", ".join(map(str, inputs)) + " -> " + ", ".join(map(str, outputs))
        raise NexusError.at(NO_SPAN, f"generate needs a byte model (one token input [B, T], "
                            f"logits [B, T, 256]); {graph.name} is ({sig})")
    return outputs[0].name


def check_token_model(graph, tokenizer: TextTokenizer) -> str:
    """The output name of a model of ids `generate` can sample text from with `tokenizer`
    (one token input, logits [B, T, vocab] over its vocabulary, which holds every id the
    tokenizer gives), or a one-line error."""
    from nexusdsl.compiler.lower.mlir import id_bound

    inputs, outputs = ports(graph)
    one = len(inputs) == 1 and inputs[0].discrete
    vocab = id_bound(graph, graph.by_name(inputs[0].name)) if one else None  # int inputs too
    fits = (vocab is not None and len(outputs) == 1 and outputs[0].type.rank == 3
            and outputs[0].type.axes[-1].size == vocab)
    if not fits:
        sig = ", ".join(map(str, inputs)) + " -> " + ", ".join(map(str, outputs))
        raise NexusError.at(NO_SPAN, f"generate needs a model of one token input [B, T] and "
                            f"logits [B, T, vocab] over its vocabulary; {graph.name} is ({sig})")
    check_fits(tokenizer, vocab, f"{graph.name}'s input {inputs[0].name}")
    return outputs[0].name


@torch.no_grad()
def sample(model, output: str, prompt: bytes, max_bytes: int, context: int,
           temperature: float = 0.8, top_k: int = 0, seed: int = 0) -> bytes:
    """Continue `prompt` by `max_bytes` bytes, seeing at most `context` bytes at a time.
    Temperature 0 is greedy; `top_k` > 0 samples among the k likeliest bytes only."""
    return bytes(sample_ids(model, output, list(prompt or b"\n"), max_bytes, context,
                            temperature, top_k, seed))


@torch.no_grad()
def sample_text(model, output: str, tokenizer: TextTokenizer, prompt: str, max_bytes: int,
                context: int, temperature: float = 0.8, top_k: int = 0, seed: int = 0) -> str:
    """Continue `prompt` through `tokenizer`: the prompt encoded with its special tokens (as
    transformers encodes a prompt; an empty one starts from the beginning-of-text id), then
    ids sampled one at a time until their text holds `max_bytes` bytes, the end-of-text id
    comes, or `max_bytes` ids are drawn. Returns the prompt as given and the continuation as
    the tokenizer decodes it after the prompt's ids."""
    start = tokenizer.encode(prompt) or tokenizer.start()
    new = sample_ids(model, output, start, max_bytes, context, temperature, top_k, seed, "token",
                     _byte_budget(tokenizer, max_bytes), stop=_eos(tokenizer))
    return _continued(tokenizer, prompt, start, new)


@torch.no_grad()
def sample_ids(model, output: str, prompt: list[int], steps: int, context: int | None,
               temperature: float = 0.8, top_k: int = 0, seed: int = 0, unit: str = "byte",
               done=None, top_p: float = 1.0, stop=()) -> list[int]:
    """Up to `steps` ids sampled after `prompt`, the model seeing at most `context` ids at a
    time, stopping early when `done(ids so far)` says so or a `stop` id comes."""
    rows = _generate(model, output, [prompt], steps, context, temperature, top_k, top_p, stop,
                     seed, unit, (lambda row, new: done(new)) if done is not None else None)
    return rows[0]


def generate_text(model, graph, tokenizer: TextTokenizer | None, prompt: str, max_bytes: int,
                  context: int, temperature: float = 0.8, top_k: int = 0, seed: int = 0) -> str:
    """What `nexus generate` prints for one prompt: the prompt and its continuation, by a
    byte model (`tokenizer` None) or through the tokenizer."""
    if tokenizer is None:
        output = check_byte_model(graph)
        text = sample(model, output, prompt.encode("utf-8"), max_bytes, context, temperature,
                      top_k, seed)
        return prompt + text.decode("utf-8", errors="replace")
    output = check_token_model(graph, tokenizer)
    return sample_text(model, output, tokenizer, prompt, max_bytes, context, temperature,
                       top_k, seed)


def generate_texts(model, graph, tokenizer: TextTokenizer | None, prompts: list[str], *,
                   max_tokens: int | None = None, max_bytes: int | None = None,
                   context: int | None = None, temperature: float = 0.8, top_k: int = 0,
                   top_p: float = 1.0, stop: list[str] = (), seed: int = 0,
                   compile: bool = False, started=None) -> list[str]:
    """Each prompt and its continuation, all prompts in one padded batch: at most
    `max_tokens` new ids (bytes for a byte model), and through a tokenizer, until the new
    text holds `max_bytes` bytes or the end-of-text id comes (neither given: 200 bytes). A
    byte model's empty prompt starts from a line break; a tokenizer needs text. `started()`
    is called once everything is checked, before the first token."""
    if max_tokens is None and max_bytes is None:
        max_bytes = DEFAULT_BYTES
    if tokenizer is None:
        output = check_byte_model(graph)
        starts = [list(p.encode("utf-8")) or [ord("\n")] for p in prompts]
        steps = min(n for n in (max_tokens, max_bytes) if n is not None)
        rows = _generate(model, output, starts, steps, context, temperature, top_k, top_p,
                         [_stop_byte(s) for s in stop], seed, "byte", None, compile, started)
        return [p + bytes(new).decode("utf-8", errors="replace") for p, new in zip(prompts, rows)]
    output = check_token_model(graph, tokenizer)
    starts = []
    for i, prompt in enumerate(prompts):
        if not prompt:
            which = "--prompt" if len(prompts) == 1 else f"prompt {i + 1}"
            raise NexusError.at(NO_SPAN, f"{which} is empty: {graph.name} reads text through "
                                "its tokenizer, so give some text to continue")
        starts.append(tokenizer.encode(prompt) or tokenizer.start())
    budget = (lambda row, new: _byte_budget(tokenizer, max_bytes)(new)) if max_bytes else None
    stops = _eos(tokenizer) + [_stop_token(tokenizer, s) for s in stop]
    rows = _generate(model, output, starts, max_tokens or max_bytes, context, temperature,
                     top_k, top_p, stops, seed, "token", budget, compile, started)
    return [_continued(tokenizer, p, s, new) for p, s, new in zip(prompts, starts, rows)]


def recompute_note(model, output: str | None = None) -> str | None:
    """Why generation recomputes the whole sequence at every step, if it does."""
    decodes = _decoding(model, output)
    return decodes[2] if decodes[2] is not None else recompute_reason(decodes[0], output)


def check_finite_weights(model) -> None:
    """Weights that are NaN or infinite (a run that diverged, a damaged file) give logits
    nothing can be sampled from: one line naming the first such parameter, before sampling."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            name = name.removeprefix("model.")  # a Trainee's: named as the .nx file names it
            raise NexusError.at(NO_SPAN, f"the model's weights are not all finite numbers: "
                                f"{name} holds NaN or inf (did its training diverge?), so it "
                                "cannot generate")


# ---------------------------------------------------------------------------- helpers


def _generate(model, output: str, prompts: list[list[int]], steps: int, context: int | None,
              temperature: float, top_k: int, top_p: float, stop, seed: int, unit: str,
              done, compile: bool = False, started=None) -> list[list[int]]:
    """The compiler's loop on a NexusModule or a Trainee, its mistakes as one-line errors."""
    check_finite_weights(model)
    module, forward, reason = _decoding(model, output)
    try:
        return generate(module, prompts, steps, temperature, top_k, top_p, list(stop), seed,
                        compile, context=context, output=output, done=done, forward=forward,
                        recompute=reason, started=started)
    except NonFiniteLogits as err:  # finite weights can still overflow
        raise NexusError.at(NO_SPAN, f"the model's logits for {unit} {err.step} are not all "
                            f"finite numbers (NaN or inf), so no {unit} can be sampled") from None
    except GenerationError as err:
        raise NexusError.at(NO_SPAN, str(err)) from None


def _decoding(model, output: str | None) -> tuple:
    """(the NexusModule, a forward of one row, why it must recompute) for a NexusModule or a
    Trainee. A learned prefix (prompt tuning) enters after the embedding through a hook the
    graph does not show, so such a trainee recomputes through its own forward."""
    module = getattr(model, "model", model)
    prefix = getattr(model, "n_prefix", 0)
    if not prefix:
        return module, None, None
    device = next(model.parameters()).device

    def forward(row: int, ids: list[int]) -> torch.Tensor:
        out = model(torch.tensor([ids], dtype=torch.int64, device=device))
        return first_output(out, output)[0, -1]

    return module, forward, (f"a learned prefix of {prefix} vectors (prompt tuning) comes "
                             "before every sequence")


def _byte_budget(tokenizer: TextTokenizer, max_bytes: int) -> Callable[[list[int]], bool]:
    def done(new: list[int]) -> bool:
        return len(tokenizer.decode(new).encode()) >= max_bytes

    return done


def _eos(tokenizer: TextTokenizer) -> list[int]:
    return [tokenizer.eos] if tokenizer.eos is not None else []


def _continued(tokenizer: TextTokenizer, prompt: str, start: list[int], new: list[int]) -> str:
    """The prompt as given and the continuation as the tokenizer decodes it after the
    prompt's ids."""
    whole, head = tokenizer.decode(start + new), tokenizer.decode(start)
    return prompt + whole[len(head):] if whole.startswith(head) else whole


def _stop_byte(text: str) -> int:
    data = text.encode("utf-8")
    if len(data) != 1:
        raise NexusError.at(NO_SPAN, f"--stop {text!r} is {len(data)} bytes; a byte model "
                            "stops at one byte (--stop $'\\n' for a line break)")
    return data[0]


def _stop_token(tokenizer: TextTokenizer, text: str) -> int:
    """A stop given as text: a token of the vocabulary by name (</s>), or text the tokenizer
    reads as one id."""
    named = tokenizer.tokenizer.token_to_id(text)
    if named is not None:
        return named
    ids = tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
    if len(ids) != 1:
        raise NexusError.at(NO_SPAN, f"--stop {text!r} is {len(ids)} tokens of tokenizer "
                            f"{tokenizer.directory}; give one token")
    return ids[0]
