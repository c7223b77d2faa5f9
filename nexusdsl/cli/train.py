"""`nexus train`, `nexus eval`, `nexus generate` and `nexus plot`.

    nexus train examples/tiny_lm.nx --steps 500 --out runs/tiny
    nexus train examples/tiny_lm.nx --out runs/tiny --resume --steps 1000
    nexus train examples/tiny_lm.nx --dry-run
    torchrun --nproc_per_node 2 -m nexusdsl.cli train examples/tiny_lm.nx --out runs/ddp
    nexus eval examples/tiny_lm.nx --checkpoint runs/tiny
    nexus generate examples/tiny_lm.nx --checkpoint runs/tiny --prompt "The "
    nexus plot runs/tiny runs/wide -o curves.png

Mistakes (a missing data file, a model that does not fit the objective, a checkpoint of
another model) print one located error and exit 1; nothing already saved is touched. Ctrl-C
or SIGTERM while training saves the step reached and exits 130 or 143, saying how to resume.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from nexusdsl.cli.app import (
    app,
    check_finite,
    check_seed,
    did_you_mean,
    err,
    fail,
    out,
    parse_sets,
    render,
    utf8_flag,
)
from nexusdsl.lang.diagnostics import NexusError


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


@app.command("train")
def train_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to train (if several)"),
    sets: list[str] = typer.Option([], "--set", help="override a setting or hyperparameter: NAME=VALUE"),
    data: Optional[str] = typer.Option(None, "--data", help="a text file, a folder of them, or "
                                       "`digits` (scikit-learn's 8x8 digits; default: the "
                                       "file's `data`)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="train to this step (with "
                                        "--resume too)"),
    batch: Optional[int] = typer.Option(None, "--batch", help="examples per step (all processes)"),
    context: Optional[int] = typer.Option(None, "--context", help="tokens per example"),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate"),
    seconds: Optional[float] = typer.Option(None, "--time", help="stop after this many seconds "
                                            "of training in this run"),
    output: Optional[Path] = typer.Option(None, "--out", help="run folder: checkpoints and "
                                          "metrics.jsonl (default runs/MODEL)"),
    resume: bool = typer.Option(False, "--resume", help="continue the newest checkpoint in --out"),
    until: Optional[int] = typer.Option(None, "--until", help="stop at this step (schedule unchanged)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of weights, data order and sampling"),
    shard: bool = typer.Option(False, "--shard", help="under torchrun: FSDP instead of DDP"),
    precision: Optional[str] = typer.Option(None, "--precision", help="the forward pass's "
                                            "precision: fp32, bf16 or fp16 (float32 weights "
                                            "either way)"),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", help="micro-batches per "
                                             "optimizer step (--batch split among them)"),
    compile_model: bool = typer.Option(False, "--compile", help="train the model through "
                                       "torch.compile"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or progress lines"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be trained (model "
                                 "size, data, steps, schedule), train nothing"),
) -> None:
    """Train a model on its `train` section's data; flags override the section.

    On a terminal a progress bar shows loss, throughput, MFU and ETA; otherwise one line per
    `log_every` steps. The run folder keeps checkpoints and metrics.jsonl (`nexus plot`).
    Ctrl-C or SIGTERM finishes the step, saves it, and exits 130 or 143."""
    from nexusdsl.train.interrupts import Interrupted, deferred

    step_flags = {"precision": precision, "accumulate": accumulate,
                  "compile": True if compile_model else None}
    with deferred(not dry_run):  # from the start: see train/interrupts.py
        try:
            result = _train(file, model, sets, data, steps, batch, context, lr, seconds, output,
                            resume, until, seed, shard, device, quiet, dry_run, step_flags)
        except Interrupted as stop:
            _interrupted(stop)
    if result is not None and _rank() == 0:
        _summary(result)


def _train(file, model, sets, data, steps, batch, context, lr, seconds, output, resume, until,
           seed, shard, device, quiet, dry_run, step_flags):
    import nexusdsl
    from nexusdsl.train.api import plan, train

    settings = parse_sets(sets)
    flags = {"data": data, "steps": steps, "batch": batch, "context": context, "lr": lr,
             "seed": seed, "time": seconds, **step_flags}
    for key in set(settings) & set(flags):  # `--set time=20` is `--time 20`
        if flags[key] is not None:
            fail(f"error: {key} is given twice, as --{key} and as --set {key}=...")
        flags[key] = settings.pop(key)
    try:
        program = nexusdsl.load(file)
        name = program.model_ast(model).name
        _check_set_names(program, name, settings)
        run_folder = output or Path("runs") / name
        if dry_run:
            return _describe(plan(program, name, **flags, out=run_folder, resume=resume,
                                  until=until, device=device, **settings))
        return train(program, name, **flags, out=run_folder, resume=resume, until=until,
                     shard=shard, device=device, progress=not quiet, console=out, **settings)
    except NexusError as e:
        fail(render(e))


def _check_set_names(program, model: str, settings: dict) -> None:
    """`--set NAME=...` names a training setting or a hyperparameter; a typo gets a
    suggestion."""
    from nexusdsl.elaborate.train_config import SETTINGS

    hyper = [p.name for p in program.model_ast(model).params if p.type is None]
    for key in settings:
        if key not in SETTINGS and key not in hyper and key not in ("lr", "reward"):
            fail(f"error: --set {key}=...: `{key}` is neither a training setting nor a "
                 f"hyperparameter of {model}{did_you_mean(key, [*hyper, *SETTINGS])} "
                 f"(hyperparameters: {', '.join(hyper) or 'none'}; settings: "
                 f"{', '.join(sorted(SETTINGS))})")


def _describe(session) -> None:
    from nexusdsl.train.describe import describe

    out.print(describe(session), markup=False)


def _interrupted(stop) -> None:
    """Where the interrupted run is, and the command that continues it; exit 130 or 143."""
    from nexusdsl.train.interrupts import signal_name

    if _rank() == 0:
        what = f"interrupted by {signal_name(stop.signum)}"
        if stop.checkpoint is None:
            err.print(f"{what} before the first step: nothing to save", markup=False)
        else:
            err.print(f"{what} at step {stop.step}: saved {stop.checkpoint}", markup=False)
            err.print(f"continue with: {resume_command()}", markup=False)
    raise typer.Exit(stop.exit_status)


def resume_command() -> str:
    """This command line with --resume added (the same flags: the same run, continued)."""
    args = sys.argv[1:]
    if "--resume" not in args:
        args = [*args, "--resume"]
    return "nexus " + shlex.join(args)


def _summary(result) -> None:
    key = next((k for k in ("bpb", "accuracy", "retrieval_accuracy", "reward")
                if k in result.after), "loss")
    label = {"bpb": "held-out bits per byte"}.get(key, f"held-out {key.replace('_', ' ')}")
    if result.steps == result.start_step and result.start_step:
        out.print(f"{label}: {result.after[key]:.3f} at step {result.steps}; nothing to train: "
                  "the run is already there (give a larger --steps to train further)",
                  markup=False)
        return
    out.print(f"{label}: {result.before[key]:.3f} before, {result.after[key]:.3f} after "
              f"{result.steps} steps", markup=False)


@app.command("eval")
def eval_cmd(
    file: Path = typer.Argument(..., help="the .nx file the checkpoint was trained from"),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="run or step directory"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the checkpoint's)"),
    data: Optional[str] = typer.Option(None, "--data", help="evaluate on this text instead"),
    batch: Optional[int] = typer.Option(None, "--batch", help="examples per batch"),
    context: Optional[int] = typer.Option(None, "--context", help="tokens per example"),
    batches: Optional[int] = typer.Option(None, "--batches", help="at most this many batches"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Held-out loss of a checkpoint (bits per byte for byte models)."""
    from nexusdsl.train.loop import evaluate
    from nexusdsl.train.session import check_memory
    from nexusdsl.train.threads import threads_for

    session = _session(file, model, checkpoint, {"data": data, "batch": batch,
                                                 "context": context, "eval_batches": batches},
                       _device(device))
    try:
        check_memory(session, training=False)
    except NexusError as e:
        fail(render(e))
    with threads_for(0):
        metrics = evaluate(session)
    if as_json:
        out.print(json.dumps({"step": session.step, **metrics}), markup=False)
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        out.print(f"step {session.step}, {session.data.name}: {shown}", markup=False)


