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


def _one_line_error(run, message):
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert message in run.stderr, run.stderr


def test_outputs_that_cannot_be_written_are_one_error(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    tiny = "examples/tiny_lm.nx"
    _one_line_error(nexus("compile", tiny, "--emit", "ir", "-o", tmp_path / "afile" / "x.ir"),
                    f"error: cannot write {tmp_path / 'afile' / 'x.ir'}: {tmp_path / 'afile'} "
                    "is a file, not a directory")
    _one_line_error(nexus("compile", tiny, "--emit", "ir", "-o", tmp_path / "adir"),
                    f"error: cannot write {tmp_path / 'adir'}: it is a directory")
    _one_line_error(nexus("viz", tiny, "-o", tmp_path / "afile" / "x.dot"), "is a file, not a")
    assert (tmp_path / "afile").read_text() == "" and not any((tmp_path / "adir").iterdir())


def test_bad_flags_exit_with_status_1_and_say_which(tmp_path):
    run = nexus("compile", "examples/tiny_lm.nx", "--emit", "bogus")
    assert run.returncode == 1 and "Traceback" not in run.stderr and "bogus" in run.stderr
    _one_line_error(nexus("run", "examples/tiny_lm.nx", "--size", "T"),
                    "error: --size expects NAME=VALUE, got 'T'")
    _one_line_error(nexus("fmt", tmp_path / "nofile.nx"),
                    f"{tmp_path / 'nofile.nx'}:1:1: error: cannot read {tmp_path / 'nofile.nx'}: "
                    "no such file")


def test_training_settings_given_with_set_are_the_settings(tmp_path):
    run = nexus("train", "examples/tiny_lm.nx", "--set", "steps=2", "--set", "batch=2",
                "--set", "context=8", "--out", tmp_path / "o", "-q")
    assert run.returncode == 0, run.stderr
    assert "after 2 steps" in run.stdout
    _one_line_error(nexus("train", "examples/tiny_lm.nx", "--set", "time=5", "--time", "5",
                          "--out", tmp_path / "p"), "error: time is given twice")
    _one_line_error(nexus("train", "examples/tiny_lm.nx", "--set", "lr=abc", "--out",
                          tmp_path / "q"), "lr must be a positive number, got 'abc'")
