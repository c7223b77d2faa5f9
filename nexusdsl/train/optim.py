"""Optimizers (AdamW, SGD) and the learning-rate schedule (linear warm-up, cosine decay).

The schedule is a pure function of the run's progress: the step over `steps`, or with a time
budget whichever is further along, steps or time (loop.progress_of). Warm-up and decay are both
measured in that progress, so a run cut short by its time budget still warms up and still
decays to `final`; a resumed run needs no scheduler state. Weight decay applies to matrices
only (dim >= 2), as in nanoGPT: norms' gains and biases are not pulled towards zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nexusdsl.elaborate.train_config import Call, TrainConfig

DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}


def build_optimizer(trainee: nn.Module, call: Call) -> torch.optim.Optimizer:
    trainable = [p for p in trainee.parameters() if p.requires_grad]
    decay = call.kwargs.get("weight_decay", 0.1 if call.fn == "adamw" else 0.0)
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    lr = call.kwargs.get("lr", DEFAULT_LR[call.fn])
    if call.fn == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=call.kwargs.get("momentum", 0.9))
    betas = (call.kwargs.get("beta1", 0.9), call.kwargs.get("beta2", 0.95))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=call.kwargs.get("eps", 1e-8))


def base_lr(config: TrainConfig) -> float:
    return float(config.optimizer.kwargs.get("lr", DEFAULT_LR[config.optimizer.fn]))


def warmup_steps(config: TrainConfig) -> int:
    return int(config.schedule.kwargs.get("warmup", min(100, config.steps // 10)))


def lr_factor(config: TrainConfig, step: int, progress: float) -> float:
    """Multiplier of the base rate at `step` (0-based), `progress` in [0, 1] of the run:
    a linear ramp over the warm-up steps, times a cosine from 1 down to `final`. The ramp
    counts steps, or `progress * steps` when a time budget has moved progress further than
    the steps have (so the warm-up takes the same share of a run that time cuts short)."""
    warm = warmup_steps(config)
    done = max(step + 1, progress * config.steps)  # steps' worth of the run, this one included
    ramp = min(1.0, done / warm) if warm else 1.0
    if config.schedule.fn == "constant":
        return ramp
    final = float(config.schedule.kwargs.get("final", 0.1))
    p = min(max(progress, 0.0), 1.0)
    return ramp * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
