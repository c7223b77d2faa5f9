"""Using a trained model: `nexusdsl.load_run("runs/tiny")`.

    run = nexusdsl.load_run("runs/tiny")      # the newest checkpoint of a run folder
    run.model                                 # the compiled model with its trained weights
    run.program, run.step, run.config         # the .nx program, the step, the training setup
    run.history()                             # the rows of runs/tiny/metrics.jsonl

A checkpoint holds what the model was built with: its hyperparameters (the train section's and
the flags'), the IR of a pruned model, tied weights saved once under one name, and a prompt-
tuning prefix. Loading puts all of it back: the model is compiled as trained, every tied name
restored, the weights checked against the graph they were saved from. Nothing about the data
is needed, so a model loads where its training data is not.

The `.nx` file is the one given, or the one the checkpoint recorded (its absolute path, then
the path as it was given, from the working directory). It must still define the trained
model: a checkpoint loads only into a graph with the same IR hash, so comments and formatting
may change, the model may not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.lower.program import compile_program
from nexusdsl.elaborate.program import Program, load
from nexusdsl.elaborate.train_config import TrainConfig
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import lora, metrics
from nexusdsl.train.session import saved_config, stored_graph
from nexusdsl.train.trainee import trainee_for


@dataclass
class Run:
    """What `nexusdsl.load_run` returns."""

    model: torch.nn.Module  # the NexusModule (a Trainee holding it and its prefix, for prompt tuning)
    program: Program
    step: int
    config: TrainConfig  # the recorded training configuration; config.hyper built the model
    metrics: dict[str, float]  # held-out metrics saved with the checkpoint (empty mid-run)
    path: Path  # the step directory loaded
    pruned: bool = False  # built from the pruned IR the checkpoint carries (`nexus prune`)

    def history(self) -> list[dict[str, Any]]:
        """The run's metrics.jsonl rows up to this checkpoint's step (empty without one)."""
        run_folder = self.path.parent
        if not (run_folder / metrics.FILE).is_file():
            return []
        return [r for r in metrics.read(run_folder) if r["step"] <= self.step]


def load_run(path: str | Path, file: str | Path | None = None, *, model: str | None = None,
             device: str = "cpu") -> Run:
    """The model of a run folder's newest checkpoint (or of a step directory), with its
    trained weights, in evaluation mode. `file` is the `.nx` file (default: the one the
    checkpoint recorded); `model` names the model when the file's has been renamed."""
    checkpoint = ckpt.load(Path(path))
    program = load(file if file is not None else recorded_source(checkpoint))
    config = saved_config(checkpoint)
    name = model or checkpoint.state["model"]
    if name not in program.models:
        raise ckpt.CheckpointError(
            f"checkpoint {checkpoint.path} was saved from model {checkpoint.state['model']}; "
            f"{program.file} has no model of that name (it has "
            f"{', '.join(program.models) or 'none'})")
    module = trained_module(program, name, config, checkpoint, device)
    trainee = trainee_for(module, config)
    lora.check_base(trainee.base_sha256, checkpoint)
    ckpt.load_weights(trainee, checkpoint.model)
    trainee.eval()
    return Run(trainee if config.prefix else module, program, checkpoint.step, config,
               dict(checkpoint.state.get("metrics", {})), checkpoint.path,
               pruned=bool(checkpoint.state.get("ir")))


def recorded_source(checkpoint: ckpt.Checkpoint) -> Path:
    """The `.nx` file a checkpoint was trained from, as far as it can still be found."""
    source = checkpoint.state["source"]
    for candidate in (source.get("path"), source["file"]):
        if isinstance(candidate, str) and candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ckpt.CheckpointError(
        f"checkpoint {checkpoint.path} was trained from {source['file']}, which is not there "
        "any more: give the .nx file (`nexusdsl.load_run(RUN, file=...)`)")


def trained_module(program: Program, name: str, config: TrainConfig,
                   checkpoint: ckpt.Checkpoint, device: str = "cpu"):
    """The model compiled as it was trained (the recorded hyperparameters, or the pruned IR
    the checkpoint carries), checked to be the graph the weights were saved from. A model the
    recorded hyperparameters do not build is the checkpoint's mistake: one line naming it."""
    graph = stored_graph(checkpoint)
    try:
        module = (compile_program(program, name, seed=config.seed, device=device, **config.hyper)
                  if graph is None else lower(graph, device=device, seed=config.seed))
    except NexusError as err:
        first = err.diagnostics[0]
        if not first.span.line:
            raise
        raise ckpt.CheckpointError(
            f"checkpoint {checkpoint.path}: model {name} does not build with the "
            f"hyperparameters it recorded: {first.span.file}:{first.span.line}:"
            f"{first.span.col}: {first.message}") from None
    ckpt.check_compatible(checkpoint, module.graph.name, module.graph.content_hash(),
                          program.file)
    return module
