import functools
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nx"))
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Paths in diagnostics are printed as given: tests give them relative to the repo root."""
    monkeypatch.chdir(ROOT)


@functools.cache
def family_program(name: str):
    """stdlib/families/NAME.nx loaded once per test session. Loading checks every model the
    file defines at its defaults, the published configurations (DeepSeek-V3's 61 layers of 256
    experts take seconds to elaborate); the files do not change while tests run, and each
    configuration a test compiles is elaborated from the same program."""
    import nexusdsl

    return nexusdsl.load(ROOT / "stdlib" / "families" / f"{name}.nx")


def check_golden(path: Path, actual: str) -> None:
    """Compare with a golden file; `UPDATE_GOLDEN=1 pytest` rewrites them after a reviewed change."""
    if UPDATE_GOLDEN:
        path.write_text(actual)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1, review it and commit it"
    assert actual == path.read_text(), f"{path.name} differs from its golden file"


def random_inputs(graph, symbolic: int = 8, batch: int = 2, seed: int = 0):
    """Inputs for a compiled model: symbolic axes get `symbolic` (the first one `batch`), ids
    are drawn below the modality's vocabulary, floats are normal."""
    import torch

    from nexusdsl.compiler.lower.mlir import id_bound

    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for node in graph.inputs():
        t = node.type
        shape = [a.size if a.size is not None else (batch if i == 0 else symbolic)
                 for i, a in enumerate(t.axes)]
        if t.dtype == "i64":
            vocab = id_bound(graph, node) or 256
            inputs.append(torch.randint(0, vocab, shape, generator=gen))
        elif t.dtype == "bool":  # padding masks: every token real
            inputs.append(torch.ones(shape, dtype=torch.bool))
        else:
            inputs.append(torch.randn(shape, generator=gen))
    return inputs


# `nexus ARGS...` run in this process, for the command-line tests
@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def nexus(monkeypatch, capsys):
    """`nexus ARGS...` in this process: its exit status, stdout and stderr."""
    from nexusdsl.cli import main

    def run(*args) -> Run:
        monkeypatch.setattr(sys, "argv", ["nexus", *map(str, args)])
        code, crash = 0, ""
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:  # a real process would print this traceback and exit 1
            code, crash = 1, traceback.format_exc()
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err + crash)

    return run
