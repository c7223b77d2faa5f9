"""A program compiled for a target: elaborate, optimise, lower (`nexusdsl.compile`)."""

from __future__ import annotations

from typing import Any

from nexusdsl.compiler.lower.bound import fill_bound
from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.lower.targets import TARGETS, build
from nexusdsl.compiler.pipeline import optimize, options_for
from nexusdsl.elaborate.program import Program


def compile_program(program: Program, model: str | None = None, *, target: str = "torch",
                    opt: int = 1, device: str = "cpu", dtype: str | None = None,
                    seed: int | None = 0, options: dict[str, Any] | None = None, **hyper: Any):
    """Build a `torch.nn.Module` from a program: what `nexusdsl.compile` does.

    `hyper` overrides the model's hyperparameters; `seed` fixes the initial weights, and the
    file's `bind` sections fill theirs from checkpoints. `dtype` is the parameters' (f32, or
    the checkpoint's own when every bound tensor has one dtype: a bf16 checkpoint stays bf16).
    `target` "torch.compile" compiles the module in place, "iree-cpu"/"iree-cuda" return a
    module run by IREE, "mlir-*" the MLIR text; `options` are the target's settings, e.g.
    `{"mode": "max-autotune"}` or `{"sizes": {"T": 64}, "dynamic": ["B"]}`."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    _check_device(device)
    passes = options_for(target, (options or {}).get("route"), device=device)
    graph = optimize(program.elaborate(model, **hyper), opt, options=passes)
    binding = program.binding(model, **hyper)
    dtype = dtype or (binding.dtype if binding is not None else None) or "f32"
    fill = (lambda module: fill_bound(module, binding)) if binding is not None else None
    if target != "torch" or options:
        return build(graph, target, device=device, dtype=dtype, seed=seed, options=options,
                     sources=program.sources, fill=fill)
    module = lower(graph, device=device, dtype=dtype, seed=seed)
    if fill is not None:
        fill(module)
    return module


def _check_device(device: str) -> None:
    """A CUDA device asked for on a machine without one is the caller's mistake: say so plainly
    rather than let torch fail deep inside weight initialisation."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
