"""Small `.nx` models and helpers for the training tests."""

from __future__ import annotations

from pathlib import Path

# A byte model with dropout (so resuming must restore the RNG) and a tied head.
TINY = """nexus 0.1
import std.nn
modality text = bytes(code = 0)

model Tiny(dim = 32, heads = 2) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + attention(rmsnorm(x), heads = heads, causal = true)
  x = x + (mlp(rmsnorm(x), mult = 2) |> dropout(0.1))
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""

# Two modalities to two embeddings: digits and their names (contrastive pretraining).
PAIRED = """nexus 0.1
modality text = bytes(code = 0)
modality image = patches(size = 2, channels = 1, code = 1)

model Paired(dim = 32) {
  input pixels: image[B, 1, 8, 8]
  input caption: text[B, T]
  seen = mean(rmsnorm(embed(pixels, dim)), axis = 1)
  said = mean(rmsnorm(embed(caption, dim)), axis = 1)
  output image_vec = linear(seen |> gelu, dim)
  output text_vec = linear(said |> gelu, dim)
}
"""

# Fast settings for the tiny byte model; a fixed thread count keeps runs bit-reproducible.
FAST = {"batch": 8, "context": 32, "eval_batches": 2, "log_every": 1, "threads": 1}


def write(tmp_path: Path, text: str, name: str = "model.nx", train: str = "") -> Path:
    path = tmp_path / name
    path.write_text(text + train)
    return path
