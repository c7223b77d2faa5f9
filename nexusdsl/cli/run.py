"""`nexus run` and the backend half of `nexus compile` (`--emit mlir-*`, `--target ...`).

    nexus compile tiny_lm.nx --emit mlir-linalg --size T=64 --dynamic B -o model.mlir
    nexus compile tiny_lm.nx --target iree-cpu -o model.vmfb
    nexus run tiny_lm.nx --backend iree-cpu --inputs batch.safetensors --check
    nexus run tiny_lm.nx --checkpoint runs/tiny --inputs batch.safetensors -o out.safetensors

Backend failures (no C++ compiler, no GPU, a tool error) print one `error:` line and exit 1.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from nexusdsl.cli.app import (
    app,
    check_hyper_names,
    check_seed,
    fail,
    out,
    parse_sets,
    render,
    report,
    utf8_flag,
)
from nexusdsl.lang.diagnostics import NexusError

TOLERANCE = 1e-4  # of the largest output magnitude, for --check


@dataclass
class Backend:
    """The backend settings `nexus compile` and `nexus run` share."""

    target: str = "torch"
    via: str = "mlir-torch"
    sizes: dict | None = None
    dynamic: list[str] | tuple[str, ...] = ()
    compile_mode: str | None = None
    cuda_arch: str | None = "sm_80"  # None: the visible GPU's (nexus run)


class RunBackend(str, Enum):
    eager = "eager"
    compile = "compile"
    iree_cpu = "iree-cpu"
    iree_cuda = "iree-cuda"


def compile_backend(program, graph, emit: str, output: Path | None, device: str,
                    settings: Backend) -> None:
    """`nexus compile` for MLIR emission and the non-default targets."""
    from nexusdsl.compiler.backends import BackendError

    try:
        if emit.startswith("mlir-"):
            return _emit_mlir(program, graph, emit, output, device, settings)
        if settings.target.startswith("iree-"):
            return _compile_vmfb(program, graph, output, settings)
        if settings.target == "torch.compile":
            return _try_torch_compile(program, graph, device, settings)
        fail(f"error: unknown target {settings.target}; choose torch, torch.compile, "
             "iree-cpu or iree-cuda")
    except NexusError as e:
        report(e)
    except BackendError as e:
        fail(f"error: {e}")


def _emit_mlir(program, graph, dialect, output, device, settings: Backend) -> None:
    from nexusdsl.compiler.backends import check_backend
    from nexusdsl.compiler.lower.mlir import to_mlir

    check_backend(graph, dialect, sources=program.sources)
    module = _lower(graph, device)
    text = to_mlir(module, dialect, _sizes(settings), settings.dynamic)
    if output is None:
        out.print(text, markup=False)
        return
    from nexusdsl.fsutil import atomic_write_text

    atomic_write_text(output, text)
    out.print(f"wrote {output}: {dialect}, {_shape_note(text)}", markup=False)


def _compile_vmfb(program, graph, output, settings: Backend) -> None:
    from nexusdsl.compiler.backends import check_backend
    from nexusdsl.compiler.lower.targets import IreeModule

    if output is None:
        fail(f"error: --target {settings.target} writes a vmfb: give -o FILE.vmfb")
    check_backend(graph, settings.target, settings.via, program.sources)
    iree = IreeModule(_lower(graph, "cpu"), settings.target, settings.via, _sizes(settings),
                      settings.dynamic, cuda_arch=settings.cuda_arch)
    artifact = iree.compile()
    from nexusdsl.fsutil import atomic_write_bytes

    atomic_write_bytes(output, artifact.vmfb)
    t = artifact.seconds
    out.print(f"wrote {output} ({len(artifact.vmfb):,} bytes): {_target_note(settings)}, "
              f"from {settings.via}; {_shape_note(artifact.mlir)}; export {t['export']:.1f} s, "
              f"IREE {t['iree']:.1f} s", markup=False)
    if settings.target == "iree-cuda":
        out.print(_cuda_note(settings.cuda_arch), markup=False)


def _target_note(settings: Backend) -> str:
    if settings.target == "iree-cpu":
        return "IREE llvm-cpu for this machine's CPU (host)"
    return f"IREE cuda for {settings.cuda_arch}"


def _cuda_note(arch: str) -> str:
    import torch

    default = ("sm_80 is the default (IREE 3.13 fails on sm_90); choose with --cuda-arch"
               if arch == "sm_80" else f"built for {arch} as asked")
    here = ("compiled only: this machine has no CUDA device to run it on"
            if not torch.cuda.is_available() else "run it with `nexus run --backend iree-cuda`")
    return f"note: {default}; {here}"


def _shape_note(mlir: str) -> str:
    inputs = [line.removeprefix("// input ") for line in mlir.splitlines()[:20]
              if line.startswith("// input ")]
    return "inputs " + ", ".join(inputs)


def _try_torch_compile(program, graph, device, settings: Backend) -> None:
    """`--target torch.compile`: compile, run once on random inputs, compare with eager."""
    from nexusdsl.compiler.backends import check_backend

    check_backend(graph, "torch.compile", sources=program.sources)
    module = _lower(graph, device)
    inputs = _random_inputs(graph, settings, device)
    diff, seconds = _compare_compiled(module, inputs, settings.compile_mode)
    mode = settings.compile_mode or "default"
    verdict = "ok" if diff <= TOLERANCE else "MISMATCH"
    out.print(f"torch.compile (Inductor, mode {mode}): compiled and ran in {seconds:.1f} s; "
              f"largest difference from eager {diff:.1e} of the output's magnitude "
              f"({verdict}, tolerance {TOLERANCE:g})", markup=False)
    if diff > TOLERANCE:  # a compiler that changes the numbers is not a success
        raise typer.Exit(1)


def _compare_compiled(module, inputs, mode):
    from nexusdsl.compiler.lower.compile import compile_module, run_compiled

    reference = _eval(module, inputs)  # before the module is compiled in place
    compiled = compile_module(module, mode=mode)
    start = time.perf_counter()
    result = _eval(compiled, inputs, run_compiled)
    return _relative_error(result, reference), time.perf_counter() - start


# ------------------------------------------------------------------ nexus run


@app.command("run")
def run_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to run (if several)"),
    sets: list[str] = typer.Option([], "--set", help="override a hyperparameter: NAME=VALUE"),
    opt: int = typer.Option(1, "--opt", "-O", min=0, max=2, help="optimisation level"),
    backend: RunBackend = typer.Option(RunBackend.eager, "--backend", help="what runs the model"),
    inputs: Optional[Path] = typer.Option(None, "--inputs",
                                          help="a .safetensors file with one tensor per input "
                                               "name (default: random inputs)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="write the outputs to this .safetensors file"),
    sizes: list[str] = typer.Option([], "--size", help="a symbolic axis's size: NAME=N"),
    seed: int = typer.Option(0, "--seed", help="seed of the weights and random inputs"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (eager and compile)"),
    compile_mode: Optional[str] = typer.Option(None, "--compile-mode", help="torch.compile mode"),
    via: str = typer.Option("mlir-torch", "--via", help="the MLIR dialect IREE compiles"),
    check: bool = typer.Option(False, "--check", help="compare with eager (exit 1 beyond 1e-4)"),
    repeat: int = typer.Option(3, "--repeat", min=1, help="timed calls after the first"),
    cuda_arch: Optional[str] = typer.Option(None, "--cuda-arch", help="GPU architecture "
                                            "--backend iree-cuda compiles for, e.g. sm_75 "
                                            "(default: the visible GPU's)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="run or step directory: run the trained "
                                                   "model (its weights and hyperparameters)"),
    text: Optional[str] = typer.Option(None, "--text", help="text for the model's one token "
                                       "input (bytes, or ids through its tokenizer) instead "
                                       "of random inputs"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="a directory with "
                                             "tokenizer.json, for --text (default: the one "
                                             "the input's ids modality names)"),
) -> None:
    """Run a model on inputs with a backend and print (or save) its outputs.

    Without --checkpoint the weights are freshly initialised from --seed; with it, they are a
    training run's, and the model is built with the hyperparameters it was trained with."""
    from nexusdsl.compiler.backends import BackendError

    settings = Backend(backend.value, via, parse_sets(sizes, "--size"), (), compile_mode,
                       _checked_arch(cuda_arch))
    _check_device(device)
    check_seed(seed)
    try:
        if checkpoint is None:
            program, graph = _load(file, model, sets, opt)
            weights = None
        else:
            program, graph, weights = _load_trained(file, model, sets, opt, checkpoint)
        tensors = (_read_inputs(graph, inputs, settings, device, seed) if text is None
                   else _text_inputs(program, graph, text, tokenizer, inputs, device))
        runner = _runner(program, graph, backend.value, settings, device, seed, weights)
        results, first, rest = _timed(runner, tensors, repeat, device)
        _show(graph, results, backend.value, first, rest)
        if output is not None:
            _write_outputs(graph, results, output)
        if check:
            _check(_lower(graph, device, seed, weights), tensors, results)
    except NexusError as e:
        report(e)
    except BackendError as e:
        fail(f"error: {e}")


