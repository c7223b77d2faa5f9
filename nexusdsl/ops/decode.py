"""Incremental decoding: how an op carries what it needs from one step of generation to the
next, so a model of one token input generates without running the whole context again.

An op says how it decodes with `Op.decode(attrs)`:

- `TOKENWISE`: each position's output depends on that position alone (linear, norms,
  activations, embeddings): decoding runs it on the new tokens as it is;
- a `Decode` (its `init` makes the op's state for a batch, `run` computes the new tokens'
  outputs from their inputs and the state, and updates it): attention keeps keys and values,
  positions continue from each row's length, a causal convolution keeps its last inputs;
- None: it cannot (a mean over the sequence, non-causal attention); a model with such an op
  on the path from its token input generates by running the whole context again, and says
  which op forces that.

Every call sees a `DecodeContext`: where the new tokens go (`start`, a 0-d tensor, so a
one-token step has fixed shapes for torch.compile), which of them are real (`mask`: padded
prompts are padded on the left), and each row's position for each new token (`positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class _Tokenwise:
    def __repr__(self) -> str:
        return "TOKENWISE"


TOKENWISE = _Tokenwise()


@dataclass
class DecodeContext:
    batch: int
    capacity: int  # the most tokens a row may hold (prompt and generated)
    device: Any
    dtype: Any
    start: Any = None  # 0-d int64 tensor: slots written before this call
    mask: Any = None  # [B, new] bool: which new tokens are real
    lengths: Any = None  # [B] int64: real tokens of each row before this call
    positions: Any = None  # [B, new] int64: each new token's position in its row

    def begin(self, mask) -> None:
        """Set up a call on `mask.shape[1]` new tokens."""
        import torch

        if self.start is None:
            self.start = torch.zeros((), dtype=torch.int64, device=self.device)
            self.lengths = torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        self.mask = mask
        self.positions = self.lengths[:, None] + (torch.cumsum(mask.long(), 1) - 1).clamp(min=0)

    def end(self) -> None:
        self.lengths = self.lengths + self.mask.long().sum(1)
        self.start = self.start + self.mask.shape[1]

    def slots(self, new: int):
        """The cache slots of this call's new tokens: start, start + 1, ..."""
        import torch

        return self.start + torch.arange(new, device=self.device)


class Decode:
    """How one op decodes: `init(m, ctx)` -> its state; `run(m, state, ctx, *xs)` -> outputs."""

    def init(self, m, ctx: DecodeContext) -> Any:
        return None

    def run(self, m, state, ctx: DecodeContext, *xs):
        raise NotImplementedError
