"""Helpers of the family tests: a `.nx` family and transformers' own class with the same tiny
hyperparameters and the same weights (copied by a hand-written mapping per family), compared
in float64."""

from __future__ import annotations

from collections.abc import Callable

import torch

import nexusdsl
from tests.conftest import ROOT, family_program

FAMILIES = ROOT / "stdlib" / "families"
TOLERANCE = 1e-5  # relative to the largest magnitude of the reference


def family(name: str, model: str | None = None, **hyper):
    """The family's model compiled in float64 with `hyper`."""
    module = nexusdsl.compile(family_program(name), model, dtype="f64", **hyper)
    return module.eval()


def hf(cls, config):
    """transformers' model from a config: random weights, float64, eval, SDPA attention."""
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    model = cls(config).double().eval()
    with torch.no_grad():  # norms and biases start at constants: make them count
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.normal_(float(p.mean()), 0.2)
    return model


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load(ours: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every parameter of ours from `weights` (our names): none missing, none left over."""
    state = {**dict(ours.named_parameters()), **dict(ours.named_buffers())}  # tied: once
    assert set(weights) == set(state), (sorted(set(state) - set(weights))[:5],
                                        sorted(set(weights) - set(state))[:5])
    with torch.no_grad():
        for key, value in weights.items():
            assert state[key].shape == value.shape, (key, state[key].shape, value.shape)
            state[key].copy_(value.detach().to(state[key].dtype))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float = TOLERANCE):
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    error = relative_error(ours, reference)
    assert error <= tolerance, f"relative error {error:.3g} > {tolerance}"


def padded_batch(vocab: int, lengths: list[int], seed: int = 0):
    """Right-padded token rows of the given lengths and their mask."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    tokens = torch.randint(1, vocab, (len(lengths), T), generator=gen)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return tokens.masked_fill(~mask, 0), mask


def check_padding(run: Callable, tokens: torch.Tensor, mask: torch.Tensor) -> None:
    """`run(tokens, mask)` on the padded batch equals `run` on each row alone, unpadded, at
    every real position."""
    batched = run(tokens, mask)
    for row, length in enumerate(mask.sum(-1).tolist()):
        alone = run(tokens[row:row + 1, :length], mask[row:row + 1, :length])
        assert_close(batched[row:row + 1, :length], alone)
