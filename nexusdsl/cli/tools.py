"""The commands for working with `.nx` files: `nexus fmt`, `nexus viz`, `nexus lsp` and
`nexus summary`. They register on `nexusdsl.cli.app`."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

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

# Folders `nexus fmt DIR` never enters: tools' and virtual environments' own files.
_SKIPPED_DIRS = {"node_modules", "build", "dist", "__pycache__"}


def nx_files(paths: list[Path], exclude: list[str]) -> list[Path]:
    """The `.nx` files named, and those under the folders named (not following symlinks,
    skipping hidden folders and the files a project's pyproject.toml excludes under
    `[tool.nexus] fmt-exclude`), minus those matching an `--exclude` pattern."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            skipped = project_excludes(path)
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
                found += [Path(root) / f for f in sorted(files) if f.endswith(".nx")
                          and (Path(root) / f).resolve() not in skipped]
        else:
            found.append(path)
    return [f for f in found if not any(f.match(p) or str(f) == p for p in exclude)]


def project_excludes(folder: Path) -> set[Path]:
    """Files the nearest pyproject.toml at or above `folder` keeps out of folder-wide
    formatting (`[tool.nexus] fmt-exclude = ["tests/golden/diagnostics/syntax.nx"]`: files
    that are wrong on purpose), as resolved paths."""
    import tomllib

    for parent in [folder.resolve(), *folder.resolve().parents]:
        config = parent / "pyproject.toml"
        if config.is_file():
            try:
                table = tomllib.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return set()
            names = table.get("tool", {}).get("nexus", {}).get("fmt-exclude", [])
            return {(parent / n).resolve() for n in names if isinstance(n, str)}
    return set()


@app.command("fmt")
def fmt_cmd(
    paths: list[Path] = typer.Argument(..., help=".nx files, or folders to search for them"),
    check: bool = typer.Option(False, "--check", help="change nothing; exit 1 if a file would change"),
    diff: bool = typer.Option(False, "--diff", help="print what would change, change nothing"),
    exclude: list[str] = typer.Option([], "--exclude", help="skip files matching this pattern"),
) -> None:
    """Format .nx files in the canonical layout, keeping every comment."""
    from nexusdsl.fsutil import atomic_write_text
    from nexusdsl.lang.source import read_source
    from nexusdsl.tools.fmt import format_text

    changed, broken = [], False
    for file in nx_files(paths, exclude):  # a bad file is reported and the others still done
        try:
            text = read_source(file)  # not a FIFO or device, not too large: it could hang
            formatted = format_text(text, str(file))
        except NexusError as e:
            report_error(e)
            broken = True
            continue
        except (OSError, UnicodeDecodeError) as e:
            from nexusdsl.fsutil import os_reason

            err.print(f"{file}:1:1: error: cannot read {file}: {os_reason(e)}", markup=False)
            broken = True
            continue
        if formatted == text:
            continue
        changed.append(file)
        if diff:
            out.print("".join(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                                   f"{file}", f"{file} (formatted)")), markup=False, end="")
        elif check:
            err.print(f"{file}: would be reformatted", markup=False)
        else:
            atomic_write_text(file, formatted)
            out.print(f"formatted {file}", markup=False)
    if broken or ((check or diff) and changed):
        raise typer.Exit(1)


def report_error(error: NexusError) -> None:
    from nexusdsl.tools.highlight import print_message

    print_message(err, error.render())


def _elaborate(file: Path, model: Optional[str], sets: list[str]):
    import nexusdsl

    hyper = parse_sets(sets)
    try:
        program = nexusdsl.load(file)
        check_hyper_names(program, model, hyper)
        return program.elaborate(model, **hyper)
    except NexusError as e:
        report(e)


@app.command("viz")
def viz_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to draw (if several)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="picture to write: .svg, .png, .pdf or .dot "
                                               "(default: FILE's name with .svg)"),
    depth: Optional[int] = typer.Option(None, "--depth", min=1,
                                        help="collapse nodes below this name depth into one box "
                                             "per group (2: one box per blocks.N)"),
    sets: list[str] = typer.Option([], "--set", help="override a hyperparameter: NAME=VALUE"),
) -> None:
    """Draw a model's graph: modalities in colours, experts in clusters, shapes on edges."""
    from nexusdsl.tools.viz import FORMATS, output_format, render

    target = output or Path(file.stem + ".svg")
    if output_format(target) not in FORMATS:
        fail(f"error: cannot write {target}: choose a .svg, .png, .pdf or .dot file")
    graph = _elaborate(file, model, sets)
    written, note = render(graph, target, depth)
    if note:
        err.print(f"note: {note}", markup=False)
    out.print(f"wrote {written}", markup=False)