def _load(file, model, sets, opt):
    import nexusdsl
    from nexusdsl.compiler.pipeline import optimize

    program = nexusdsl.load(file)
    hyper = parse_sets(sets)
    check_hyper_names(program, model, hyper)
    return program, optimize(program.elaborate(model, **hyper), opt)


def _load_trained(file, model, sets, opt, checkpoint):
    """(program, graph at `opt`, trained weights by state_dict name) of a checkpoint: the
    graph built as it was trained (recorded hyperparameters, or the pruned IR it carries).
    Weights keep their names at every optimisation level, so they load at any."""
    from nexusdsl.compiler.pipeline import optimize
    from nexusdsl.train.runs import load_run

    if sets:
        fail("error: --set cannot be used with --checkpoint: the trained weights fit the "
             "hyperparameters they were trained with")
    run = load_run(checkpoint, file, model=model)
    if run.config.prefix:
        fail(f"error: {checkpoint} was prompt-tuned (prefix = {run.config.prefix}); its prefix "
             "is applied by nexus eval and nexus generate, not by nexus run")
    name = run.model.graph.name
    base = run.model.graph if run.pruned else run.program.elaborate(name, **run.config.hyper)
    graph = optimize(base, opt)
    return run.program, graph, run.model.state_dict()


def _runner(program, graph, backend: str, settings: Backend, device: str, seed: int,
            weights=None):
    """A callable running the model on `backend`, after checking every op supports it."""
    from nexusdsl.compiler.backends import check_backend

    target = {"eager": "torch", "compile": "torch.compile"}.get(backend, backend)
    check_backend(graph, target, settings.via, program.sources)
    if backend.startswith("iree-"):
        from nexusdsl.compiler.lower.targets import IreeModule

        return IreeModule(_lower(graph, "cpu", seed, weights), backend, settings.via,
                          cuda_arch=settings.cuda_arch)
    module = _lower(graph, device, seed, weights).eval()
    if backend == "eager":
        return module
    from nexusdsl.compiler.lower.compile import compile_module, run_compiled

    compiled = compile_module(module, mode=settings.compile_mode)
    return lambda *xs: run_compiled(compiled, *xs)


