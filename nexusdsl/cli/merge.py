"""`nexus merge`: a LoRA run's adapters folded into its base weights.

    nexus merge model.nx --checkpoint runs/tiny-lora -o runs/tiny-merged
    nexus eval model.nx --checkpoint runs/tiny-merged     # the plain, adapted model

Mistakes (a checkpoint that is not a LoRA run, base weights that changed since it was
trained, an output that already holds a checkpoint) are one error, exit status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nexusdsl.cli.app import app, fail, out, render
from nexusdsl.lang.diagnostics import NexusError


@app.command("merge")
def merge_cmd(
    file: Path = typer.Argument(..., help="the .nx file the LoRA run was trained from"),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="LoRA run or step directory"),
    output: Path = typer.Option(..., "--out", "-o", help="run folder to write (or a "
                                ".safetensors file)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the "
                                        "checkpoint's)"),
) -> None:
    """Fold a LoRA run's adapters into its base weights (W + alpha / rank B A).

    The result is a plain checkpoint that `nexus eval` and `nexusdsl.load_run` read like any
    other."""
    from nexusdsl.train.lora_files import merge_run

    try:
        written = merge_run(checkpoint, output, file, model)
    except NexusError as e:
        fail(render(e))
    out.print(f"merged the adapters of {checkpoint} into {written}", markup=False)


def export_peft(file: Path, checkpoint: Optional[Path], folder: Path,
                model: Optional[str]) -> None:
    """`nexus export FILE --checkpoint RUN --peft OUT` (the command is cli/weights.py's):
    a LoRA run as adapter_config.json + adapter_model.safetensors for `peft`."""
    from nexusdsl.train.lora_files import PEFT_CONFIG, PEFT_WEIGHTS
    from nexusdsl.train.lora_files import export_peft as write_adapter

    if checkpoint is None:
        fail("error: --peft writes the adapters of a LoRA run: give it with --checkpoint RUN")
    try:
        written = write_adapter(checkpoint, folder, file, model)
    except NexusError as e:
        fail(render(e))
    out.print(f"wrote {written / PEFT_CONFIG} and {written / PEFT_WEIGHTS}: the adapters of "
              f"{checkpoint}, which peft.PeftModel.from_pretrained applies to the model they "
              "were trained on", markup=False)
