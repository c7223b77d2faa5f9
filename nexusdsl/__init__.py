"""nexusdsl: a declarative graph-compiler DSL for modular neural networks.

    import nexusdsl
    program = nexusdsl.load("examples/tiny_lm.nx")      # parse and check (no torch import)
    model = nexusdsl.compile(program, dim=256)          # a torch.nn.Module
    logits = model(tokens)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nexusdsl.elaborate.program import Program, load, loads
from nexusdsl.lang.diagnostics import NexusError

__all__ = ["NexusError", "Program", "compile", "load", "loads", "train"]
__version__ = "0.1.0"

# "torch.compile", MLIR text and IREE: nexusdsl/compiler/lower/targets.py (docs/backends.md).
TARGETS = ("torch", "torch.compile", "iree-cpu", "iree-cuda", "mlir-torch", "mlir-linalg",
           "mlir-stablehlo", "mlir-tosa")


def compile(program_or_path: Program | str | Path, model: str | None = None, *,
            target: str = "torch", opt: int = 1, device: str = "cpu", dtype: str = "f32",
            seed: int | None = 0, options: dict[str, Any] | None = None, **hyper: Any):
    """Build a `torch.nn.Module` from a program (or a path to a `.nx` file).

    `hyper` overrides the model's hyperparameters; `seed` fixes the initial weights.
    `target` "torch.compile" compiles the module in place, "iree-cpu"/"iree-cuda" return a
    module run by IREE, "mlir-*" the MLIR text; `options` are the target's settings, e.g.
    `{"mode": "max-autotune"}` or `{"sizes": {"T": 64}, "dynamic": ["B"]}`."""
    program = program_or_path if isinstance(program_or_path, Program) else load(program_or_path)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    _check_device(device)
    from nexusdsl.compiler.lower.fx import lower
    from nexusdsl.compiler.pipeline import optimize, options_for

    passes = options_for(target, (options or {}).get("route"))
    graph = optimize(program.elaborate(model, **hyper), opt, options=passes)
    if target != "torch" or options:
        from nexusdsl.compiler.lower.targets import build

        return build(graph, target, device=device, dtype=dtype, seed=seed, options=options,
                     sources=program.sources)
    return lower(graph, device=device, dtype=dtype, seed=seed)


def _check_device(device: str) -> None:
    """A CUDA device asked for on a machine without one is the caller's mistake: say so plainly
    rather than let torch fail deep inside weight initialisation."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")


def train(program_or_path: Program | str | Path, model: str | None = None, **settings: Any):
    """Train a model of a `.nx` file as its `train` section says; keyword arguments override
    it (see `nexusdsl.train.api.train`). Returns a `Result` (`.model`, `.before`, `.after`)."""
    from nexusdsl.train.api import train as run

    return run(program_or_path, model, **settings)