def _timed(runner, tensors, repeat: int, device: str = "cpu"):
    """(the first call's results, its seconds, the median seconds of `repeat` more calls).
    A CUDA call returns before the GPU has finished: each clock is read after synchronising.
    The results are copied before the later calls: a CUDA graph (torch.compile's
    reduce-overhead mode) writes every call's outputs into the same memory."""
    import torch

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    with torch.no_grad():
        sync()
        start = time.perf_counter()
        results = _copied(runner(*tensors))
        sync()
        first = time.perf_counter() - start
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            runner(*tensors)
            sync()
            times.append(time.perf_counter() - start)
    return results, first, statistics.median(times)


def _copied(results):
    """Outputs (a tensor, or a dict of them) copied out of the memory the runner reuses."""
    if isinstance(results, dict):
        return {k: _copied(v) for k, v in results.items()}
    if isinstance(results, (tuple, list)):
        return type(results)(_copied(v) for v in results)
    return results.clone() if hasattr(results, "clone") else results


def _checked_arch(arch: str | None) -> str | None:
    """--cuda-arch: IREE's name of a GPU architecture, sm_ and its compute capability."""
    import re

    if arch is not None and not re.fullmatch(r"sm_\d{2,3}a?", arch):
        fail(f"error: --cuda-arch {arch}: give a GPU architecture such as sm_75, sm_80 or sm_86")
    return arch


def _check(module, tensors, results) -> None:
    reference = _eval(module, tensors)
    error = _relative_error(results, reference)
    verdict = "ok" if error <= TOLERANCE else "MISMATCH"
    out.print(f"check against eager: largest difference {error:.1e} of the output's "
              f"magnitude ({verdict}, tolerance {TOLERANCE:g})", markup=False)
    if error > TOLERANCE:
        raise typer.Exit(1)


def _show(graph, results, backend, first, rest) -> None:
    for name, t in _named(graph, results).items():
        t = t.detach().float().cpu()
        std = t.std(correction=0)  # of the values as they are (one value: 0, not nan)
        out.print(f"{name}: {tuple(t.shape)}  mean {t.mean():.4g}  std {std:.4g}  "
                  f"max|x| {t.abs().max():.4g}", markup=False)
    out.print(f"{backend}: first call {first * 1e3:.1f} ms (compilation included), then "
              f"{rest * 1e3:.2f} ms per call (median)", markup=False)


