"""Filling a lowered module's bound parameters from their checkpoints (`bind` sections).

Each parameter is filled in place, one at a time: a tensor that needs no transform is read
from its file straight into the parameter's memory; a concatenation reads each piece into its
rows; other transforms make one temporary of the parameter's size. So loading a checkpoint
costs about the model's own size in memory, not twice it."""

from __future__ import annotations

import torch

from nexusdsl.elaborate.bindings import Binding
from nexusdsl.lang.diagnostics import NexusError


def fill_bound(module: torch.nn.Module, binding: Binding) -> None:
    state = {**dict(module.named_parameters(remove_duplicate=False)),
             **dict(module.named_buffers(remove_duplicate=False))}
    with torch.no_grad():
        for name, tree in binding.plan.items():
            target = state.get(name)
            if target is None:  # the optimizer made the parameter into something else
                raise NexusError.at(binding.rules[name], f"{name} is bound, but the compiled "
                                    "model has no such parameter (compile with --opt 1)")
            if target.device.type == "meta":
                continue
            if target.device.type == "cpu":
                tree.fill(target)
            else:
                staged = torch.empty(target.shape, dtype=target.dtype)
                tree.fill(staged)
                target.copy_(staged, non_blocking=False)
