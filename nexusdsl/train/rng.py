"""The random generators a checkpoint records for every process, so that a resumed run draws
what the uninterrupted one would have: torch's CPU generator ("torch" in state.json) and, for a
process training on a GPU, that GPU's generator ("cuda": dropout masks and every other random
op run on the device draw from it)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nexusdsl.train import distributed
from nexusdsl.train.checkpoint import Checkpoint, CheckpointError

# name in state.json -> (read the state, set it), as uint8 tensors
Generators = dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]]


def generators(device: str) -> Generators:
    """The generators a process on `device` draws from."""
    found: Generators = {"torch": (torch.get_rng_state, torch.set_rng_state)}
    if torch.device(device).type == "cuda":
        found["cuda"] = (lambda: torch.cuda.get_rng_state(device),
                         lambda state: torch.cuda.set_rng_state(state, device))
    return found


def record(d: distributed.Dist, kept: Generators | None = None) -> dict[str, list[list[int]]]:
    """Every process's generator states by name, in rank order (a collective: every process
    calls it)."""
    kept = kept if kept is not None else generators(d.device)
    return {name: [list(b) for b in distributed.gather_bytes(bytes(read().tolist()), d)]
            for name, (read, _) in kept.items()}


def restore(ckpt: Checkpoint, d: distributed.Dist, kept: Generators | None = None) -> None:
    """Set this process's generators to the states `ckpt` recorded for its rank. A generator
    it has no state of (a CPU run resumed on a GPU), or states of another number of processes,
    leave the generator as seeded: that resume continues, but not bit for bit."""
    kept = kept if kept is not None else generators(d.device)
    saved = ckpt.state.get("rng") or {}
    for name, (_, write) in kept.items():
        states = saved.get(name) or []
        if len(states) != d.world:
            continue
        try:
            write(torch.tensor(states[d.rank], dtype=torch.uint8))
        except RuntimeError:  # torch checks the generator state it is given
            what = "RNG" if name == "torch" else f"{name} RNG"
            raise CheckpointError(f"checkpoint {ckpt.path} is damaged: its {what} state is "
                                  "not a valid generator state") from None