def _write_outputs(graph, results, path: Path) -> None:
    from safetensors.torch import save

    from nexusdsl.fsutil import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in _named(graph, results).items()}
    atomic_write_bytes(path, save(tensors))
    out.print(f"wrote {path}", markup=False)


# ------------------------------------------------------------------ inputs and helpers


def _read_inputs(graph, path: Path | None, settings: Backend, device: str, seed: int):
    """The model's inputs: from a safetensors file (one tensor per input name, checked
    against the declared types), or random at `--size` sizes."""
    if path is None:
        return _random_inputs(graph, settings, device, seed)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        found = load_file(str(path))
    except (OSError, SafetensorError) as err:
        fail(f"error: cannot read inputs from {path}: {err}")
    tensors = []
    for node in graph.inputs():
        if node.name not in found:
            fail(f"error: {path} has no tensor `{node.name}` (the model's inputs: "
                 f"{', '.join(n.name for n in graph.inputs())}; it has: {', '.join(found)})")
        tensors.append(_checked_input(node, found[node.name], path).to(device))
    return tensors


def _checked_input(node, tensor, path):
    import torch

    t = node.type
    if tensor.dim() != t.rank or any(a.size not in (None, n) for a, n in zip(t.axes, tensor.shape)):
        fail(f"error: input `{node.name}` in {path} has shape {tuple(tensor.shape)}, but the "
             f"model declares {t}")
    if tensor.numel() == 0:
        fail(f"error: input `{node.name}` in {path} is empty (shape {tuple(tensor.shape)}): "
             "every axis needs at least one element")
    if t.dtype == "i64":
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            fail(f"error: input `{node.name}` holds ids ({t}), but {path} has {tensor.dtype}")
        _check_ids(node, tensor, path)
        return tensor.to(torch.int64)
    return tensor.to(torch.float32)


def _check_ids(node, tensor, path) -> None:
    """Token ids inside the input's vocabulary (an embedding lookup past its table is an
    IndexError deep in torch otherwise)."""
    vocab = node.attrs.get("vocab")
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or (vocab and high >= vocab):
        bad = low if low < 0 else high
        limit = f"0 to {vocab - 1}" if vocab else "0 or more"
        fail(f"error: input `{node.name}` in {path} holds the id {bad}, outside its "
             f"vocabulary ({limit})")


def _text_inputs(program, graph, text: str, tokenizer: Path | None, inputs: Path | None,
                 device: str):
    """--text: the text encoded into the one token input (train/tokenizer.py)."""
    from nexusdsl.train.tokenizer import text_inputs

    if inputs is not None:
        fail("error: give --text or --inputs, not both")
    utf8_flag(text, "--text")
    try:
        return [t.to(device) for t in text_inputs(program, graph, text, tokenizer)]
    except NexusError as e:
        fail(render(e))


def _random_inputs(graph, settings: Backend, device: str, seed: int = 0):
    from nexusdsl.compiler.lower.mlir import example_inputs, input_shapes

    return example_inputs(input_shapes(graph, _sizes(settings)), device, seed)


def _sizes(settings: Backend) -> dict[str, int]:
    sizes = settings.sizes or {}
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            fail(f"error: --size {name}={value}: a size is a positive integer")
    return sizes


def _lower(graph, device: str, seed: int = 0, weights=None):
    """The eager module of `graph`: initialised from `seed`, or holding `weights`."""
    from nexusdsl.compiler.lower.fx import lower

    _check_device(device)
    module = lower(graph, device=device, seed=seed)
    if weights is not None:
        module.load_state_dict(weights)
    return module


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda"):
        fail(f"error: --device {device}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        fail("error: --device cuda was asked for, but no CUDA device is available")


def _eval(module, inputs, call=None):
    import torch

    with torch.no_grad():
        module.eval()
        return call(module, *inputs) if call else module(*inputs)


def _named(graph, results) -> dict:
    if isinstance(results, dict):
        return results
    return {next(iter(graph.outputs)): results}


def _relative_error(result, reference) -> float:
    """The largest difference over all outputs, relative to each output's largest magnitude."""
    worst = 0.0
    reference, result = _as_dict(reference), _as_dict(result)
    for name, ref in reference.items():
        got = result[name].to(ref.device, ref.dtype)
        scale = ref.abs().max().clamp_min(1e-12)
        worst = max(worst, float((got - ref).abs().max() / scale))
    return worst


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {"": value}
