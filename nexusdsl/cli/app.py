"""What every `nexus` command shares: the typer app, the consoles, and how a mistake is printed
(a located diagnostic or one `error:` line, exit status 1, never a traceback)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nexusdsl.lang.diagnostics import NexusError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="nexusdsl: compile, check and train modular neural networks from .nx files.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def version_text() -> str:
    """`nexus --version`: this package's version and the versions it runs with (read from
    the installed packages' metadata, so torch is not imported)."""
    import platform
    from importlib import metadata

    from nexusdsl.version import __version__

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return (f"nexus {__version__} (language `nexus 0.1`; torch {torch}; Python "
            f"{platform.python_version()})")


def _show_version(value: bool) -> None:
    if value:
        out.print(version_text(), markup=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_show_version,
                                          is_eager=True, help="print the version and exit")):
    """nexusdsl: compile, check and train modular neural networks from .nx files."""


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


def did_you_mean(name: str, candidates) -> str:
    """`; did you mean `dim`?` when a candidate is close to `name`, else nothing."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def check_hyper_names(program, model: str | None, hyper: dict[str, Any]) -> None:
    """Every `--set` name is a hyperparameter of the model (a typo gets a suggestion)."""
    tree = program.model_ast(model)
    names = [p.name for p in tree.params if p.type is None]
    for key in hyper:
        if key not in names:
            fail(f"error: --set {key}=...: model {tree.name} has no hyperparameter `{key}`"
                 f"{did_you_mean(key, names)} (it has {', '.join(names) or 'none'})")


def parse_literal(raw: str) -> Any:
    """`256`, `3e-4`, `true`, a word, or a list of those: `[4096, 0, 4096]`."""
    if raw.startswith("[") or raw.endswith("]"):
        return [parse_literal(item) for item in _list_items(raw)]
    if raw in ("true", "false"):
        return raw == "true"
    for cast in (int, float):
        try:
            return cast(raw.replace("_", ""))
        except ValueError:
            pass
    return raw


def _list_items(raw: str) -> list[str]:
    """The items of `[a, b, [c, d]]` as written (split at the commas outside inner brackets)."""
    if not (raw.startswith("[") and raw.endswith("]")):
        fail(f"error: {raw!r} is not a list: a list is written [a, b, ...]")
    items, depth, start = [], 0, 1
    for at, char in enumerate(raw[1:-1], start=1):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            fail(f"error: {raw!r}: a `]` closes no `[`")
        if char == "," and depth == 0:
            items.append(raw[start:at].strip())
            start = at + 1
    if depth:
        fail(f"error: {raw!r}: a `[` is never closed")
    last = raw[start:-1].strip()
    items += [last] if last else []  # `[]` is empty; `[1, 2,]` ends with a comma
    if any(not item for item in items):
        fail(f"error: the list {raw!r} has an empty item")
    return items


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A seed the random generators can take (a traceback from deep in torch otherwise)."""
    from nexusdsl.train.session import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        fail(f"error: {flag} must be a whole number from 0 to {MAX_SEED}, got {seed}")


def check_finite(value: float, flag: str) -> None:
    import math

    if not math.isfinite(value):
        fail(f"error: {flag} must be a finite number, got {value}")


def utf8_flag(text: str, flag: str) -> bytes:
    """A text flag's bytes. Arguments that are not UTF-8 reach Python as lone surrogates
    (PEP 383), which cannot be printed back or encoded: one error instead."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"error: {flag} is not UTF-8 text")


def report(error: NexusError) -> None:
    fail(error.render())


def render(error: NexusError) -> str:
    """Located diagnostics as usual; errors about flags or checkpoints (no source line) as
    one `error:` line."""
    parts = []
    for d in error.diagnostics:
        if d.span.line:
            parts.append(NexusError([d], error.sources).render())
        else:
            parts.append(f"error: {d.message}")
    return "\n".join(parts)


def summary_text(info: dict, context: int = 256) -> str:
    """The summary table; `context` is the length the FLOPs were counted at (every symbolic
    axis but the batch's)."""
    table = Table(title=f"model {info['model']}", show_header=False, box=None)
    for name, t in info["inputs"].items():
        table.add_row("input", name, t)
    for name, t in info["outputs"].items():
        table.add_row("output", name, t)
    p = info["params"]
    table.add_row("nodes", str(info["nodes"]), "")
    kinds = f"trainable {p['trainable']:,}, frozen {p['frozen']:,}"
    if "bound" in p:  # filled from checkpoints by `bind` sections
        kinds += f"; bound {p['bound']:,}, initialised {p['total'] - p['bound']:,}"
    table.add_row("params", f"{p['total']:,}", kinds)
    table.add_row("FLOPs/token", f"{info['flops_per_token']:,}", f"forward, batch 1, context {context}")
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text().rstrip()


def usage_errors():
    """The exception class of bad flags: typer's own copy of click's, or click's."""
    try:
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError
    return UsageError
