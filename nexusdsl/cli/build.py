"""`nexus check` and `nexus compile`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import NamedTuple, Optional

import typer

from nexusdsl.cli.app import (
    app,
    check_hyper_names,
    err,
    fail,
    out,
    parse_sets,
    report,
    summary_text,
)
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
    memory: bool = typer.Option(False, "--memory", help="print the memory a training step "
                                "needs per process (with --batch, --context), refuse if it "
                                "does not fit"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="--memory: batch size"),
    context: Optional[int] = typer.Option(None, "--context", min=1, help="--memory: tokens "
                                          "per row"),
    precision: str = typer.Option("fp32", "--precision", help="--memory: fp32, bf16 or fp16"),
    shard: int = typer.Option(1, "--shard", min=1, help="--memory: processes FSDP shards over"),
    checkpointed: bool = typer.Option(False, "--checkpoint", help="--memory: with activation "
                                      "checkpointing of every repeat step"),
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
    weights = output is not None and _output_kind(output, emit, target) == "weights"
    as_json = as_json or (output is not None and output.suffix.lower() == ".json"
                          and emit == Emit.summary)
    try:
        program = nexusdsl.load(file)
        check_hyper_names(program, model, hyper)
        graph, records = optimize_for_cli(program.elaborate(model, **hyper), flags)
    except NexusError as e:
        report(e)
    if memory:
        plan = MemoryFlags(batch, context, precision, shard, checkpointed)
        return _memory_plan(program, graph, plan, as_json)
    if target != "torch" or emit.value.startswith("mlir-"):
        from nexusdsl.cli.run import Backend, compile_backend

        settings = Backend(target, via, parse_sets(sizes, "--size"), dynamic, compile_mode,
                           cuda_arch)
        return compile_backend(program, graph, emit.value, output, device, settings)
    try:  # lowering refuses names it cannot compile and weights too big for the device
        if weights:
            return _write_weights(build_module(graph, device), output)
        binding = program.binding(model, **hyper)  # the parameters `bind` sections fill
        bound = set(binding.plan) if binding is not None else None
        text = passes_text(records, flags) if emit == Emit.passes else render_emit(
            graph, emit, as_json, device, bound)
    except NexusError as e:
        report(NexusError(e.diagnostics, program.sources))
    if output is None:
        out.print(text, markup=False)
        if emit == Emit.summary and not as_json:
            _train_section_note(program, graph.name, hyper, file)
        return
    from nexusdsl.fsutil import atomic_write_text

    atomic_write_text(output, text + "\n")
    out.print(f"wrote {output}", markup=False)


class MemoryFlags(NamedTuple):
    batch: Optional[int]
    context: Optional[int]
    precision: str
    shard: int
    checkpoint: bool


def _memory_plan(program, graph, flags: MemoryFlags, as_json: bool) -> None:
    """`--memory`: the plan's bytes, then a located error if this machine cannot hold them."""
    from nexusdsl.compiler.memory_plan import PRECISION_BYTES, format_plan, plan, too_big
    from nexusdsl.memory import available_bytes

    if flags.batch is None or flags.context is None:
        fail("error: --memory needs --batch and --context (the step's rows and tokens)")
    if flags.precision not in PRECISION_BYTES:
        fail(f"error: --precision must be fp32, bf16 or fp16, got {flags.precision}")
    p = plan(graph, flags.batch, flags.context, flags.precision, flags.shard, flags.checkpoint)
    if as_json:
        out.print(json.dumps(p.rows()), markup=False)
    else:
        out.print(format_plan(graph, p, flags.batch, flags.context, flags.precision,
                              flags.shard), markup=False)
    problem = too_big(graph, p, available_bytes(), program.model_ast(graph.name).span)
    if problem is not None:
        report(NexusError(problem.diagnostics, program.sources))


PICKLES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")  # what torch.save writes


def _output_kind(output: Path, emit: Emit, target: str) -> str:
    """What `-o` will hold, from its suffix: "weights" (.safetensors, the summary's model's
    initial weights) or "text"; a pickle suffix is refused, since nexusdsl never writes one
    (loading a pickle can run code) and the text written under it would not load."""
    suffix = output.suffix.lower()
    if suffix in PICKLES:
        fail(f"error: -o {output}: a {suffix} file is a Python pickle, which nexusdsl never "
             f"writes; -o {output.with_suffix('.safetensors')} writes the model's initial "
             "weights, a .txt or .json name its summary; a trained model is loaded with "
             "nexusdsl.load_run(RUN)")
    if suffix != ".safetensors" or target != "torch":
        return "text"
    if emit != Emit.summary:
        fail(f"error: -o {output}: --emit {emit.value} writes text; a .safetensors file holds "
             "the model's weights (without --emit)")
    return "weights"


def _write_weights(module, output: Path) -> None:
    """The module's initial weights as safetensors, each tied tensor once (the other names
    are listed in the file's metadata, as checkpoints list them)."""
    from safetensors.torch import save

    from nexusdsl.fsutil import atomic_write_bytes

    seen, tensors, tied = {}, {}, {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied[name] = seen[id(tensor)]
            continue
        seen[id(tensor)] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    metadata = {"tied": json.dumps(tied)} if tied else None
    atomic_write_bytes(output, save(tensors, metadata=metadata))
    count = sum(t.numel() for t in tensors.values())
    ties = f"; tied: {', '.join(f'{a} is {b}' for a, b in tied.items())}" if tied else ""
    out.print(f"wrote {output}: {len(tensors)} tensors, {count:,} initial weights (seed 0)"
              f"{ties}", markup=False)


def _train_section_note(program, name: str, hyper: dict, file: Path) -> None:
    """When the model's train section sets hyperparameters, `nexus train` trains another
    size than the one just shown: say which, and how to see the whole configuration."""
    from nexusdsl.compiler.summary import count_params

    try:
        section = program.train_config(name)
        names = [p.name for p in program.model_ast(name).params if p.type is None]
        trained = {k: v for k, (v, _) in section.items() if k in names}
        if not trained or trained.items() <= hyper.items():
            return
        params = count_params(program.elaborate(name, **trained))["total"]
    except NexusError:
        return  # `nexus train` reports the train section's own mistakes
    values = ", ".join(f"{k}={v}" for k, v in trained.items())
    err.print(f"note: the train section of {name} trains {values} ({params:,} parameters); "
              f"`nexus train {file} --dry-run` shows everything it would train", markup=False)


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
