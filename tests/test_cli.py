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


def _tiny_lm_params(d: int, depth: int, v: int = 256) -> int:
    """tiny_lm's parameters by hand: the embedding (tied with the head), per block two norms,
    attention's qkv and output projections and the mlp's two linears, and the final norm."""
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return v * d + depth * per_block + d


def test_version_names_the_package_torch_and_python():
    from importlib.metadata import version

    from nexusdsl.version import __version__

    run = nexus("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"nexus {__version__} ")
    assert f"torch {version('torch')}" in run.stdout and f"Python {sys.version.split()[0]}" in run.stdout


def test_list_shows_models_with_inputs_outputs_and_train_section_and_blocks():
    run = nexus("list", "examples/tiny_lm.nx")
    assert run.returncode == 0, run.stderr
    lines = [line.strip() for line in run.stdout.splitlines()]
    assert lines[:4] == ["examples/tiny_lm.nx",
                         f"model TinyLM(dim = 128, depth = 4, heads = 4)  "
                         f"{_tiny_lm_params(128, 4):,} parameters",
                         "input   tokens: text[B, T]", "output  logits: f32[B, T, vocab=256]"]
    assert lines[4].startswith("train   dim = 96; depth = 2; heads = 8; batch = 64")
    blocks = nexus("list", "stdlib/nn.nx", "--json")
    listing = json.loads(blocks.stdout)
    assert listing["models"] == []
    assert {"name": "mlp", "params": ["x: [*, d]", "mult = 4", "act = gelu", "bias = true"]} \
        in listing["blocks"]


def test_set_names_that_are_typos_get_a_suggestion(tmp_path):
    _one_line_error(nexus("compile", "examples/tiny_lm.nx", "--set", "dmi=128"),
                    "error: --set dmi=...: model TinyLM has no hyperparameter `dmi`; did you "
                    "mean `dim`? (it has dim, depth, heads)")
    _one_line_error(nexus("train", "examples/tiny_lm.nx", "--set", "stpes=3", "--out",
                          tmp_path / "o"), "did you mean `steps`?")
    assert not (tmp_path / "o").exists()


def test_summary_output_follows_its_suffix_and_refuses_pickles(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    import nexusdsl

    tiny = "examples/tiny_lm.nx"
    _one_line_error(nexus("compile", tiny, "-o", tmp_path / "model.pt"),
                    f"error: -o {tmp_path / 'model.pt'}: a .pt file is a Python pickle")
    assert not (tmp_path / "model.pt").exists()
    assert nexus("compile", tiny, "-o", tmp_path / "s.json").returncode == 0
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(
        nexus("compile", tiny, "--json").stdout)
    assert nexus("compile", tiny, "-o", tmp_path / "w.safetensors").returncode == 0
    written = load_file(tmp_path / "w.safetensors")
    expected = nexusdsl.compile(tiny, seed=0).state_dict()
    assert set(written) == set(expected) - {"unembed.weight"}
    assert all(torch.equal(written[k], expected[k]) for k in written)
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert json.loads(f.metadata()["tied"]) == {"unembed.weight": "tok.weight"}


def test_flops_are_labelled_with_the_context_they_were_counted_at():
    run = nexus("summary", "examples/tiny_lm.nx", "--context", "64")
    assert run.returncode == 0, run.stderr
    assert "forward, batch 1, context 64" in run.stdout and "context 256" not in run.stdout


def test_compile_notes_the_size_its_train_section_trains():
    run = nexus("compile", "examples/tiny_lm.nx")
    assert run.returncode == 0, run.stderr
    assert f"{_tiny_lm_params(128, 4):,}" in run.stdout
    assert (f"note: the train section of TinyLM trains dim=96, depth=2, heads=8 "
            f"({_tiny_lm_params(96, 2):,} parameters)") in run.stderr
    assert "nexus train examples/tiny_lm.nx --dry-run" in run.stderr


def test_dry_run_shows_the_configuration_to_be_trained_and_writes_nothing(tmp_path):
    run = nexus("train", "examples/tiny_lm.nx", "--dry-run", "--steps", "300", "--out",
                tmp_path / "o")
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in run.stdout.splitlines()[1:]}
    assert rows["hyperparameters"] == ("dim=96 (examples/tiny_lm.nx:19), depth=2 "
                                       "(examples/tiny_lm.nx:20), heads=8 (examples/tiny_lm.nx:21)")
    assert rows["parameters"].startswith(f"{_tiny_lm_params(96, 2):,} trainable of "
                                         f"{_tiny_lm_params(96, 2):,}")
    assert rows["steps"].startswith("300 (flag), or 100 s of training (examples/tiny_lm.nx:25)")
    assert rows["batch"] == ("64 (examples/tiny_lm.nx:22) x context 32 (examples/tiny_lm.nx:23)"
                             " = 2,048 tokens per step")
    assert rows["objective"] == "next_token (default)"
    assert not (tmp_path / "o").exists()
