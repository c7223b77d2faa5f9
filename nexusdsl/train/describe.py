"""`nexus train --dry-run`: the configuration a run would train, each setting with where it
came from (the file's train section, a flag, or the default), the parameters of the model as
trained (which the train section's hyperparameters may make smaller than `nexus compile`
shows), the data and its sizes, and where the run would start. Nothing is written."""

from __future__ import annotations

from nexusdsl.compiler.summary import count_params
from nexusdsl.elaborate.train_config import Call, TrainConfig
from nexusdsl.train.api import MAX_STEPS, step_cap
from nexusdsl.train.optim import DEFAULT_LR, warmup_steps
from nexusdsl.train.session import Session


def origin(session: Session, name: str) -> str:
    """Where a setting came from: "FILE:LINE" (the train section), "flag" or "default"."""
    span = session.config.spans.get(name)
    if span is None:
        return "default"
    if not span.line:
        return "flag"
    written = session.program.train_config(session.model_name)
    return f"{span.file}:{span.line}" if name in written else "default"


def _call(call: Call) -> str:
    args = ", ".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v:g}"
                     if isinstance(v, float) else f"{k} = {v}" for k, v in call.kwargs.items())
    return f"{call.fn}({args})" if args else call.fn


def _rows(s: Session) -> list[tuple[str, str]]:
    c = s.config
    rows = [("model", f"{s.model_name} of {s.program.file}")]
    hyper = ", ".join(f"{k}={v} ({origin(s, k)})" for k, v in c.hyper.items())
    rows.append(("hyperparameters", hyper or "the model's defaults"))
    rows.append(("parameters", _parameters(s)))
    rows.append(("data", f"{s.data.name} ({origin(s, 'data')}): {_sizes(s)}"))
    rows.append(("objective", f"{_call(c.objective)} ({origin(s, 'objective')})"))
    rows.append(("optimizer", f"{_optimizer(c)} ({origin(s, 'optimizer')})"))
    rows.append(("schedule", f"{_call(c.schedule)} ({origin(s, 'schedule')}): {_schedule(c)}"))
    rows.append(("steps", _steps(s)))
    rows.append(("batch", f"{c.batch} ({origin(s, 'batch')}) x context {c.context} "
                          f"({origin(s, 'context')})" + _tokens(s)))
    rows.append(("held-out", f"{c.eval_batches} batches: before training, "
                 + (f"every {c.eval_every} steps, " if c.eval_every else "") + "and after"))
    rows.append(("checkpoints", _checkpoints(s)))
    rows.append(("log", f"every {c.log_every} steps" + (f" to {s.out}/metrics.jsonl"
                                                       if s.out is not None else "")))
    rows.append(("seed", f"{c.seed} ({origin(s, 'seed')}); gradient clipping {c.clip:g}; "
                 f"threads {c.threads or 'automatic'}"))
    if c.prefix:
        rows.append(("prompt tuning", f"a learned prefix of {c.prefix} vectors; every weight "
                                      "frozen"))
    elif c.freeze:
        rows.append(("frozen", ", ".join(c.freeze)))
    return rows


def _parameters(s: Session) -> str:
    params = list({id(p): p for p in s.trainee.parameters()}.values())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    text = f"{trainable:,} trainable of {sum(p.numel() for p in params):,}"
    if s.config.hyper and s.resumed is None:
        default = count_params(s.program.elaborate(s.model_name))["total"]
        text += f" (with the file's default hyperparameters: {default:,})"
    return text


def _sizes(s: Session) -> str:
    unit = "bytes" if "bytes" in s.data.fields and "label" not in s.data.fields else "examples"
    return f"{len(s.data.train):,} {unit} to train on, {len(s.data.heldout):,} held out"


def _optimizer(c: TrainConfig) -> str:
    call = c.optimizer
    if "lr" in call.kwargs:
        return _call(call)
    return f"{_call(call)} with lr = {DEFAULT_LR[call.fn]:g}"


def _schedule(c: TrainConfig) -> str:
    warm = warmup_steps(c)
    ramp = f"a warm-up of {warm} steps" if warm else "no warm-up"
    if c.schedule.fn == "constant":
        return f"{ramp}, then constant"
    final = float(c.schedule.kwargs.get("final", 0.1))
    return f"{ramp}, then a cosine down to {final:g} x lr at the end"


def _steps(s: Session) -> str:
    c = s.config
    text = f"{c.steps} ({origin(s, 'steps')})"
    if c.time:
        text += (f", or {c.time:g} s of training ({origin(s, 'time')}), whichever ends first; "
                 "the schedule follows whichever is further along")
    if s.resumed is not None:
        text += f"; resumes {s.resumed.path} at step {s.start_step}"
    if s.until is not None and s.until < c.steps:
        why = f" ({MAX_STEPS}={step_cap()})" if step_cap() is not None else ""
        text += f"; this run stops at step {s.until}{why}"
    return text


def _tokens(s: Session) -> str:
    if s.objective.unit != "tok":
        return f" = {s.config.batch:,} examples per step"
    return f" = {s.config.batch * s.config.context:,} tokens per step"


def _checkpoints(s: Session) -> str:
    c = s.config
    if s.out is None:
        return "none (no --out)"
    every = f"every {c.save_every} steps and " if c.save_every else ""
    return f"{s.out}, {every}at the end"


def describe(session: Session) -> str:
    """The dry run's text: one row per aspect of the run."""
    rows = _rows(session)
    width = max(len(k) for k, _ in rows)
    head = f"nexus train would train {session.model_name} (a dry run: nothing is trained or written)"
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows)])
