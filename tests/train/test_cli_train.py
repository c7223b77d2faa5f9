"""`nexus train`, `nexus eval`, `nexus generate`: results, and bad input as one clear error."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.train.models import TINY, write

FAST = ["--batch", "8", "--context", "32", "--set", "eval_batches=2", "--quiet"]


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def one_error(run, message):
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") or ": error: " in lines[0], run.stderr
    assert message in lines[0], run.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    path = write(tmp, TINY)
    run = nexus("train", path, "--steps", 3, "--out", tmp / "run", *FAST)
    assert run.returncode == 0, run.stderr
    return path, tmp / "run", run


def test_train_prints_heldout_bits_per_byte_before_and_after(trained):
    _, out, run = trained
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out bits per byte: ") and last.endswith("after 3 steps")
    assert (out / "latest").read_text().strip() == "step-00000003"


def test_eval_and_generate_from_a_checkpoint(trained):
    path, out, _ = trained
    run = nexus("eval", path, "--checkpoint", out)
    assert run.returncode == 0 and "bpb" in run.stdout, run.stderr
    run = nexus("generate", path, "--checkpoint", out, "--prompt", "The ", "--max-bytes", 20,
                "--temperature", 0)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("The ") and len(run.stdout.encode()) >= 20


def test_generation_is_reproducible_and_follows_the_prompt(trained):
    path, out, _ = trained
    args = ["generate", path, "-c", out, "-p", "def ", "--max-bytes", 30, "--top-k", 5]
    first, again, other = (nexus(*args, "--seed", seed) for seed in (3, 3, 4))
    for run in (first, again, other):
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert first.stdout.startswith("def ") and len(first.stdout.encode()) > len("def ")
    assert again.stdout == first.stdout
    # sampling, not greedy decoding: another seed draws other bytes from the same top 5
    assert other.stdout.startswith("def ") and other.stdout != first.stdout


def test_missing_data_path(tmp_path):
    one_error(nexus("train", "examples/tiny_lm.nx", "--data", tmp_path / "nope.txt", "--out",
                    tmp_path / "o", *FAST), f"data path {tmp_path / 'nope.txt'} does not exist")


def test_empty_data_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    one_error(nexus("train", "examples/tiny_lm.nx", "--data", tmp_path / "empty.txt", "--out",
                    tmp_path / "o", *FAST), "is empty")


def test_missing_data_named_in_the_file_is_located(tmp_path):
    path = write(tmp_path, TINY, train='\ntrain Tiny {\n  data = text("gone.txt")\n}\n')
    run = nexus("train", path, "--out", tmp_path / "o", *FAST)
    one_error(run, f"{path}:14:3: error: data path {tmp_path / 'gone.txt'} does not exist")
    assert 'data = text("gone.txt")' in run.stderr  # the source line is shown


def test_model_whose_outputs_do_not_fit_the_objective(tmp_path):
    one_error(nexus("train", "examples/digits.nx", "--data", "digits", "--out", tmp_path / "o",
                    *FAST), "objective next_token: needs a model with one token input")
    assert not (tmp_path / "o").exists()


def test_a_default_objective_that_does_not_fit_is_located_at_the_train_section(tmp_path):
    path = tmp_path / "float_in.nx"
    path.write_text("nexus 0.1\nmodel M(d = 8) {\n  input x: float[B, T, d]\n"
                    "  output y = linear(x, d)\n}\n\ntrain M {\n  steps = 2\n}\n")
    run = nexus("train", path, "--out", tmp_path / "o", *FAST)
    one_error(run, f"{path}:7:1: error: objective next_token: pydoc_data.topics (CPython "
                   "documentation) has nothing to feed input x")
    assert "train M {" in run.stderr
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_file(trained, tmp_path):
    _, out, _ = trained
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    one_error(nexus("eval", "examples/conv_lm.nx", "-c", out), "no model of that name")
    one_error(nexus("generate", "examples/tiny_lm.nx", "-c", out, "-p", "x"),
              "was saved from model Tiny")
    other = write(tmp_path, TINY.replace("Tiny", "TinyLM").replace("dim = 32", "dim = 48"))
    one_error(nexus("train", other, "--out", out, "--resume", *FAST), "which differs")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost


def test_missing_checkpoint(tmp_path):
    one_error(nexus("eval", "examples/tiny_lm.nx", "-c", tmp_path / "none"),
              f"checkpoint {tmp_path / 'none'} does not exist")


def test_bad_flag_value(tmp_path):
    one_error(nexus("train", "examples/tiny_lm.nx", "--set", "clip=-1", "--out", tmp_path),
              "clip must be a number >= 0")


def test_a_context_other_than_a_fixed_sequence_length_is_located_at_the_input(tmp_path):
    path = tmp_path / "grid.nx"
    path.write_text("""nexus 0.1
modality text = bytes(code = 0)
model Grid(dim = 8) {
  input tokens: text[B, T=64]
  x = embed(tokens, dim) as tok
  g = layout(x, "b (i j k) d -> b i j k d", i = 4, j = 4)
  g = mix(g, axes = [i, j, k], wiring = axial, share = axis)
  y = layout(g, "b i j k d -> b (i j k) d")
  output logits = unembed(y, tie = tok)
}
""")
    run = nexus("train", path, "--steps", "2", "--batch", "4", "--context", "32", "--out",
                tmp_path / "o", "-q")
    one_error(run, f"{path}:4:3: error: input tokens fixes T = 64, but training feeds 32 "
                   "tokens: use --context 64")
    assert not (tmp_path / "o").exists()