@app.command("lsp")
def lsp_cmd() -> None:
    """Run the language server for editors (LSP over stdin/stdout)."""
    from nexusdsl.tools.lsp import serve

    serve()


@app.command("summary")
def summary_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to summarise (if several)"),
    by_node: bool = typer.Option(False, "--by-node", help="one row per node: shape, parameters, FLOPs"),
    context: int = typer.Option(256, "--context", min=1, help="length of symbolic axes for FLOPs"),
    sets: list[str] = typer.Option([], "--set", help="override a hyperparameter: NAME=VALUE"),
) -> None:
    """Inputs, outputs, parameters and FLOPs of a model, in total or node by node."""
    from nexusdsl.compiler.summary import summarize

    graph = _elaborate(file, model, sets)
    if not by_node:
        out.print(summary_text(summarize(graph, context), context), markup=False)
        return
    table = node_table(graph, context)
    if out.is_terminal:
        out.print(table)
    else:  # a pipe or a file: wide enough that shapes are not wrapped
        Console(width=200, highlight=False).print(table)


def node_table(graph, context: int) -> Table:
    from nexusdsl.compiler.summary import count_params, total_flops
    from nexusdsl.tools.node_table import node_rows

    table = Table(title=f"model {graph.name}: nodes (FLOPs for batch 1, context {context})",
                  title_justify="left")
    for name, justify in (("node", "left"), ("op", "left"), ("shape", "left"),
                          ("params", "right"), ("FLOPs", "right")):
        table.add_column(name, justify=justify, no_wrap=name == "node")
    for row in node_rows(graph, context):
        name = "  " * row.depth + row.name
        table.add_row(name, row.op, row.shape, f"{row.params:,}" if row.params else "",
                      f"{row.flops:,}")
    flops, _ = total_flops(graph, context)
    table.add_section()
    table.add_row("total", "", "", f"{count_params(graph)['total']:,}", f"{flops:,}")
    return table


@app.command("list")
def list_cmd(
    file: Path = typer.Argument(..., help="the .nx file"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The models of a file (hyperparameters, inputs, outputs, train section) and its blocks."""
    import json

    import nexusdsl

    try:
        program = nexusdsl.load(file)
        listing = file_listing(program)
    except NexusError as e:
        report(e)
    if as_json:
        out.print(json.dumps(listing, indent=2), markup=False)
        return
    out.print(listing_text(listing), markup=False)


def file_listing(program) -> dict:
    """{"file", "models": [...], "blocks": [...]} of a checked program (the file's own
    definitions, not its imports'); inputs and outputs at the default hyperparameters."""
    from nexusdsl.compiler.summary import summarize
    from nexusdsl.lang import ast

    models = []
    for tree in program.scope.models:
        info = summarize(program.elaborate(tree.name))
        section = program.train_config(tree.name)
        models.append({"name": tree.name, "hyper": _params(program, tree.params),
                       "inputs": info["inputs"], "outputs": info["outputs"],
                       "params": info["params"]["total"],
                       "train": {k: _source_text(program, span) for k, (_, span)
                                 in section.items()}})
    blocks = [{"name": b.name, "params": _params(program, b.params)}
              for b in program.scope.defs.values() if isinstance(b, ast.Block)]
    return {"file": program.file, "models": models, "blocks": blocks}


def _params(program, params) -> list[str]:
    """`dim = 128`, `x: text[B, T]`, `x`, as written."""
    shown = []
    for p in params:
        text = p.name
        if p.type is not None:
            text += f": {_source_text(program, p.type.span)}"
        if p.default is not None:
            text += f" = {_source_text(program, p.default.span)}"
        shown.append(text)
    return shown


def _source_text(program, span) -> str:
    """The text a span covers (one line's worth, whitespace squeezed)."""
    lines = program.sources.get(span.file, "").splitlines()
    if not span.line or span.line > len(lines):
        return ""
    if span.end_line == span.line and span.end_col > span.col:
        return lines[span.line - 1][span.col - 1:span.end_col - 1]
    text = lines[span.line - 1][span.col - 1:]
    return " ".join(text.split("#")[0].split())


def listing_text(listing: dict) -> str:
    lines = [listing["file"]]
    for m in listing["models"]:
        lines.append(f"  model {m['name']}({', '.join(m['hyper'])})  {m['params']:,} parameters")
        lines += [f"    input   {name}: {t}" for name, t in m["inputs"].items()]
        lines += [f"    output  {name}: {t}" for name, t in m["outputs"].items()]
        if m["train"]:
            settings = "; ".join(m["train"].values())
            lines.append(f"    train   {settings}")
    for b in listing["blocks"]:
        lines.append(f"  block {b['name']}({', '.join(b['params'])})")
    if not listing["models"] and not listing["blocks"]:
        lines.append("  (no models or blocks)")
    return "\n".join(lines)
