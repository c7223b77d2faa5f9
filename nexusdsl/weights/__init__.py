"""Weights from elsewhere: modules of open-weight models loaded as (frozen) parts of a graph,
and checkpoints that keep frozen weights by reference.

Importing this package does not import torch; `frozen_sources` and the checkpoint helpers work
on a compiled model (see `checkpoint.py`)."""

from nexusdsl.weights.checkpoint import (
    SourceChanged,
    by_reference,
    check_sources,
    checkpoint_state,
    frozen_sources,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["SourceChanged", "by_reference", "check_sources", "checkpoint_state",
           "frozen_sources", "load_checkpoint", "save_checkpoint"]
