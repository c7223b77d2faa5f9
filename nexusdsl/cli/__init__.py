"""The `nexus` command. One module per command group, each registering its commands on the
shared typer `app` (cli/app.py): check and compile (build.py), prune (opt.py), run (run.py),
fmt, viz, lsp, summary and list (tools.py), train, eval, generate and plot (train.py),
merge (merge.py).

User mistakes print located diagnostics and exit with status 1, never a traceback."""

from __future__ import annotations

import sys

from nexusdsl.cli import build, merge, opt, run, tools, train, weights  # noqa: F401  (registers, in this order)
from nexusdsl.cli.app import app, err, usage_errors

__all__ = ["app", "main"]


def main() -> None:
    from nexusdsl.allocator import keep_freed_memory, wait_passively

    wait_passively()  # before torch loads: idle OpenMP workers yield shared cores at once
    keep_freed_memory()  # steps reuse freed blocks instead of faulting in fresh pages
    from nexusdsl.fsutil import UnwritablePath
    from nexusdsl.train.interrupts import exit_status, raise_on_sigterm

    raise_on_sigterm()  # a terminated command unwinds as an interrupted one (locks, --out)
    usage_errors().exit_code = 1  # a mistaken flag is a user mistake: status 1, like the rest
    try:
        app()
    except (UnwritablePath, PermissionError) as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C: 130; SIGTERM: 143
        status = exit_status(e)
        err.print("interrupted" if status == 130 else "terminated", markup=False)
        sys.exit(status)
