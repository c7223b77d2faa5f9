"""Careless flag values: each is exit status 1 and one `error:` line, never a traceback, and
nothing is allocated, trained or written first.

Most commands run in this process through the real entry point (`nexusdsl.cli.main`): an
exception escaping it is what a real process would print as a traceback, and is reported so
here. Flags whose bytes or environment matter run in a real process.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from tests.conftest import ROOT, Run
from tests.train.models import TINY, write

FAST = ["--batch", 4, "--context", 16, "--set", "eval_batches=1", "--set", "threads=1", "-q"]
UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}


def nexus_process(*args, env=None) -> Run:
    """`nexus ARGS...` in a new process (arguments may be bytes: not UTF-8)."""
    args = [a if isinstance(a, bytes) else str(a) for a in args]
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", *args], cwd=ROOT, env=env,
                         capture_output=True)
    return Run(run.returncode, run.stdout.decode(errors="replace"),
               run.stderr.decode(errors="replace"))


def one_error(run: Run, message: str) -> str:
    """Exit 1 and exactly one line on stderr, `error: ...` containing `message`."""
    assert run.code == 1, run.out + run.err
    assert "Traceback" not in run.err, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    assert message in lines[0], run.err
    return lines[0]


def to_bytes(amount: str, unit: str) -> float:
    return float(amount) * UNITS[unit]


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, read here independently of nexusdsl.memory."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/meminfo has no MemAvailable")


# ----------------------------------------------------------------------------- memory


def test_a_batch_too_big_for_memory_is_refused_before_allocating(nexus, tmp_path):
    path, batch, context = write(tmp_path, TINY), 100_000_000, 16
    start = time.monotonic()
    run = nexus("train", path, "--steps", 1, *FAST, "--batch", batch, "--context", context,
                "--out", tmp_path / "o")
    line = one_error(run, f"batch {batch} (context {context}) needs about")
    assert time.monotonic() - start < 60  # refused, not swapping towards the OOM killer
    found = re.search(r"needs about ([\d.]+) (\w+) .*this machine has ([\d.]+) (\w+)", line)
    need, have = to_bytes(*found.group(1, 2)), to_bytes(*found.group(3, 4))
    # An independent lower bound: the logits alone, [batch, context, 256] float32.
    assert need >= batch * context * 256 * 4
    assert 0.5 * mem_available() < have < 2 * mem_available()
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- numbers


def test_a_seed_beyond_what_the_generators_take(nexus, tmp_path):
    path = write(tmp_path, TINY)
    for seed in (99999999999999999999, 2**32):
        one_error(nexus("train", path, "--steps", 1, *FAST, "--seed", seed, "--out",
                        tmp_path / "o"), f"seed must be a whole number from 0 to 4294967295, "
                                         f"got {seed}")
    assert not (tmp_path / "o").exists()
    # the largest seed the message allows trains
    run = nexus("train", path, "--steps", 1, *FAST, "--seed", 2**32 - 1, "--out", tmp_path / "o")
    assert run.code == 0, run.err
    assert (tmp_path / "o" / "latest").read_text().strip() == "step-00000001"


def test_a_seed_of_run_and_generate(nexus, tmp_path):
    path = write(tmp_path, TINY)
    one_error(nexus("run", path, "--seed", 99999999999999999999), "--seed must be a whole "
                                                                   "number from 0 to 4294967295")
    one_error(nexus("generate", path, "-c", tmp_path / "none", "--seed", 2**64),
              "--seed must be a whole number from 0 to 4294967295")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_learning_rate_that_is_not_a_finite_number(nexus, tmp_path, value):
    run = nexus("train", write(tmp_path, TINY), "--steps", 1, *FAST, "--lr", value, "--out",
                tmp_path / "o")
    message = "lr must be a finite number" if value == "inf" else "lr must be a positive number"
    one_error(run, message)
    assert not (tmp_path / "o").exists()


def test_a_learning_rate_far_beyond_any_use(nexus, tmp_path):
    run = nexus("train", write(tmp_path, TINY), "--steps", 1, *FAST, "--lr", "1e308", "--out",
                tmp_path / "o")
    one_error(run, "lr must be at most 1000, got 1e+308")
    assert not (tmp_path / "o").exists()


# No normalisation: with Adam at lr 1000 and no clipping its weights grow until the loss is
# NaN (at step 7 with these seeds).
UNSTABLE = """nexus 0.1
modality text = bytes(code = 0)
model Lin(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  output logits = unembed(linear(x, dim), tie = tok)
}
"""


def test_a_run_that_diverges_saves_nothing_and_keeps_the_last_checkpoint(nexus, tmp_path):
    path, out = write(tmp_path, UNSTABLE), tmp_path / "o"
    assert nexus("train", path, "--steps", 2, *FAST, "--out", out).code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    unstable = ["--steps", 30, *FAST, "--lr", 1000, "--set", "clip=0"]
    line = one_error(nexus("train", path, *unstable, "--out", out, "--resume"),
                     "training diverged at step ")
    assert "the loss is no longer finite" in line and "smaller learning rate" in line
    assert 2 < int(re.search(r"at step (\d+)", line).group(1)) <= 30
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # saving every step: the newest checkpoint is the last finite step, not the diverged one
    line = one_error(nexus("train", path, *unstable, "--out", out, "--resume", "--set",
                           "save_every=1"), "training diverged at step ")
    diverged_at = int(re.search(r"at step (\d+)", line).group(1))
    assert ckpt.latest_name(out) == f"step-{diverged_at - 1:08d}"
    assert all(torch.isfinite(t).all() for t in ckpt.load(out).model.values())
    # a fresh run that diverges leaves no folder
    one_error(nexus("train", path, *unstable, "--out", tmp_path / "new"),
              "training diverged at step ")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- devices


def test_a_device_that_does_not_exist(nexus, tmp_path):
    path = write(tmp_path, TINY)
    one_error(nexus("train", path, "--steps", 1, *FAST, "--device", "tpu", "--out",
                    tmp_path / "o"), "device tpu: choose cpu or cuda")
    one_error(nexus("run", path, "--device", "tpu"), "--device tpu: choose cpu or cuda")
    assert not (tmp_path / "o").exists()


def test_cuda_asked_for_on_a_machine_without_it(tmp_path):
    path = write(tmp_path, TINY)
    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU machine
    run = nexus_process("train", path, "--steps", 1, *FAST, "--device", "cuda", "--out",
                        tmp_path / "o", env=hidden)
    one_error(run, "device cuda: no CUDA device is available here")
    one_error(nexus_process("run", path, "--device", "cuda", env=hidden),
              "--device cuda was asked for, but no CUDA device is available")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    path = write(tmp, TINY)
    nexusdsl.train(str(path), steps=1, batch=4, context=16, eval_batches=1, threads=1,
                   out=tmp / "run")
    return path, tmp / "run"


def test_a_prompt_that_is_not_utf8(checkpoint):
    path, out = checkpoint
    run = nexus_process("generate", path, "-c", out, "--prompt", b"caf\xe9 \xff",
                        "--max-bytes", 4)
    one_error(run, "--prompt is not UTF-8 text")
    run = nexus_process("generate", path, "-c", out, "--prompt", "café", "--max-bytes", 4,
                        "--temperature", 0)
    assert run.code == 0 and run.out.startswith("café"), run.err  # UTF-8 text is fine


# ----------------------------------------------------------------------------- nexus run


def inputs(tmp_path, tokens):
    path = tmp_path / "inputs.safetensors"
    save_file({"tokens": tokens}, str(path))
    return path


@pytest.mark.parametrize("bad, shown", [(300, 300), (256, 256), (-1, -1)])
def test_run_with_token_ids_outside_the_vocabulary(nexus, tmp_path, bad, shown):
    path = write(tmp_path, TINY)
    ids = torch.tensor([[1, 2, bad, 3]])
    run = nexus("run", path, "--inputs", inputs(tmp_path, ids))
    one_error(run, f"input `tokens` in {tmp_path / 'inputs.safetensors'} holds the id {shown}, "
                   "outside its vocabulary (0 to 255)")
    # the largest id of the vocabulary runs
    run = nexus("run", path, "--inputs", inputs(tmp_path, torch.tensor([[0, 255, 7]])))
    assert run.code == 0 and "logits: (1, 3, 256)" in run.out, run.err


@pytest.mark.parametrize("shape", [(1, 0), (0, 4)])
def test_run_with_an_empty_sequence(nexus, tmp_path, shape):
    path = write(tmp_path, TINY)
    run = nexus("run", path, "--inputs", inputs(tmp_path, torch.zeros(shape, dtype=torch.int64)))
    one_error(run, f"input `tokens` in {tmp_path / 'inputs.safetensors'} is empty (shape "
                   f"{shape})")


# ----------------------------------------------------------------------------- PPO rewards

NONE_REWARD = """
calls = 0
def reward(batch, actions):
    global calls
    calls += 1
    return None if calls >= {first_none} else (actions == batch["label"]).float()
"""


# None at once (the trial batch before training), and later (the 6th call: held-out or a step)
@pytest.mark.parametrize("first_none", [1, 6])
def test_a_ppo_reward_that_returns_none(nexus, tmp_path, monkeypatch, first_none):
    module = f"none_reward_{first_none}"
    (tmp_path / f"{module}.py").write_text(NONE_REWARD.format(first_none=first_none))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = nexus("train", "examples/thann.nx", "--data", "digits", "--set", "objective=ppo",
                "--set", f"reward={module}:reward", "--set", "dim=16", "--steps", 4, "--batch",
                8, "--set", "eval_batches=1", "--set", "threads=1", "-q", "--out", tmp_path / "o")
    one_error(run, "objective ppo: the reward returned NoneType, not numbers: it must return "
                   "rewards shaped like the actions (")
    assert not (tmp_path / "o").exists()
