"""`nexusdsl.train(...)`: what `nexus train` does, from Python."""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from nexusdsl.train.loop import Result, prepare_optimizer, run
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
    `dim=64`, `objective="denoise"`). With `out`, checkpoints are written there; `resume`
    continues the newest one; `until` stops at that step (the schedule still spans `steps`),
    to run a long schedule in pieces. Under torchrun, runs on every process (`shard`: FSDP).

    Nothing is lost: `out` is locked for the run (another run into it fails at once, naming
    this process), checked before any training (a file, an unwritable folder, a checkpoint
    without `resume`), and a checkpoint newer than the one resumed is never overwritten."""
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


def _train(d, program_or_path, model, out, resume, until, progress, console,
           overrides) -> Result:
    program = load_program(program_or_path)
    config = configure(program, model, overrides)
    check_values(config, program.sources)
    if config.batch % d.world:
        raise NexusError.at(NO_SPAN, f"batch {config.batch} does not divide evenly over "
                            f"{d.world} processes")
    out = Path(out) if out is not None else None
    existing = _existing_checkpoint(out, resume) if out is not None else None
    try:
        return _run(program, model, config, d, out, existing, resume, until, progress, console)
    except NexusError as err:  # raised mid-run at a setting (divergence, a reward's return)
        if err.sources or not any(diag.span.line for diag in err.diagnostics):
            raise
        raise NexusError(err.diagnostics, program.sources) from None


def _run(program, model, config, d, out, existing, resume, until, progress,
         console) -> Result:
    with _claimed(out, d):
        session = build(program, model, config, d)
        session.until, session.out = until, out
        dry_run(session)
        check_memory(session)
        display = Display(progress and d.main, console)
        if existing is not None:
            restore(session, ckpt.load(existing))
            display.log(f"resuming from {session.resumed.path} (step {session.step})")
        elif resume:
            display.log(f"no checkpoint in {out} yet; starting at step 0")
        prepare_optimizer(session)
        with threads_for(config.threads, d, display):
            result = run(session, display)
        if out is not None:
            write_rank_report(session, result)
    return result


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
    """Remove an `out` this run created and left holding nothing but its lock file."""
    with contextlib.suppress(OSError):
        if [p.name for p in out.iterdir()] == [LOCK]:
            (out / LOCK).unlink()
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
