"""Sampling bytes from a trained byte model (one token input, logits [B, T, vocab])."""

from __future__ import annotations

import torch

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.objectives import first_output, ports


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


@torch.no_grad()
def sample(model, output: str, prompt: bytes, max_bytes: int, context: int,
           temperature: float = 0.8, top_k: int = 0, seed: int = 0) -> bytes:
    """Continue `prompt` by `max_bytes` bytes, seeing at most `context` bytes at a time.
    Temperature 0 is greedy; `top_k` > 0 samples among the k likeliest bytes only."""
    model.eval()
    check_finite_weights(model)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = list(prompt or b"\n")
    for step in range(max_bytes):
        x = torch.tensor([tokens[-context:]], dtype=torch.int64, device=device)  # (1, T)
        logits = first_output(model(x), output)[0, -1].float().cpu()  # (V,)
        if not torch.isfinite(logits).all():  # finite weights can still overflow
            raise NexusError.at(NO_SPAN, f"the model's logits for byte {step + 1} are not all "
                                "finite numbers (NaN or inf), so no byte can be sampled")
        tokens.append(_choose(logits, temperature, top_k, gen))
    return bytes(tokens[len(prompt or b"\n"):])


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
