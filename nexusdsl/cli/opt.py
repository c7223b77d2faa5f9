"""The optimizer on the command line: the pass flags of `nexus compile` and `nexus prune`.

    nexus compile examples/mnn.nx -O 2 --emit passes --explain
    nexus compile examples/mnn.nx -O 2 --print-after axis-fusion --disable-pass linear-fusion
    nexus compile examples/tiny_lm.nx --sparsity 0.9 --emit ir
    nexus prune examples/tiny_lm.nx --checkpoint runs/TinyLM --amount 0.5 --structured

Mistakes (an unknown pass, a sparsity outside [0, 1), a missing checkpoint) print one error
and exit 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from nexusdsl.cli.app import app, fail, out, render
from nexusdsl.lang.diagnostics import NexusError


@dataclass
class PassFlags:
    opt: int = 1
    print_after: list[str] | None = None
    print_all: bool = False
    disable: list[str] | None = None
    explain: bool = False
    sparsity: float = 0.0
    target: str = "torch"
    route: str | None = None
    report: bool = False  # --emit passes: the report is the output


def optimize_for_cli(graph, flags: PassFlags):
    """Run the pipeline of `flags.opt` as the flags say; returns (graph, what each pass did).
    With `--explain`, the report with costs and choices is printed here."""
    from nexusdsl.compiler.pipeline import PassError, PassManager, options_for, passes_for

    if not 0.0 <= flags.sparsity < 1.0:
        fail(f"error: --sparsity must be at least 0 and below 1, got {flags.sparsity}")
    try:
        route = flags.route if flags.target.startswith("iree-") else None
        options = options_for(flags.target, route, sparsity=flags.sparsity)
        manager = PassManager(passes_for(flags.opt, options), options, disable=flags.disable or (),
                              print_after=flags.print_after or (), print_all=flags.print_all,
                              explain=flags.explain, emit=lambda text: out.print(text, markup=False))
    except PassError as e:
        fail(f"error: {e}")
    graph = manager.run(graph)
    if flags.explain and not flags.report:
        out.print(passes_text(manager.records, flags), markup=False)
    return graph, manager.records


def passes_text(records, flags: PassFlags) -> str:
    from nexusdsl.compiler.pipeline import passes_report

    return passes_report(records, explain=flags.explain)


# ---------------------------------------------------------------------------- nexus prune


@app.command("prune")
def prune_cmd(
    file: Path = typer.Argument(..., help="the .nx file the checkpoint was trained from"),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="run or step directory"),
    amount: float = typer.Option(0.5, "--amount", help="fraction of weights (or units) to remove"),
    structured: bool = typer.Option(False, "--structured",
                                    help="remove whole neurons, heads and experts, not single weights"),
    output: Optional[Path] = typer.Option(None, "--out", help="where to write (default CKPT-pruned)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the checkpoint's)"),
    batches: Optional[int] = typer.Option(None, "--batches", help="held-out batches to evaluate"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Prune a trained model by weight magnitude and write the smaller checkpoint.

    Held-out loss is reported before and after; the new checkpoint records the pruned IR
    (the widths), which `nexus eval` and `nexus generate` load."""
    import nexusdsl
    from nexusdsl.train import device as devices
    from nexusdsl.train.prune import prune_checkpoint

    if not 0.0 < amount < 1.0:
        fail(f"error: --amount must be between 0 and 1 (exclusive), got {amount}")
    if devices.problem(device) is not None:
        fail(f"error: {devices.problem(device)}")
    devices.use(device)
    target = output or checkpoint.with_name(checkpoint.name + "-pruned")
    try:
        result = prune_checkpoint(nexusdsl.load(file), checkpoint, amount, structured, target,
                                  model=model, batches=batches, device=device)
    except NexusError as e:
        fail(render(e))
    out.print(result.summary(), markup=False)
