"""`nexusdsl.train(...)`: what `nexus train` does, from Python."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.fsutil import atomic_write_text
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import distributed
from nexusdsl.train.loop import Result, prepare_optimizer, run
from nexusdsl.train.progress import Display
from nexusdsl.train.session import Session, build, configure, dry_run, load_program, restore
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
    to run a long schedule in pieces. Under torchrun, runs on every process (`shard`: FSDP)."""
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
    if config.batch % d.world:
        raise NexusError.at(NO_SPAN, f"batch {config.batch} does not divide evenly over "
                            f"{d.world} processes")
    session = build(program, model, config, d)
    session.until = until
    dry_run(session)
    display = Display(progress and d.main, console)
    if out is not None:
        _attach_output(session, Path(out), resume, display)
    prepare_optimizer(session)
    with threads_for(config.threads, d, display):
        result = run(session, display)
    if out is not None:
        write_rank_report(session, result)
    return result


def _attach_output(session: Session, out: Path, resume: bool, display: Display) -> None:
    session.out = out
    if out.exists() and not out.is_dir():
        raise ckpt.CheckpointError(f"--out {out} is a file, not a directory")
    existing = ckpt.find(out)
    if existing is None:
        if resume:
            display.log(f"no checkpoint in {out} yet; starting at step 0")
        return
    if not resume:
        step = ckpt.latest_name(out) or existing.name
        raise ckpt.CheckpointError(f"{out} already holds a checkpoint ({step}); pass --resume "
                                   "to continue it, or choose another --out")
    restore(session, ckpt.load(out))
    display.log(f"resuming from {session.resumed.path} (step {session.step})")


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
