"""The training loop: batches drawn from (seed, step), loss plus the model's auxiliary losses,
gradient clipping, the schedule, held-out evaluation, checkpoints, and resuming exactly.

Determinism: step s uses a generator seeded from (seed, s) for its data and corruption, the
schedule depends on s only (unless a time budget is set), and a checkpoint restores weights,
optimizer tensors and every process's torch RNG state; so N steps, a stop, and N resumed steps
equal 2N straight steps bit for bit on CPU. The stop may be a signal: SIGINT or SIGTERM
during training ends the step in progress, saves it and raises `Interrupted`
(train/interrupts.py).

A time budget (`time`) is this run's: a resumed run gets the whole budget again, and the
schedule fits what remains of it into that time (`progress_of`).

Data parallel: every process draws the same global batch and keeps its own slice, so the
gradient DDP averages is the full batch's gradient (as in one process).

A step (`train_step`) may run its batch as `accumulate` equal micro-batches, each loss (and
auxiliary loss) divided by their number, so that the summed gradients are the whole batch's;
its forward pass runs under the run's precision (train/precision.py), with the repeat steps
`checkpoint` names recomputed in the backward pass (train/checkpointing.py), and through
torch.compile with `compile`. The loop keeps each step's loss as a tensor and reads the
losses (one host sync for several steps) only when it reports, evaluates or saves: that is
also when a loss that is not finite is found, and the error names the step that made it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import checkpointing, distributed, rng
from nexusdsl.train.data import Prefetch, slice_batch
from nexusdsl.train.expert_load import ExpertLoad
from nexusdsl.train.interrupts import Interrupted, StopRequest, signal_name
from nexusdsl.train.metrics import Throughput
from nexusdsl.train.optim import base_lr, build_optimizer, lr_factor, set_lr
from nexusdsl.train.precision import format_flops, matmul_peak, precision_for
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
    start_step: int = 0  # the step this run started from (a resumed run's checkpoint step)


# ----------------------------------------------------------------------------- one step


def host_batch(s: Session, step: int) -> dict[str, torch.Tensor]:
    """This process's batch of `step`, on the host (a function of the seed and the step)."""
    obj, config = s.objective, s.config
    gen = step_generator(config.seed, step)
    batch = obj.prepare(s.data.train.sample(config.batch, obj.length(config.context), gen), gen)
    return slice_batch(batch, s.dist.rank, s.dist.world)


def local_batch(s: Session, step: int) -> dict[str, torch.Tensor]:
    return {k: v.to(s.dist.device) for k, v in host_batch(s, step).items()}


def train_step(s: Session, step: int, lr: float,
               batches: Prefetch | None = None) -> tuple[torch.Tensor, int]:
    """One optimizer step: (the batch's mean objective loss, as a tensor not yet read, and
    the units it counted over every process). `batches`: the loop's batches built ahead."""
    set_lr(s.optimizer, lr)
    batch = batches.take(step) if batches is not None else local_batch(s, step)
    s.net.train()
    s.optimizer.zero_grad(set_to_none=True)
    parts = s.config.accumulate
    losses = []
    for i, micro in enumerate(micro_batches(batch, parts)):
        with _gradient_sync(s.net, i == parts - 1), s.precision.autocast():
            loss = s.objective.loss(s.net, micro)
            aux = collect_aux(s.trainee)
            total = loss if aux is None else loss + aux
        s.precision.backward(total / parts if parts > 1 else total)
        losses.append(loss.detach())
    s.precision.unscale(s.optimizer)
    if s.config.clip:
        params = [p for group in s.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, s.config.clip)
    s.precision.step(s.optimizer)
    mean = losses[0] if parts == 1 else torch.stack(losses).float().mean()
    return mean, s.objective.count(batch) * s.dist.world


