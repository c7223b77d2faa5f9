"""SIGINT and SIGTERM sent to `nexus train` at random moments: the run exits 130 or 143, a
loadable checkpoint at the last finished step exists (or, stopped before its first step,
nothing was saved and nothing is left behind), and resuming it ends bit for bit where a run
that was never interrupted ends.

A signal in the first few tenths of a second, while Python imports the `nexus` command itself
and before any of its code runs, ends the process as it ends any Python program (killed by
the signal: the shell's status is 130 or 143 all the same); a moment drawn from the start
of the process may fall there."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from tests.conftest import ROOT
from tests.train.models import TINY, write

STEPS = 600
SETTINGS = {"batch": 8, "context": 32, "eval_batches": 2, "log_every": 1, "threads": 1,
            "save_every": 0}
FLAGS = ["--steps", str(STEPS), *[a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]]
SEED = 20261202  # the moments are random, and the same on every run of the test


def _tensors(step_dir):
    return load_file(step_dir / "model.safetensors"), load_file(step_dir / "optimizer.safetensors")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("interrupt"), TINY)


@pytest.fixture(scope="module")
def straight(model_file, tmp_path_factory):
    """The tensors of a run never interrupted, at step STEPS."""
    out = tmp_path_factory.mktemp("straight") / "run"
    nexusdsl.train(str(model_file), steps=STEPS, out=out, **SETTINGS)
    return _tensors(out / f"step-{STEPS:08d}")


def _last_trained_step(out) -> int | None:
    path = out / "metrics.jsonl"
    if not path.exists():
        return None
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    return steps[-1] if steps else None


def _interrupt(model_file, out, signum, delay, after_first_step):
    """Start `nexus train`, wait (for its first step, if asked, then `delay` seconds), send
    `signum`; returns the finished process."""
    child = subprocess.Popen([sys.executable, "-m", "nexusdsl.cli", "train", str(model_file),
                              *FLAGS, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while after_first_step and _last_trained_step(out) is None:
            assert child.poll() is None, child.communicate()
            assert time.time() < deadline, "the run never trained a step"
            time.sleep(0.02)
        time.sleep(delay)
        assert child.poll() is None, "the run finished before the signal: raise STEPS"
        os.kill(child.pid, signum)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, stdout, stderr


MOMENTS = [(signum, after) for signum in (signal.SIGINT, signal.SIGTERM)
           for after in (False, True, True)]


@pytest.mark.parametrize("trial", range(len(MOMENTS)))
def test_a_signal_at_a_random_moment_saves_the_last_step_and_resumes_exactly(
        trial, model_file, straight, tmp_path):
    signum, after_first_step = MOMENTS[trial]
    rng = random.Random(SEED + trial)
    delay = rng.uniform(0.0, 1.5) if after_first_step else rng.uniform(0.0, 4.0)
    out = tmp_path / "run"
    status, stdout, stderr = _interrupt(model_file, out, signum, delay, after_first_step)
    killed_while_starting = status == -signum and not after_first_step
    assert status == 128 + signum or killed_while_starting, (delay, stdout, stderr)
    assert "Traceback" not in stderr or killed_while_starting, stderr
    last = _last_trained_step(out)
    if last is None:  # stopped before the first step: nothing saved, nothing left behind
        assert not after_first_step
        assert not out.exists() or ckpt.find(out) is None
        return
    saved = ckpt.load(out)
    assert saved.step == last and 0 < last <= STEPS, (delay, last, stderr)
    assert f"saved {out / f'step-{last:08d}'}" in stderr, stderr
    assert "continue with: nexus train" in stderr and stderr.rstrip().endswith("--resume")
    resumed = nexusdsl.train(str(model_file), steps=STEPS, out=out, resume=True, **SETTINGS)
    assert resumed.steps == STEPS
    for a, b in zip(straight, _tensors(out / f"step-{STEPS:08d}")):
        assert a.keys() == b.keys() and len(a) > 5
        for key in a:
            assert torch.equal(a[key], b[key]), (key, delay, last)


def test_the_moments_include_interruptions_mid_training(model_file, tmp_path):
    """Not vacuous: a signal 0.3 s after the first step lands mid-run and saves a step
    strictly between the first and the last."""
    status, _, stderr = _interrupt(model_file, tmp_path / "run", signal.SIGINT, 0.3, True)
    assert status == 130, stderr
    assert 0 < ckpt.load(tmp_path / "run").step < STEPS
