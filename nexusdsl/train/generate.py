"""Sampling from a trained model of one token input and logits [B, T, vocab]: bytes from a
byte model, or text through a tokenizer (train/tokenizer.py finds it) from a model of ids."""

from __future__ import annotations

import torch

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.objectives import first_output, ports
from nexusdsl.train.tokenizer import check_fits
from nexusdsl.weights.tokenizer import TextTokenizer


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

    def done(new: list[int]) -> bool:
        return new[-1] == tokenizer.eos or len(tokenizer.decode(new).encode()) >= max_bytes

    new = sample_ids(model, output, start, max_bytes, context, temperature, top_k, seed,
                     "token", done)
    whole, head = tokenizer.decode(start + new), tokenizer.decode(start)
    return prompt + whole[len(head):] if whole.startswith(head) else whole


@torch.no_grad()
def sample_ids(model, output: str, prompt: list[int], steps: int, context: int,
               temperature: float = 0.8, top_k: int = 0, seed: int = 0, unit: str = "byte",
               done=None) -> list[int]:
    """Up to `steps` ids sampled after `prompt`, the model seeing at most `context` ids at a
    time, stopping early when `done(ids so far)` says so."""
    model.eval()
    check_finite_weights(model)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = list(prompt)
    for step in range(steps):
        x = torch.tensor([tokens[-context:]], dtype=torch.int64, device=device)  # (1, T)
        logits = first_output(model(x), output)[0, -1].float().cpu()  # (V,)
        if not torch.isfinite(logits).all():  # finite weights can still overflow
            raise NexusError.at(NO_SPAN, f"the model's logits for {unit} {step + 1} are not all "
                                f"finite numbers (NaN or inf), so no {unit} can be sampled")
        tokens.append(_choose(logits, temperature, top_k, gen))
        if done is not None and done(tokens[len(prompt):]):
            break
    return tokens[len(prompt):]


def generate_text(model, graph, tokenizer: TextTokenizer | None, prompt: str, max_bytes: int,
                  context: int, temperature: float = 0.8, top_k: int = 0, seed: int = 0) -> str:
    """What `nexus generate` prints: the prompt and its continuation, by a byte model
    (`tokenizer` None) or through the tokenizer."""
    if tokenizer is None:
        output = check_byte_model(graph)
        text = sample(model, output, prompt.encode("utf-8"), max_bytes, context, temperature,
                      top_k, seed)
        return prompt + text.decode("utf-8", errors="replace")
    output = check_token_model(graph, tokenizer)
    return sample_text(model, output, tokenizer, prompt, max_bytes, context, temperature,
                       top_k, seed)


def check_finite_weights(model) -> None:
    """Weights that are NaN or infinite (a run that diverged, a damaged file) give logits
    nothing can be sampled from: one line naming the first such parameter, before sampling."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            name = name.removeprefix("model.")  # a Trainee's: named as the .nx file names it
            raise NexusError.at(NO_SPAN, f"the model's weights are not all finite numbers: "
                                f"{name} holds NaN or inf (did its training diverge?), so it "
                                "cannot generate")


def _choose(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < len(logits):
        cutoff = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
