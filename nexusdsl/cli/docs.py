"""The CLI reference (`docs/cli.md`), generated from the `nexus` typer app itself:

    python -m nexusdsl.cli.docs -o docs/cli.md

`tests/tools/test_clidoc.py` checks that every registered command and option is in the page."""

from __future__ import annotations

import argparse
import inspect
from enum import Enum

import typer

INTRO = """\
# The `nexus` command

Every command takes `.nx` files and reports a mistake as `FILE:LINE:COL: error: ...` with the
source line, on standard error, with exit status 1 (never a Python traceback). On a terminal the
quoted source line is highlighted. `nexus COMMAND --help` prints the same options as below.

```sh
nexus --version
nexus check examples/*.nx                     # parse and check shapes
nexus list examples/gpt.nx                    # models (inputs, outputs, train section), blocks
nexus compile examples/tiny_lm.nx --emit ir   # the IR after optimisation
nexus summary examples/tiny_lm.nx --by-node   # parameters and FLOPs, node by node
nexus viz examples/tiny_lm.nx -o tiny.svg --depth 2   # needs Graphviz's dot for .svg
nexus fmt --check .                           # is every .nx file formatted?
nexus train examples/tiny_lm.nx --steps 200 --dry-run
nexus train examples/tiny_lm.nx --steps 200 --out runs/cli-tiny
nexus plot runs/cli-tiny -o cli-tiny.png
nexus run examples/tiny_lm.nx --checkpoint runs/cli-tiny --size B=2 --size T=32
```

`nexus fmt` of a folder leaves out the files a project's `pyproject.toml` lists under
`[tool.nexus] fmt-exclude` (this repository lists tests/golden/diagnostics/syntax.nx, whose
syntax error is on purpose).

`nexus train` stops cleanly on Ctrl-C or SIGTERM: it finishes the step in progress, saves it,
prints the command that continues the run (the same one with `--resume`) and exits with status
130 (143 for SIGTERM). Every run folder keeps `metrics.jsonl`, which `nexus plot` draws. The
environment variable `NEXUS_MAX_STEPS=N` makes every training run stop after at most N steps
(the schedule unchanged), to try commands quickly.

This page is generated from the program (`python -m nexusdsl.cli.docs -o docs/cli.md`);
the test suite checks that every command and option is here.
"""


def commands(app: typer.Typer | None = None) -> dict:
    """{name: click command} of the app (typer may ship its own copy of click, so the
    objects are read by their attributes, not their classes)."""
    if app is None:
        from nexusdsl.cli import app  # registers every command
    group = typer.main.get_command(app)
    return dict(group.commands) if hasattr(group, "commands") else {group.name: group}


def _is_argument(p) -> bool:
    return p.param_type_name == "argument"


def _is_option(p) -> bool:
    return p.param_type_name == "option"


def _default(param) -> str:
    value = param.default
    if callable(value) or value is None or value == () or value == [] or param.required:
        return ""
    if _is_option(param) and param.is_flag:
        return ""
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`"


def _usage(name: str, cmd) -> str:
    parts = [f"nexus {name}"]
    for p in cmd.params:
        if _is_argument(p):
            word = p.name.upper() + ("..." if p.nargs == -1 else "")
            parts.append(word if p.required else f"[{word}]")
    if any(_is_option(p) for p in cmd.params):
        parts.append("[OPTIONS]")
    return " ".join(parts)


def _option_row(p) -> str:
    names = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
    value = ""
    if not p.is_flag:
        enum = type(p.default) if isinstance(p.default, Enum) else None
        value = " " + ("\\|".join(m.value for m in enum) if enum else p.name.upper())
    help_text = (p.help or "").replace("|", "\\|")
    repeat = " (repeatable)" if p.multiple else ""
    return f"| {names}{value} | {help_text}{repeat} | {_default(p)} |"


def section(name: str, cmd) -> str:
    lines = [f"## nexus {name}", "", inspect.cleandoc(cmd.help or ""), "", "```",
             _usage(name, cmd), "```", ""]
    arguments = [p for p in cmd.params if _is_argument(p)]
    options = [p for p in cmd.params if _is_option(p)]
    for p in arguments:
        lines.append(f"- `{p.name.upper()}`: {getattr(p, 'help', '') or ''}")
    if arguments:
        lines.append("")
    if options:
        lines += ["| option | meaning | default |", "|---|---|---|"]
        lines += [_option_row(p) for p in options]
        lines.append("")
    return "\n".join(lines)


def reference(app: typer.Typer | None = None) -> str:
    cmds = commands(app)
    index = ["| command | what it does |", "|---|---|"]
    index += [f"| [`nexus {n}`](#nexus-{n}) | {inspect.cleandoc(c.help or '').splitlines()[0]} |"
              for n, c in cmds.items()]
    return "\n".join([INTRO, *index, "", *(section(n, c) for n, c in cmds.items())]).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="write here instead of printing")
    args = parser.parse_args()
    text = reference()
    if args.output:
        from nexusdsl.fsutil import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
