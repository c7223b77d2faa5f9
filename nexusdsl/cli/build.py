"""`nexus check` and `nexus compile`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from nexusdsl.cli.app import app, err, fail, out, parse_sets, report, summary_text
from nexusdsl.lang.diagnostics import NexusError


class Emit(str, Enum):
    summary = "summary"
    ir = "ir"
    json = "json"
    fx = "fx"
    mlir_torch = "mlir-torch"  # MLIR through torch-mlir: nexusdsl/cli/run.py
    mlir_linalg = "mlir-linalg"
    mlir_stablehlo = "mlir-stablehlo"
    mlir_tosa = "mlir-tosa"
    passes = "passes"  # what each optimisation pass changed: nexusdsl/cli/opt.py


@app.command()
def check(files: list[Path] = typer.Argument(..., help=".nx files to check")) -> None:
    """Parse and check files: every mistake is reported with its location."""
    import nexusdsl
    from nexusdsl.tools.highlight import print_message

    failed = False
    for file in files:
        try:
            program = nexusdsl.load(file)
            program.check_data_paths()
        except NexusError as e:
            print_message(err, e.render())
            failed = True
            continue
        for warning in _memory_warnings(program):
            print_message(err, warning.render())
        out.print(f"{file}: ok", markup=False)
    if failed:
        raise typer.Exit(1)


def _memory_warnings(program) -> list[NexusError]:
    """Models whose weights (f32, default hyperparameters) do not fit in this machine's memory
    now: a warning, not an error, since the file may be meant for a larger machine;
    `nexus compile` refuses to build them."""
    from nexusdsl.compiler.lower.footprint import too_big
    from nexusdsl.memory import available_bytes

    available = available_bytes()
    found = (too_big(program.elaborate(name), "f32", available, "warning")
             for name in program.models)
    return [NexusError(w.diagnostics, program.sources) for w in found if w is not None]


COMPILE_TARGETS = ("torch", "torch.compile", "iree-cpu", "iree-cuda")


@app.command("compile")
def compile_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to build (if several)"),
    sets: list[str] = typer.Option([], "--set", help="override a hyperparameter: NAME=VALUE"),
    opt: int = typer.Option(1, "--opt", "-O", min=0, max=2, help="optimisation level"),
    emit: Emit = typer.Option(Emit.summary, "--emit", help="what to produce"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write to this file"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or meta (no weights allocated)"),
    target: str = typer.Option("torch", "--target",
                               help="torch, torch.compile, or iree-cpu / iree-cuda (-o model.vmfb)"),
    via: str = typer.Option("mlir-torch", "--via", help="the MLIR dialect IREE compiles"),
    sizes: list[str] = typer.Option([], "--size", help="a symbolic axis's size for MLIR: NAME=N"),
    dynamic: list[str] = typer.Option([], "--dynamic", help="keep this symbolic axis dynamic"),
    compile_mode: Optional[str] = typer.Option(None, "--compile-mode", help="torch.compile mode"),
    cuda_arch: str = typer.Option("sm_80", "--cuda-arch", help="GPU of --target iree-cuda"),
    print_after: list[str] = typer.Option([], "--print-after", help="print the IR after a pass"),
    print_all: bool = typer.Option(False, "--print-ir-after-all", help="the IR after every pass"),
    disable: list[str] = typer.Option([], "--disable-pass", help="skip this pass"),
    explain: bool = typer.Option(False, "--explain", help="print cost estimates and choices"),
    sparsity: float = typer.Option(0.0, "--sparsity", help="zero this share of MLP activations"),
) -> None:
    """Compile a model: check shapes, optimise, and build its torch module (or MLIR, a vmfb)."""
    import nexusdsl
    from nexusdsl.cli.opt import PassFlags, optimize_for_cli, passes_text

    if target not in COMPILE_TARGETS:
        fail(f"error: unknown target {target}; choose {', '.join(COMPILE_TARGETS[:-1])} or "
             f"{COMPILE_TARGETS[-1]}")
    hyper = parse_sets(sets)
    flags = PassFlags(opt, print_after, print_all, disable, explain, sparsity, target, via,
                      report=emit == Emit.passes)
    try:
        program = nexusdsl.load(file)
        graph, records = optimize_for_cli(program.elaborate(model, **hyper), flags)
    except NexusError as e:
        report(e)
    if target != "torch" or emit.value.startswith("mlir-"):
        from nexusdsl.cli.run import Backend, compile_backend

        settings = Backend(target, via, parse_sets(sizes, "--size"), dynamic, compile_mode,
                           cuda_arch)
        return compile_backend(program, graph, emit.value, output, device, settings)
    try:  # lowering refuses names it cannot compile and weights too big for the device
        binding = program.binding(model, **hyper)  # the parameters `bind` sections fill
        bound = set(binding.plan) if binding is not None else None
        text = passes_text(records, flags) if emit == Emit.passes else render_emit(
            graph, emit, as_json, device, bound)
    except NexusError as e:
        report(NexusError(e.diagnostics, program.sources))
    if output is None:
        out.print(text, markup=False)
        return
    from nexusdsl.fsutil import atomic_write_text

    atomic_write_text(output, text + "\n")
    out.print(f"wrote {output}", markup=False)


def render_emit(graph, emit: Emit, as_json: bool, device: str, bound: set[str] | None = None) -> str:
    from nexusdsl.compiler.summary import summarize
    from nexusdsl.ir.printer import print_graph

    if emit == Emit.ir:
        return print_graph(graph)
    if emit == Emit.json:
        return graph.to_json(indent=2)
    module = build_module(graph, device)
    if emit == Emit.fx:
        return module.fx.code.strip()
    info = summarize(graph, bound=bound)
    return json.dumps(info, indent=2) if as_json else summary_text(info)


def build_module(graph, device: str):
    from nexusdsl.compiler.lower.fx import lower

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("error: --device cuda was asked for, but no CUDA device is available")
    return lower(graph, device=device)
