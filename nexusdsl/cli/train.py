"""`nexus train`, `nexus eval` and `nexus generate`.

    nexus train examples/tiny_lm.nx --steps 500 --out runs/tiny
    nexus train examples/tiny_lm.nx --out runs/tiny --resume --steps 1000
    torchrun --nproc_per_node 2 -m nexusdsl.cli train examples/tiny_lm.nx --out runs/ddp
    nexus eval examples/tiny_lm.nx --checkpoint runs/tiny
    nexus generate examples/tiny_lm.nx --checkpoint runs/tiny --prompt "The "

Mistakes (a missing data file, a model that does not fit the objective, a checkpoint of
another model) print one located error and exit 1; nothing already saved is touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from nexusdsl.cli.app import app, check_finite, check_seed, fail, out, parse_sets, render, utf8_flag
from nexusdsl.lang.diagnostics import NexusError


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


@app.command("train")
def train_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to train (if several)"),
    sets: list[str] = typer.Option([], "--set", help="override a setting or hyperparameter: NAME=VALUE"),
    data: Optional[str] = typer.Option(None, "--data", help="text file or folder (default: the file's `data`)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="optimizer steps"),
    batch: Optional[int] = typer.Option(None, "--batch", help="examples per step (all processes)"),
    context: Optional[int] = typer.Option(None, "--context", help="tokens per example"),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate"),
    seconds: Optional[float] = typer.Option(None, "--time", help="stop after this many seconds"),
    output: Optional[Path] = typer.Option(None, "--out", help="checkpoint directory (default runs/MODEL)"),
    resume: bool = typer.Option(False, "--resume", help="continue the newest checkpoint in --out"),
    until: Optional[int] = typer.Option(None, "--until", help="stop at this step (schedule unchanged)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of weights, data order and sampling"),
    shard: bool = typer.Option(False, "--shard", help="under torchrun: FSDP instead of DDP"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Train a model on its `train` section's data; flags override the section."""
    import nexusdsl
    from nexusdsl.train.api import train

    settings = parse_sets(sets)
    flags = {"data": data, "steps": steps, "batch": batch, "context": context, "lr": lr,
             "seed": seed, "time": seconds}
    for key in set(settings) & set(flags):  # `--set time=20` is `--time 20`
        if flags[key] is not None:
            fail(f"error: {key} is given twice, as --{key} and as --set {key}=...")
        flags[key] = settings.pop(key)
    try:
        program = nexusdsl.load(file)
        name = program.model_ast(model).name
        result = train(program, name, **flags, out=output or Path("runs") / name,
                       resume=resume, until=until, shard=shard, device=device, progress=not quiet,
                       console=out, **settings)
    except NexusError as e:
        fail(render(e))
    if _rank() == 0:
        _summary(result)


def _summary(result) -> None:
    key = next((k for k in ("bpb", "accuracy", "retrieval_accuracy", "reward")
                if k in result.after), "loss")
    label = {"bpb": "held-out bits per byte"}.get(key, f"held-out {key.replace('_', ' ')}")
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
) -> None:
    """Held-out loss of a checkpoint (bits per byte for byte models)."""
    from nexusdsl.train.loop import evaluate
    from nexusdsl.train.session import check_memory
    from nexusdsl.train.threads import threads_for

    session = _session(file, model, checkpoint, {"data": data, "batch": batch,
                                                 "context": context, "eval_batches": batches})
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
    file: Path = typer.Argument(..., help="the .nx file the checkpoint was trained from"),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="run or step directory"),
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue"),
    max_bytes: int = typer.Option(200, "--max-bytes", min=1, help="bytes to generate"),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="0: greedy"),
    top_k: int = typer.Option(0, "--top-k", min=0, help="sample among the k likeliest bytes"),
    seed: int = typer.Option(0, "--seed", help="sampling seed"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the checkpoint's)"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="a directory with the "
                                             "model's tokenizer.json (default: the one its "
                                             "ids modality names)"),
) -> None:
    """Continue a prompt with a trained byte model, or a model of ids with its tokenizer.

    With a tokenizer (the one its ids modality names, or --tokenizer), the prompt is encoded,
    ids are sampled until the text holds --max-bytes bytes or the end-of-text id comes, and
    the text is decoded."""
    from nexusdsl.train.generate import generate_text
    from nexusdsl.train.threads import threads_for
    from nexusdsl.train.tokenizer import generation_tokenizer

    check_seed(seed)
    check_finite(temperature, "--temperature")
    utf8_flag(prompt, "--prompt")
    session = _session(file, model, checkpoint, {})
    graph = session.module.graph
    try:  # a model that does not fit, a tokenizer that does not, weights not finite numbers
        words = generation_tokenizer(session.program, graph, tokenizer)
        with threads_for(0):
            text = generate_text(session.trainee, graph, words, prompt, max_bytes,
                                 session.config.context, temperature, top_k, seed)
    except NexusError as e:
        fail(render(e))
    out.print(text, markup=False)


def _session(file: Path, model: Optional[str], checkpoint: Path, overrides: dict):
    import nexusdsl
    from nexusdsl.train.session import from_checkpoint

    try:
        return from_checkpoint(nexusdsl.load(file), model, checkpoint, overrides)
    except NexusError as e:
        fail(render(e))


