"""The training loop: batches drawn from (seed, step), loss plus the model's auxiliary losses,
gradient clipping, the schedule, held-out evaluation, checkpoints, and resuming exactly.

Determinism: step s uses a generator seeded from (seed, s) for its data and corruption, the
schedule depends on s only (unless a time budget is set), and a checkpoint restores weights,
optimizer tensors and every process's torch RNG state; so N steps, a stop, and N resumed steps
equal 2N straight steps bit for bit on CPU.

Data parallel: every process draws the same global batch and keeps its own slice, so the
gradient DDP averages is the full batch's gradient (as in one process).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import distributed
from nexusdsl.train.data import slice_batch
from nexusdsl.train.optim import base_lr, build_optimizer, lr_factor, set_lr
from nexusdsl.train.progress import Display, format_metrics, format_seconds
from nexusdsl.train.session import Session, collect_aux

EVAL_SEED = 2_000_003  # held-out corruption and views: the same at every evaluation


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class Result:
    """What `nexusdsl.train` returns."""

    model: Any  # the trained NexusModule
    steps: int
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------- one step


def local_batch(s: Session, step: int) -> dict[str, torch.Tensor]:
    obj, config = s.objective, s.config
    gen = step_generator(config.seed, step)
    batch = obj.prepare(s.data.train.sample(config.batch, obj.length(config.context), gen), gen)
    batch = slice_batch(batch, s.dist.rank, s.dist.world)
    return {k: v.to(s.dist.device) for k, v in batch.items()}


def train_step(s: Session, step: int, lr: float) -> tuple[float, int]:
    set_lr(s.optimizer, lr)
    batch = local_batch(s, step)
    s.net.train()
    loss = s.objective.loss(s.net, batch)
    aux = collect_aux(s.trainee)
    total = loss if aux is None else loss + aux
    s.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if s.config.clip:
        params = [p for p in s.trainee.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, s.config.clip)
    s.optimizer.step()
    return float(loss.detach()), s.objective.count(batch) * s.dist.world


def progress_of(s: Session, step: int, elapsed: float) -> float:
    """How far through the run: by steps, or by the time budget when that is further."""
    p = step / s.config.steps
    return max(p, elapsed / s.config.time) if s.config.time else p


# ----------------------------------------------------------------------------- evaluation


def evaluate(s: Session) -> dict[str, float]:
    """Held-out metrics over the fixed evaluation batches (the same batches every time).
    Data parallel: processes share the batches; sharded: each runs all of them, since every
    FSDP forward pass is collective."""
    obj, config, d = s.objective, s.config, s.dist
    sums: dict[str, float] = {}
    batches = s.data.heldout.eval_batches(config.batch, obj.length(config.context),
                                          config.eval_batches)
    s.trainee.eval()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if not d.sharded and i % d.world != d.rank:
                continue
            batch = obj.prepare(batch, torch.Generator().manual_seed(EVAL_SEED + i))
            batch = {k: v.to(d.device) for k, v in batch.items()}
            for key, value in obj.eval_sums(s.trainee, batch).items():
                sums[key] = sums.get(key, 0.0) + value
            collect_aux(s.trainee)
    s.trainee.train()
    if not d.sharded:
        sums = distributed.sum_all(sums, d)
    return obj.summarize(sums)


# ----------------------------------------------------------------------------- checkpoints


def save(s: Session, metrics: dict[str, float] | None = None) -> Path | None:
    model = distributed.model_state(s.trainee, s.dist)
    finite = all(bool(torch.isfinite(t).all()) for t in model.values() if t.is_floating_point())
    if not distributed.all_true(finite, s.dist):  # a NaN checkpoint would replace a good one
        raise diverged(s, "the weights are no longer finite")
    optim = distributed.optimizer_state(s.trainee, s.optimizer, s.dist)
    rng = distributed.gather_bytes(bytes(torch.get_rng_state().tolist()), s.dist)
    path = None
    if s.dist.main:
        state = {**s.metadata(), "elapsed": s.elapsed, "metrics": metrics or {},
                 "rng": {"torch": [list(r) for r in rng]}}
        path = ckpt.save(s.out, s.step, model, s.tied, optim, state)
    distributed.barrier(s.dist)
    return path


def diverged(s: Session, what: str) -> NexusError:
    """Training that produced NaN or infinity: stopped, with nothing of it saved (earlier
    checkpoints are kept), reported at the optimizer setting whose learning rate is the usual
    cause."""
    lr = s.config.optimizer.kwargs.get("lr", "the default")
    return NexusError.at(s.config.span("optimizer"), f"training diverged at step {s.step}: "
                         f"{what} (nan or inf), so nothing of it was saved; try a smaller "
                         f"learning rate than {lr}")


def prepare_optimizer(s: Session) -> None:
    """Wrap for several processes, build the optimizer, and restore its state and the RNG."""
    s.net = distributed.wrap(s.trainee, s.dist)
    s.optimizer = build_optimizer(s.trainee, s.config.optimizer)
    torch.manual_seed(s.config.seed + s.dist.rank)
    if s.resumed is None:
        return
    names = {id(p): ckpt.file_name(n) for n, p in s.trainee.named_parameters()}
    fresh = [{**{k: v for k, v in g.items() if k != "params"},
              "params": [names[id(p)] for p in g["params"]]} for g in s.optimizer.param_groups]
    state = ckpt.optimizer_state(s.resumed, fresh)
    distributed.load_optimizer_state(s.trainee, s.optimizer, state, s.dist)
    rngs = (s.resumed.state.get("rng") or {}).get("torch", [])
    if len(rngs) == s.dist.world:
        try:
            torch.set_rng_state(torch.tensor(rngs[s.dist.rank], dtype=torch.uint8))
        except RuntimeError:  # torch checks the generator state it is given
            raise ckpt.CheckpointError(f"checkpoint {s.resumed.path} is damaged: its RNG "
                                       "state is not a valid generator state") from None


# ----------------------------------------------------------------------------- the loop


def run(s: Session, display: Display) -> Result:
    config = s.config
    display.log(f"data: {s.data.name}; objective {config.objective.fn}; "
                f"{sum(p.numel() for p in s.trainee.parameters() if p.requires_grad):,} "
                f"trainable parameters; {s.dist.world} process(es)"
                + (", sharded" if s.dist.sharded else ""))
    before = evaluate(s)
    display.log(f"held-out at step {s.step}: {format_metrics(before)}")
    history = _loop(s, display)
    after = evaluate(s)
    display.log(f"held-out at step {s.step}: {format_metrics(after)}")
    path = save(s, after) if s.out is not None else None
    if path is not None:
        display.log(f"checkpoint: {path}")
    return Result(s.module, s.step, before, after, history, path, s.elapsed)


def _loop(s: Session, display: Display) -> list[dict[str, float]]:
    config, history = s.config, []
    display.start(config.steps, s.step, s.objective.unit)
    start, start_elapsed, start_step, units = time.perf_counter(), s.elapsed, s.step, 0
    try:
        while s.step < s.end and not (config.time and s.elapsed >= config.time):
            lr = base_lr(config) * lr_factor(config, s.step, progress_of(s, s.step, s.elapsed))
            loss, n = train_step(s, s.step, lr)
            s.step, units = s.step + 1, units + n
            if not distributed.all_true(math.isfinite(loss), s.dist):
                raise diverged(s, "the loss is no longer finite")
            s.elapsed = start_elapsed + time.perf_counter() - start
            history.append({"step": s.step, "loss": loss, "lr": lr})
            _report(s, display, loss, lr, units, start_step, start_elapsed)
            _periodic(s, display)
    finally:
        display.stop()
    took = s.elapsed - start_elapsed
    display.log(f"trained {s.step - start_step} steps in {format_seconds(took)}"
                + (" (time budget reached)" if s.step < s.end else ""))
    return history


def _report(s: Session, display: Display, loss: float, lr: float, units: int,
            start_step: int, start_elapsed: float) -> None:
    if s.step % s.config.log_every and s.step != s.end:
        return
    spent = max(s.elapsed - start_elapsed, 1e-9)
    per_step = spent / max(s.step - start_step, 1)
    eta = (s.end - s.step) * per_step
    if s.config.time:
        eta = min(eta, s.config.time - s.elapsed)
    display.update(s.step, loss, units / spent, lr, eta)


def _periodic(s: Session, display: Display) -> None:
    config = s.config
    if config.eval_every and s.step % config.eval_every == 0 and s.step < s.end:
        display.log(f"held-out at step {s.step}: {format_metrics(evaluate(s))}")
    if s.out is not None and config.save_every and s.step % config.save_every == 0:
        save(s)
