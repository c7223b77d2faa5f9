"""tests/gpu runs where CUDA is: `make test` collects it with the rest of tests/. Without a
CUDA device its tests are deselected (not skipped) and the summary says so in one line:

    tests/gpu: 9 tests not run: no CUDA device here (torch.cuda.is_available() is False)

A test marked `gpus(2)` also needs two GPUs; on one GPU it is deselected and counted the same
way. docs/gpu.md lists what these tests check."""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NOT_RUN: dict[str, int] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpus(n): needs n CUDA devices (tests/gpu)")


def _missing(item) -> str | None:
    """Why this machine cannot run `item` (a test of this folder), or None."""
    if not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    marker = item.get_closest_marker("gpus")
    needed = marker.args[0] if marker else 1
    if torch.cuda.device_count() < needed:
        return f"{needed} GPUs needed, {torch.cuda.device_count()} here"
    return None


def pytest_collection_modifyitems(config, items):
    keep, dropped = [], []
    for item in items:
        why = _missing(item) if HERE in Path(item.fspath).resolve().parents else None
        if why is None:
            keep.append(item)
        else:
            dropped.append(item)
            NOT_RUN[why] = NOT_RUN.get(why, 0) + 1
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    for why, count in NOT_RUN.items():
        terminalreporter.write_line(f"tests/gpu: {count} test{'s' * (count != 1)} not run: {why}")
