"""Every class of user mistake gives a located diagnostic; golden files pin the exact text."""

import subprocess
import sys
from pathlib import Path

import pytest

import nexusdsl
from tests.conftest import ROOT, check_golden

CASES = sorted(p for p in (ROOT / "tests/golden/diagnostics").glob("*.nx") if p.name != "cycle_other.nx")


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_diagnostic_matches_golden(path: Path):
    relative = path.relative_to(ROOT)
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load(relative)
    text = info.value.render()
    first = text.splitlines()[0]
    assert first.startswith(f"{relative}:"), first
    assert ": error: " in first
    check_golden(path.with_suffix(".err"), text + "\n")


def test_several_errors_are_all_reported():
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load("tests/golden/diagnostics/several_errors.nx")
    lines = [d.span.line for d in info.value.diagnostics]
    assert lines == [6, 7, 8], lines


def test_shape_mismatch_names_both_sides_and_origin():
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load("tests/golden/diagnostics/shape_mismatch.nx")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (7, 9)  # the operator
    assert "128" in d.message and "256" in d.message and "x + h" in d.message
    assert any(n.span and n.span.line == 6 for n in d.notes)


@pytest.mark.parametrize("name", ["syntax", "shape_mismatch", "import_cycle"])
def test_cli_check_exits_1_without_traceback(name):
    path = f"tests/golden/diagnostics/{name}.nx"
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "check", path],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert run.stderr.startswith(f"{path}:")
