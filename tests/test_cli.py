"""The `nexus` command line: check, compile and its emitters."""

import json
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, ROOT


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_check_all_examples():
    run = nexus("check", *[str(p.relative_to(ROOT)) for p in EXAMPLES])
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(": ok") == len(EXAMPLES)


def test_check_does_not_import_torch():
    code = ("import sys, nexusdsl; p = nexusdsl.load('examples/tiny_lm.nx'); p.elaborate(); "
            "nexusdsl.loads(open('examples/gpt.nx').read()); assert 'torch' not in sys.modules, 'torch'")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_compile_json_summary_has_exact_counts():
    run = nexus("compile", "examples/tiny_lm.nx", "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert set(info) >= {"model", "params", "nodes", "inputs", "outputs", "flops_per_token"}
    d, depth, v = 128, 4, 256
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert info["params"] == {"total": v * d + depth * per_block + d, "trainable": v * d + depth * per_block + d,
                              "frozen": 0}
    assert info["inputs"] == {"tokens": "text[B, T]"}
    assert info["model"] == "TinyLM"


def test_set_overrides_hyperparameters():
    run = nexus("compile", "examples/tiny_lm.nx", "--json", "--set", "dim=64", "--set", "depth=1")
    info = json.loads(run.stdout)
    assert info["hyper"]["dim"] == 64 and info["hyper"]["depth"] == 1


def test_unknown_hyperparameter_is_a_clean_error():
    run = nexus("compile", "examples/tiny_lm.nx", "--set", "width=64")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "no hyperparameter `width`" in run.stderr


@pytest.mark.parametrize("emit,marker", [("ir", "model TinyLM("), ("json", '"nodes"'), ("fx", "def forward")])
def test_emitters(emit, marker, tmp_path):
    out = tmp_path / f"out.{emit}"
    run = nexus("compile", "examples/tiny_lm.nx", "--emit", emit, "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert marker in out.read_text()


def test_meta_device_summarises_a_large_model_without_allocating():
    run = nexus("compile", "examples/tiny_lm.nx", "--device", "meta", "--json",
                "--set", "dim=2048", "--set", "depth=16", "--set", "heads=16")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["params"]["total"] > 800_000_000


def test_missing_file_is_a_clean_error():
    run = nexus("check", "no/such/file.nx")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("no/such/file.nx:1:1: error: cannot read")
