"""`nexusdsl.train(...)`: what `nexus train` does, from Python."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.fsutil import (
    LOCK,
    DirectoryInUse,
    UnwritablePath,
    atomic_write_text,
    check_writable,
    locked_directory,
    os_reason,
)
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import distributed
from nexusdsl.train.interrupts import Interrupted, check, deferred
from nexusdsl.train.loop import Result, prepare_optimizer, run
from nexusdsl.train.metrics import FILE as METRICS
from nexusdsl.train.metrics import MetricsLog
from nexusdsl.train.progress import Display
from nexusdsl.train.session import (
    Session,
    build,
    check_memory,
    check_values,
    configure,
    dry_run,
    load_program,
    restore,
)
from nexusdsl.train.threads import threads_for


def train(program_or_path, model: str | None = None, *, data: str | None = None,
          steps: int | None = None, batch: int | None = None, context: int | None = None,
          lr: float | None = None, seed: int | None = None, time: float | None = None,
          out: str | Path | None = None, resume: bool = False, until: int | None = None,
          shard: bool = False,
          device: str = "cpu", progress: bool = False, console=None, **settings: Any) -> Result:
    """Train a model of a `.nx` file as its `train` section says, with overrides.

        result = nexusdsl.train("examples/tiny_lm.nx", steps=200, out="runs/tiny")
        result.after["bpb"]          # held-out bits per byte after training
        result.model                 # the trained torch module

    `settings` override any other training setting or model hyperparameter (`prefix=8`,
    `dim=64`, `objective="denoise"`). With `out`, checkpoints are written there, and the
    run's history to `out/metrics.jsonl` (train/metrics.py); `resume` continues the newest
    checkpoint up to `steps` (`steps=4000, resume=True` trains to step 4000); `time` is the
    budget of this run, resumed or not; `until` stops at that step (the schedule still spans
    `steps`), to run a long schedule in pieces. Under torchrun, runs on every process
    (`shard`: FSDP).

    Nothing is lost: `out` is locked for the run (another run into it fails at once, naming
    this process), checked before any training (a file, an unwritable folder, a checkpoint
    without `resume`), and a checkpoint newer than the one resumed is never overwritten.
    With `out`, SIGINT (Ctrl-C) or SIGTERM while training finishes the step, saves it and
    raises `nexusdsl.train.interrupts.Interrupted` (a KeyboardInterrupt whose `.checkpoint`
    is the saved step directory)."""
    check_device(device)
    d = distributed.setup(shard, device)
    overrides = {"data": data, "steps": steps, "batch": batch, "context": context, "lr": lr,
                 "seed": seed, "time": time, **settings}
    try:
        result = _train(d, program_or_path, model, out, resume, until, progress, console,
                        overrides)
    except BaseException:
        distributed.teardown(d, clean=False)
        raise
    distributed.teardown(d)
    return result


def plan(program_or_path, model: str | None = None, *, out: str | Path | None = None,
         resume: bool = False, until: int | None = None, device: str = "cpu",
         **settings: Any) -> Session:
    """What `train` with the same arguments would train (`nexus train --dry-run`): the
    session built, checked on a trial batch and restored from the checkpoint it would resume,
    without training or writing anything. `train/describe.py` puts it in words."""
    check_device(device)
    d = distributed.Dist(device=device)
    program, config = _configured(program_or_path, model, settings, d)
    out = Path(out) if out is not None else None
    existing = _existing_checkpoint(out, resume) if out is not None else None
    return _session(program, model, config, d, out, existing, until, Display(False))


def _train(d, program_or_path, model, out, resume, until, progress, console,
           overrides) -> Result:
    program, config = _configured(program_or_path, model, overrides, d)
    out = Path(out) if out is not None else None
    existing = _existing_checkpoint(out, resume) if out is not None else None
    try:
        return _run(program, model, config, d, out, existing, resume, until, progress, console)
    except NexusError as err:  # raised mid-run at a setting (divergence, a reward's return)
        if err.sources or not any(diag.span.line for diag in err.diagnostics):
            raise
        raise NexusError(err.diagnostics, program.sources) from None


def _configured(program_or_path, model, overrides, d):
    """The program and its checked training configuration (NEXUS_MAX_STEPS checked too)."""
    program = load_program(program_or_path)
    config = configure(program, model, overrides)
    check_values(config, program.sources)
    step_cap()
    if config.batch % d.world:
        raise NexusError.at(NO_SPAN, f"batch {config.batch} does not divide evenly over "
                            f"{d.world} processes")
    if config.batch // d.world % config.accumulate:  # each process splits its own share
        raise NexusError.at(NO_SPAN, f"batch {config.batch} over {d.world} processes does "
                            f"not split into accumulate = {config.accumulate} equal "
                            "micro-batches on each")
    return program, config


def _run(program, model, config, d, out, existing, resume, until, progress,
         console) -> Result:
    with _claimed(out, d), deferred(out is not None) as stop:
        display = Display(progress and d.main, console)
        session = _session(program, model, config, d, out, existing, until, display)
        if existing is None and resume:
            display.log(f"no checkpoint in {out} yet; starting at step 0")
        prepare_optimizer(session)
        check(stop if not d.active else None)  # a signal while building: nothing to save yet
        session.metrics = MetricsLog(out, d.main)
        session.metrics.begin(session.start_step if session.resumed is not None else None)
        session.stop = stop
        try:
            with threads_for(config.threads, d, display):
                result = run(session, display)
            if stop:  # the signal came during the last save: the run is complete
                raise Interrupted(stop.signum, result.steps, result.checkpoint)
        finally:
            session.metrics.close()
        if out is not None:
            write_rank_report(session, result)
    return result


def _session(program, model, config, d, out, existing, until, display) -> Session:
    """Built, checked on a trial batch and in memory, restored from `existing`, and stopping
    where `until` and NEXUS_MAX_STEPS say."""
    session = build(program, model, config, d)
    session.until, session.out = until, out
    dry_run(session)
    check_memory(session)
    if existing is not None:
        restore(session, ckpt.load(existing))
        display.log(f"resuming from {session.resumed.path} (step {session.step})")
        if session.step >= session.end:
            display.log(nothing_to_train(session))
    cap = step_cap()
    if cap is not None and session.step + cap < session.end:
        session.until = session.step + cap
        display.log(f"{MAX_STEPS}={cap}: this run stops at step {session.until} (the schedule "
                    f"still spans {config.steps} steps)")
    return session


MAX_STEPS = "NEXUS_MAX_STEPS"  # caps every run's steps: for trying commands quickly


def step_cap() -> int | None:
    """NEXUS_MAX_STEPS: at most this many steps per run, as `until` would stop them (the
    schedule unchanged). The docs' own test runs every command of the docs this way."""
    raw = os.environ.get(MAX_STEPS, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise NexusError.at(NO_SPAN, f"{MAX_STEPS} must be a whole number >= 1, got {raw!r}")
    return int(raw)


def nothing_to_train(session: Session) -> str:
    """What a resume of a finished run says: where it is and how to train further."""
    stop = (f"--until {session.until}" if session.until and session.until < session.config.steps
            else f"--steps {session.config.steps}")
    return (f"nothing to train: the checkpoint is at step {session.step}, and this run stops "
            f"at {stop}; give a larger --steps (with --resume) to train further")


def check_device(device: str) -> None:
    """`cpu`, `cuda` or `cuda:N`, and CUDA only where there is a device."""
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise NexusError.at(NO_SPAN, f"device {device}: choose cpu or cuda")
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise NexusError.at(NO_SPAN, f"device {device}: no CUDA device is available here")


def _existing_checkpoint(out: Path, resume: bool) -> Path | None:
    """The checkpoint in `out` to resume, checked before anything is built: refuse an `out`
    that is a file, a checkpoint without `resume`, and a resume that would overwrite a
    checkpoint newer than the one resumed."""
    try:
        check_writable(out, directory=True)
    except UnwritablePath as err:
        raise ckpt.CheckpointError(f"--out {out}: {err}") from None
    existing = ckpt.find(out)
    if existing is None:
        return None
    if not resume:
        raise ckpt.CheckpointError(f"{out} already holds a checkpoint ({existing.name}); pass "
                                   "--resume to continue it, or choose another --out")
    if ckpt.STEP_NAME.fullmatch(existing.name):
        newer = [p for p in ckpt.complete_steps(out) if ckpt.step_of(p) > ckpt.step_of(existing)]
        if newer:
            raise ckpt.CheckpointError(
                f"{out} holds {newer[-1].name}, newer than {existing.name} which "
                f"{out / ckpt.POINTER} names: resuming would overwrite it; move it away, or "
                f"point {ckpt.POINTER} at it")
    return existing


@contextlib.contextmanager
def _claimed(out: Path | None, d: distributed.Dist):
    """Hold `out`'s lock for the whole run (process 0 takes it; the others learn whether it
    did). Taking it also proves `out` writable before any training time is spent. A run that
    fails before writing anything leaves no `out` it created."""
    if out is None:
        yield
        return
    created, problem = not out.exists(), None
    with contextlib.ExitStack() as held:
        if d.main:
            try:
                held.enter_context(locked_directory(out))
            except DirectoryInUse as err:
                holder = f"process {err.pid}" if err.pid else "another process"
                problem = (f"--out {out} is in use by another run ({holder}); wait for it to "
                           "finish, or choose another --out")
            except OSError as err:
                problem = f"cannot write to --out {out}: {os_reason(err)}"
        if not distributed.all_true(problem is None, d):
            raise ckpt.CheckpointError(problem or f"--out {out} cannot be used (see process 0)")
        try:
            yield
        except BaseException:
            if created and d.main:
                _remove_if_empty(out)
            raise


def _remove_if_empty(out: Path) -> None:
    """Remove an `out` this run created and left holding no checkpoint: nothing but its lock
    file and the metrics of steps never saved."""
    with contextlib.suppress(OSError):
        left = {p.name for p in out.iterdir()}
        if LOCK in left and left <= {LOCK, METRICS}:
            for name in left:
                (out / name).unlink()
            out.rmdir()


def write_rank_report(session: Session, result: Result) -> None:
    """`OUT/ranks/rank-R.json`: each process's step and a hash of its parameters (its local
    shards when sharded). Written before the process group is torn down, so a launcher can
    check that every replica finished and agrees even if teardown itself fails."""
    h = hashlib.sha256()
    for name, p in session.trainee.named_parameters():
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t
        h.update(name.encode())
        h.update(t.cpu().contiguous().numpy().tobytes())
    d = session.dist
    report = {"rank": d.rank, "world": d.world, "sharded": d.sharded, "step": result.steps,
              "params_sha256": h.hexdigest(), "after": result.after, "done": True}
    atomic_write_text(session.out / "ranks" / f"rank-{d.rank}.json", json.dumps(report) + "\n")
