"""nexusdsl: a declarative graph-compiler DSL for modular neural networks.

    import nexusdsl
    program = nexusdsl.load("examples/tiny_lm.nx")      # parse and check (no torch import)
    model = nexusdsl.compile(program, dim=256)          # a torch.nn.Module
    logits = model(tokens)
    run = nexusdsl.load_run("runs/tiny")                # a trained model: run.model, run.program
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nexusdsl.elaborate.program import Program, load, loads
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.version import __version__

__all__ = ["NexusError", "Program", "__version__", "compile", "load", "load_run", "loads",
           "train"]


def compile(program_or_path: Program | str | Path, model: str | None = None, *,
            target: str = "torch", opt: int = 1, device: str = "cpu", dtype: str | None = None,
            seed: int | None = 0, options: dict[str, Any] | None = None, **hyper: Any):
    """Build a `torch.nn.Module` from a program (or a path to a `.nx` file).

    `hyper` overrides the model's hyperparameters; `seed` fixes the initial weights.
    `target` "torch.compile" compiles the module in place, "iree-cpu"/"iree-cuda" return a
    module run by IREE, "mlir-*" the MLIR text; `options` are the target's settings, e.g.
    `{"mode": "max-autotune"}` or `{"sizes": {"T": 64}, "dynamic": ["B"]}`."""
    from nexusdsl.compiler.lower.program import compile_program

    program = program_or_path if isinstance(program_or_path, Program) else load(program_or_path)
    return compile_program(program, model, target=target, opt=opt, device=device, dtype=dtype,
                           seed=seed, options=options, **hyper)


def train(program_or_path: Program | str | Path, model: str | None = None, **settings: Any):
    """Train a model of a `.nx` file as its `train` section says; keyword arguments override
    it (see `nexusdsl.train.api.train`). Returns a `Result` (`.model`, `.before`, `.after`)."""
    from nexusdsl.train.api import train as run

    return run(program_or_path, model, **settings)


def load_run(run: str | Path, file: str | Path | None = None, *, model: str | None = None,
             device: str = "cpu"):
    """A trained model: the newest checkpoint of a run folder (`runs/tiny`), or a step
    directory, loaded into the model compiled as it was trained (the hyperparameters its
    train section and flags set, tied weights tied again), in evaluation mode. Returns a
    `Run`: `.model`, `.program`, `.step`, `.config`, `.metrics`, `.history()`. `file` is the
    `.nx` file, by default the one the checkpoint recorded (see `nexusdsl.train.runs`)."""
    from nexusdsl.train.runs import load_run as load_trained

    return load_trained(run, file, model=model, device=device)