@app.command("generate")
def generate_cmd(
    file: Path = typer.Argument(..., help="the .nx file (the one the checkpoint was trained "
                                "from)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="run or step "
                                              "directory (default: the file's own weights, "
                                              "those its bind sections read)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="text to continue"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="a UTF-8 file of prompts, "
                                           "one per line, continued in one batch"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n", min=1,
                                             help="tokens to generate (bytes for a byte model)"),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", min=1, help="stop once the "
                                            "new text holds this many bytes (default 200 "
                                            "when --max-tokens is not given)"),
    context: Optional[int] = typer.Option(None, "--context", min=1, help="the most tokens the "
                                          "model sees at once (default: the run's training "
                                          "context; without --checkpoint, all)"),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="0: greedy"),
    top_k: int = typer.Option(0, "--top-k", min=0, help="sample among the k likeliest tokens"),
    top_p: float = typer.Option(1.0, "--top-p", help="sample among the likeliest tokens "
                                "whose probabilities reach p, in (0, 1]"),
    stop: list[str] = typer.Option([], "--stop", help="a token that ends a prompt's "
                                   "continuation (text of one token)"),
    seed: int = typer.Option(0, "--seed", help="sampling seed"),
    compile_step: bool = typer.Option(False, "--compile", help="run the one-token step under "
                                      "torch.compile"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the checkpoint's)"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="a directory with the "
                                             "model's tokenizer.json (default: the one its "
                                             "ids modality names)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Continue prompts with a byte model, or a model of ids through its tokenizer.

    A model whose every op decodes step by step keeps a cache and feeds one token at a time;
    any other runs the whole sequence again for each token and says which op makes it.
    Several prompts (--prompts) run as one batch, each printed as a JSON string on its line.
    With a tokenizer the prompt is encoded, and generation stops at the end-of-text id.
    Python's model.generate, what decodes and what recomputes: docs/language.md, Generation."""
    from nexusdsl.train.threads import threads_for

    check_seed(seed)
    check_finite(temperature, "--temperature")
    check_finite(top_p, "--top-p")
    if not 0 < top_p <= 1:
        fail(f"error: --top-p must be in (0, 1] (1: every token), got {top_p}")
    texts = _prompts(prompt, prompts)
    for text in stop:
        utf8_flag(text, "--stop")
    trained, graph, program, run_context, notes = _generator(file, model, checkpoint,
                                                             _device(device))
    try:  # a model that does not fit, a tokenizer that does not, weights not finite numbers
        from nexusdsl.train.generate import generate_texts
        from nexusdsl.train.tokenizer import generation_tokenizer

        words = generation_tokenizer(program, graph, tokenizer)
        notes += _recomputing(trained, graph, compile_step)
        with threads_for(0):  # the notes once everything is checked: a mistake is one line
            results = generate_texts(trained, graph, words, texts, max_tokens=max_tokens,
                                     max_bytes=max_bytes, context=context or run_context,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     stop=stop, seed=seed, compile=compile_step,
                                     started=lambda: [err.print(n, markup=False) for n in notes])
    except NexusError as e:
        fail(render(e))
    if prompts is None:
        out.print(results[0], markup=False)
    else:
        for text in results:
            out.print(json.dumps(text, ensure_ascii=False), markup=False)


def _prompts(prompt: Optional[str], path: Optional[Path]) -> list[str]:
    """--prompt's text, or --prompts' lines (neither: one empty prompt)."""
    if prompt is not None and path is not None:
        fail("error: give --prompt or --prompts, not both")
    if path is None:
        text = prompt or ""
        utf8_flag(text, "--prompt")
        return [text]
    try:
        data = path.read_bytes()
    except OSError as e:
        fail(f"error: --prompts {path}: {e.strerror or e}")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        fail(f"error: --prompts {path} is not UTF-8 text (line {line})")
    if not lines:
        fail(f"error: --prompts {path} holds no prompts (one per line)")
    return lines


def _generator(file: Path, model: Optional[str], checkpoint: Optional[Path],
               device: str = "cpu"):
    """(the model to sample from, its graph, the program, the run's context): a checkpoint's
    trained model, or the file's own (its bound weights; freshly initialised ones said on
    stderr), on `device`."""
    import nexusdsl

    if checkpoint is not None:
        session = _session(file, model, checkpoint, {}, device)
        return (session.trainee, session.module.graph, session.program, session.config.context,
                [])
    try:
        program = nexusdsl.load(file)
        module = nexusdsl.compile(program, model, device=device)
        fresh = program.binding(model) is None
    except NexusError as e:
        fail(render(e))
    notes = [f"note: no --checkpoint, and {file} binds no weights: generating from freshly "
             "initialised ones (seed 0)"] if fresh else []
    return module, module.graph, program, None, notes


def _recomputing(trained, graph, compile_step: bool) -> list[str]:
    """A note when every token runs the whole sequence again, saying why."""
    from nexusdsl.compiler.lower.generate import GenerationError
    from nexusdsl.train.generate import recompute_note

    try:
        reason = recompute_note(trained)
    except GenerationError:
        return []  # not a model generate can sample from: said by its checks
    if reason is None:
        return []
    also = "; --compile has no one-token step to compile" if compile_step else ""
    return [f"note: {graph.name} recomputes the whole sequence for every token: {reason}{also}"]


def _session(file: Path, model: Optional[str], checkpoint: Path, overrides: dict,
             device: str = "cpu"):
    import nexusdsl
    from nexusdsl.train.session import from_checkpoint

    try:
        return from_checkpoint(nexusdsl.load(file), model, checkpoint, overrides, device)
    except NexusError as e:
        fail(render(e))


def _device(device: str) -> str:
    """--device checked (one error line) and made the current one, with TF32 matmuls."""
    from nexusdsl.train import device as devices

    why = devices.problem(device)
    if why is not None:
        fail(f"error: {why}")
    devices.use(device)
    return device




@app.command("plot")
def plot_cmd(
    runs: list[Path] = typer.Argument(..., help="run folders (the --out of nexus train)"),
    output: Path = typer.Option(Path("curves.png"), "-o", "--output",
                                help="picture to write: .png, .svg or .pdf"),
) -> None:
    """Draw the training loss and held-out curves of one or several runs (their metrics.jsonl)."""
    from nexusdsl.train.plot import plot

    try:
        plot(runs, output)
    except NexusError as e:
        fail(render(e))
    out.print(f"wrote {output}", markup=False)