def micro_batches(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """`parts` equal, contiguous slices of a batch (its first axis must divide by `parts`)."""
    if parts == 1:
        return [batch]
    return [slice_batch(batch, i, parts) for i in range(parts)]


def _gradient_sync(net, last: bool):
    """DDP averages gradients at the last micro-batch's backward only (FSDP likewise)."""
    if last:
        return contextlib.nullcontext()
    if hasattr(net, "no_sync"):
        return net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2: a setting, not a context
        return _fsdp_no_sync(net)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(net):
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def progress_of(s: Session, step: int, run_seconds: float) -> float:
    """How far through the schedule: by steps, or by this run's time budget when that is
    further. The budget covers what remains after the step this run started from, so a
    resumed run decays over its own budget instead of finding it spent."""
    p = step / s.config.steps
    if not s.config.time:
        return p
    start = min(s.start_step / s.config.steps, 1.0)
    return max(p, start + (1 - start) * run_seconds / s.config.time)


# ----------------------------------------------------------------------------- evaluation


def evaluate(s: Session) -> dict[str, float]:
    """Held-out metrics over the fixed evaluation batches (the same batches every time).
    Data parallel: processes share the batches; sharded: each runs all of them, since every
    FSDP forward pass is collective. Fewer batches than processes: each runs all of them too
    (a process without a batch would have no sums to add)."""
    obj, config, d = s.objective, s.config, s.dist
    sums: dict[str, float] = {}
    batches = list(s.data.heldout.eval_batches(config.batch, obj.length(config.context),
                                               config.eval_batches))
    shared = not d.sharded and len(batches) >= d.world  # else every process runs every batch
    s.trainee.eval()
    precision = s.precision.autocast() if s.precision is not None else contextlib.nullcontext()
    with torch.no_grad(), precision:
        for i, batch in enumerate(batches):
            if s.stop and not d.active:  # one process: stop at once (evaluating changes nothing)
                s.trainee.train()
                raise Interrupted(s.stop.signum, s.step)
            if shared and i % d.world != d.rank:
                continue
            batch = obj.prepare(batch, torch.Generator().manual_seed(EVAL_SEED + i))
            batch = {k: v.to(d.device) for k, v in batch.items()}
            for key, value in obj.eval_sums(s.trainee, batch).items():
                sums[key] = sums.get(key, 0.0) + value
            collect_aux(s.trainee)
    s.trainee.train()
    if shared:
        sums = distributed.sum_all(sums, d)
    return obj.summarize(sums)


# ----------------------------------------------------------------------------- checkpoints


def save(s: Session, metrics: dict[str, float] | None = None) -> Path | None:
    model = distributed.model_state(s.trainee, s.dist)
    finite = distributed.finite(model.values())
    if not distributed.all_true(finite, s.dist):  # a NaN checkpoint would replace a good one
        raise diverged(s, "the weights are no longer finite")
    optim = distributed.optimizer_state(s.trainee, s.optimizer, s.dist)
    state = {**s.metadata(), "elapsed": s.elapsed, "metrics": metrics or {},
             "rng": rng.record(s.dist)}
    scale = s.precision.state() if s.precision is not None else None
    if scale is not None:  # fp16's loss scale, so that a resumed run goes on with it
        state["grad_scaler"] = scale
    if s.dist.sharded:  # every process writes its own shards (a DCP checkpoint)
        return ckpt.save_sharded(s.out, s.step, model, s.tied, optim, state, s.dist)
    path = ckpt.save(s.out, s.step, model, s.tied, optim, state) if s.dist.main else None
    distributed.barrier(s.dist)
    return path


def diverged(s: Session, what: str, step: int | None = None) -> NexusError:
    """Training that produced NaN or infinity (at `step`, default the current one): stopped,
    with nothing of it saved (earlier checkpoints are kept), reported at the optimizer setting
    whose learning rate is the usual cause."""
    lr = s.config.optimizer.kwargs.get("lr", "the default")
    step = s.step if step is None else step
    return NexusError.at(s.config.span("optimizer"), f"training diverged at step {step}: "
                         f"{what} (nan or inf), so nothing of it was saved; try a smaller "
                         f"learning rate than {lr}")


def compiled(net: torch.nn.Module) -> torch.nn.Module:
    """torch.compile of what the step calls (the optimizer stays eager). Random ops (dropout)
    draw from torch's generator as in eager mode, not from inductor's own, so that a compiled
    run follows the eager run's loss curve (docs/decisions.md)."""
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    return torch.compile(net)


def prepare_optimizer(s: Session) -> None:
    """Set the precision (float32 master weights) and the checkpointed repeat steps, wrap for
    several processes, compile, build the optimizer (after wrapping: FSDP's parameters are
    the sharded ones), and restore its state, the loss scale and the RNG."""
    config = s.config
    s.precision = precision_for(config.precision, s.trainee, s.dist.device)
    if s.resumed is not None and config.precision != "fp32":  # loaded before the cast: again
        ckpt.load_weights(s.trainee, s.resumed.model)
    steps = checkpointing.chosen_steps(s.module.graph, config.checkpoint,
                                       config.span("checkpoint"))
    checkpointing.install(s.module, steps)
    s.net = distributed.wrap(s.trainee, s.dist, config.precision)
    if config.compile:
        s.net = compiled(s.net)
    s.optimizer = build_optimizer(s.trainee, config.optimizer)
    torch.manual_seed(config.seed + s.dist.rank)
    if s.resumed is None:
        return
    if not s.precision.restore(s.resumed.state.get("grad_scaler")):
        raise ckpt.CheckpointError(f"checkpoint {s.resumed.path} is damaged: its grad_scaler "
                                   "is not a loss scale's state")
    names = {id(p): ckpt.file_name(n) for n, p in s.trainee.named_parameters()}
    fresh = [{**{k: v for k, v in g.items() if k != "params"},
              "params": [names[id(p)] for p in g["params"]]} for g in s.optimizer.param_groups]
    state = ckpt.optimizer_state(s.resumed, fresh)
    distributed.load_optimizer_state(s.trainee, s.optimizer, state, s.dist)
    rng.restore(s.resumed, s.dist)


# ----------------------------------------------------------------------------- the loop


def run(s: Session, display: Display) -> Result:
    """Evaluate, train to `s.end` (or the time budget), evaluate, save. A signal recorded in
    `s.stop` ends the step in progress; the run is then saved and `Interrupted` raised."""
    config = s.config
    if s.stop is None:
        s.stop = StopRequest()
    if s.expert_load is None:
        s.expert_load = ExpertLoad(s.module, enabled=not s.dist.sharded)
    display.log(f"data: {s.data.name}; objective {config.objective.fn}; "
                f"{sum(p.numel() for p in s.trainee.parameters() if p.requires_grad):,} "
                f"trainable parameters; {s.dist.world} process(es)"
                + (", sharded" if s.dist.sharded else ""))
    throughput = _throughput(s, display)
    try:
        before = _heldout(s, display)
        history = _loop(s, display, throughput)
        if s.stop:
            raise Interrupted(s.stop.signum, s.step)
        after = _heldout(s, display)
    except Interrupted as stop:
        stop.step, stop.checkpoint = s.step, _save_interrupted(s, display, stop)
        raise
    path = save(s, after) if s.out is not None else None
    if path is not None:
        display.log(f"checkpoint: {path}")
    return Result(s.module, s.step, before, after, history, path, s.elapsed, s.start_step)


def _heldout(s: Session, display: Display) -> dict[str, float]:
    metrics = evaluate(s)
    display.log(f"held-out at step {s.step}: {format_metrics(metrics)}")
    if s.metrics is not None:
        s.metrics.heldout(s.step, metrics, round(s.elapsed, 3))
    return metrics


def _save_interrupted(s: Session, display: Display, stop: Interrupted) -> Path | None:
    """The checkpoint of an interrupted run: saved now if this run trained a step, else the
    one it resumed from (None for a fresh run that trained nothing)."""
    display.log(f"{signal_name(stop.signum)}: stopping at step {s.step}")
    if s.out is None:
        return None
    if s.step == s.start_step:
        return s.resumed.path if s.resumed is not None else None
    return save(s)


def _loop(s: Session, display: Display, throughput: Throughput) -> list[dict[str, float]]:
    config, history = s.config, []
    display.start(config.steps, s.step, s.objective.unit)
    start, start_elapsed, start_step, units = time.perf_counter(), s.elapsed, s.step, 0
    window: list[tuple[int, torch.Tensor, float]] = []  # (step, loss, lr) not yet read
    unreported: list[float] = []  # losses read since the last report (an evaluation reads too)
    spent = False  # this run's time budget
    batches = Prefetch(lambda step: host_batch(s, step), s.dist.device)  # built ahead
    try:
        while s.step < s.end and not spent:
            lr = base_lr(config) * lr_factor(config, s.step, progress_of(s, s.step,
                                                                          s.run_seconds))
            s.expert_load.armed = _logs(s, s.step + 1)
            loss, n = train_step(s, s.step, lr, batches)
            s.step, units = s.step + 1, units + n
            s.run_seconds = time.perf_counter() - start
            s.elapsed = start_elapsed + s.run_seconds
            stopping, spent = _agree(s)
            window.append((s.step, loss, lr))
            reports = _logs(s, s.step) or stopping or spent  # a run's last step is reported
            if reports or _periodic_due(s):
                losses, window = _read_losses(s, window), []
                history += losses
                unreported += [h["loss"] for h in losses]
                if reports:
                    mean = sum(unreported) / len(unreported)
                    _report(s, display, mean, lr, units, start_step, throughput)
                    unreported = []
            if stopping:
                break
            _periodic(s, display)
    finally:
        batches.close()
        s.expert_load.armed = False
        display.stop()
    took = s.step - start_step
    why = (" (interrupted)" if s.stop else " (time budget reached)" if s.step < s.end else "")
    display.log(f"trained {took} steps in {format_seconds(s.run_seconds)}{why}")
    return history


def _read_losses(s: Session, window: list[tuple[int, torch.Tensor, float]]
                 ) -> list[dict[str, float]]:
    """The window's losses as numbers (one host sync), checked finite on every process: a
    loss that is not raises at the first step that made it."""
    if not window:
        return []
    values = torch.stack([loss.float() for _, loss, _ in window]).tolist()
    losses = [{"step": step, "loss": v, "lr": lr} for (step, _, lr), v in zip(window, values)]
    bad = next((h["step"] for h in losses if not math.isfinite(h["loss"])), None)
    if not distributed.all_true(bad is None, s.dist):
        raise diverged(s, "the loss is no longer finite", bad)
    return losses


def _throughput(s: Session, display: Display) -> Throughput:
    """The model's FLOPs per counted unit and this machine's matmul peak for the run's
    precision (measured now, once per process), said in the run's header."""
    precision = s.precision.name if s.precision is not None else "fp32"
    peak = matmul_peak(s.precision.dtype if s.precision is not None else torch.float32,
                       s.dist.device)
    display.log(f"matmul peak: {format_flops(peak)} in {precision} with "
                f"{torch.get_num_threads()} thread(s) per process")
    return Throughput.of(s.module.graph, s.config.context, s.objective.unit, peak, s.dist.world)


def _agree(s: Session) -> tuple[bool, bool]:
    """(some process received a stop signal, some process's clock has spent the time
    budget): one exchange per step under torchrun, so that every process stops or goes on
    together; none in one process."""
    late = bool(s.config.time) and s.run_seconds >= s.config.time
    if not s.dist.active:
        return bool(s.stop), late
    votes = distributed.sum_all({"stop": float(bool(s.stop)), "late": float(late)}, s.dist)
    if votes["stop"] and not s.stop:  # another process got the signal: stop with it
        s.stop.signum = signal.SIGINT
    return votes["stop"] > 0, votes["late"] > 0


def _logs(s: Session, step: int) -> bool:
    """Whether `step` (1-based, the step about to finish) is one that is reported."""
    return step % s.config.log_every == 0 or step == s.end


def _report(s: Session, display: Display, loss: float, lr: float, units: int,
            start_step: int, throughput: Throughput) -> None:
    """The progress display and a metrics.jsonl line: `loss` is the mean training loss of the
    steps since the last report, `lr` the last step's rate, throughput and MFU over this
    run."""
    spent = max(s.run_seconds, 1e-9)
    per_step = spent / max(s.step - start_step, 1)
    eta = (s.end - s.step) * per_step
    if s.config.time:
        eta = min(eta, s.config.time - s.run_seconds)
    rate = units / spent
    mfu = throughput.mfu(rate)
    display.update(s.step, loss, rate, lr, eta, mfu)
    if s.metrics is not None:
        record = {"loss": loss, "lr": lr, f"{s.objective.unit}_per_s": round(rate, 1),
                  "mfu": round(mfu, 5), "seconds": round(s.elapsed, 3)}
        experts = s.expert_load.shares(s.dist) if s.expert_load else {}
        if experts:
            record["experts"] = experts
        s.metrics.train(s.step, record)
    elif s.expert_load:
        s.expert_load.shares(s.dist)  # every process takes part in the sum


def _periodic_due(s: Session) -> bool:
    """Whether this step evaluates or saves (its losses are read first: a checkpoint is of
    finite steps only)."""
    config = s.config
    evaluates = config.eval_every and s.step % config.eval_every == 0 and s.step < s.end
    saves = s.out is not None and config.save_every and s.step % config.save_every == 0
    return bool(evaluates or saves)


def _periodic(s: Session, display: Display) -> None:
    config = s.config
    if config.eval_every and s.step % config.eval_every == 0 and s.step < s.end:
        _heldout(s, display)
    if s.out is not None and config.save_every and s.step % config.save_every == 0:
        save(s)
