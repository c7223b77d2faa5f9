"""The `nexus` command: check, compile (and, as they land, train, run, viz, fmt).

User mistakes print located diagnostics and exit with status 1, never a traceback."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from nexusdsl.lang.diagnostics import NexusError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="nexusdsl: compile, check and train modular neural networks from .nx files.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Emit(str, Enum):
    summary = "summary"
    ir = "ir"
    json = "json"
    fx = "fx"
    mlir_torch = "mlir-torch"  # MLIR through torch-mlir: nexusdsl/cli_run.py
    mlir_linalg = "mlir-linalg"
    mlir_stablehlo = "mlir-stablehlo"
    mlir_tosa = "mlir-tosa"
    passes = "passes"  # what each optimisation pass changed: nexusdsl/cli_opt.py


def fail(message: str) -> None:
    from nexusdsl.tools.highlight import print_message  # colour on a terminal, plain otherwise

    print_message(err, message)
    raise typer.Exit(1)


def parse_sets(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """`--set dim=256 --set act=gelu` -> {"dim": 256, "act": "gelu"}"""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            fail(f"error: {flag} expects NAME=VALUE, got {pair!r}")
        values[key.strip()] = parse_literal(raw.strip())
    return values


def parse_literal(raw: str) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    for cast in (int, float):
        try:
            return cast(raw.replace("_", ""))
        except ValueError:
            pass
    return raw


def report(error: NexusError) -> None:
    fail(error.render())


@app.command()
def check(files: list[Path] = typer.Argument(..., help=".nx files to check")) -> None:
    """Parse and check files: every mistake is reported with its location."""
    import nexusdsl
    from nexusdsl.tools.highlight import print_message

    failed = False
    for file in files:
        try:
            nexusdsl.load(file).check_data_paths()
            out.print(f"{file}: ok", markup=False)
        except NexusError as e:
            print_message(err, e.render())
            failed = True
    if failed:
        raise typer.Exit(1)


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
    from nexusdsl.cli_opt import PassFlags, optimize_for_cli, passes_text

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
        from nexusdsl.cli_run import Backend, compile_backend

        settings = Backend(target, via, parse_sets(sizes, "--size"), dynamic, compile_mode,
                           cuda_arch)
        return compile_backend(program, graph, emit.value, output, device, settings)
    text = passes_text(records, flags) if emit == Emit.passes else render_emit(graph, emit,
                                                                              as_json, device)
    if output is None:
        out.print(text, markup=False)
        return
    from nexusdsl.fsutil import atomic_write_text

    atomic_write_text(output, text + "\n")
    out.print(f"wrote {output}", markup=False)


def render_emit(graph, emit: Emit, as_json: bool, device: str) -> str:
    from nexusdsl.compiler.summary import summarize
    from nexusdsl.ir.printer import print_graph

    if emit == Emit.ir:
        return print_graph(graph)
    if emit == Emit.json:
        return graph.to_json(indent=2)
    module = build_module(graph, device)
    if emit == Emit.fx:
        return module.fx.code.strip()
    info = summarize(graph)
    return json.dumps(info, indent=2) if as_json else summary_text(info)


def build_module(graph, device: str):
    from nexusdsl.compiler.lower.fx import lower

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("error: --device cuda was asked for, but no CUDA device is available")
    return lower(graph, device=device)


def summary_text(info: dict) -> str:
    table = Table(title=f"model {info['model']}", show_header=False, box=None)
    for name, t in info["inputs"].items():
        table.add_row("input", name, t)
    for name, t in info["outputs"].items():
        table.add_row("output", name, t)
    p = info["params"]
    table.add_row("nodes", str(info["nodes"]), "")
    table.add_row("params", f"{p['total']:,}", f"trainable {p['trainable']:,}, frozen {p['frozen']:,}")
    table.add_row("FLOPs/token", f"{info['flops_per_token']:,}", "forward, batch 1, context 256")
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text().rstrip()


import nexusdsl.cli_opt  # noqa: E402,F401  (registers `nexus prune`)
import nexusdsl.cli_run  # noqa: E402,F401  (registers `nexus run`)
import nexusdsl.cli_tools  # noqa: E402,F401  (registers `nexus fmt`, `viz`, `lsp`, `summary`)
import nexusdsl.cli_train  # noqa: E402,F401  (registers `nexus train`, `eval`, `generate`)


def _usage_errors():
    """The exception class of bad flags: typer's own copy of click's, or click's."""
    try:
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError
    return UsageError


def main() -> None:
    from nexusdsl.allocator import keep_freed_memory

    keep_freed_memory()  # steps reuse freed blocks instead of faulting in fresh pages
    from nexusdsl.fsutil import UnwritablePath

    _usage_errors().exit_code = 1  # a mistaken flag is a user mistake: status 1, like the rest
    try:
        app()
    except (UnwritablePath, PermissionError) as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    # `python -m nexusdsl.cli` runs this file as __main__, a second copy of the module: the
    # commands of the cli_* modules register on nexusdsl.cli's `app`, so run that one.
    from nexusdsl.cli import main as registered_main

    registered_main()
