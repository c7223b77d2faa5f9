"""What a run's length means: `--steps N` with `--resume` trains to step N; a time budget is
the budget of the run being started; the schedule (warm-up, then a cosine) follows steps, or
time when a budget moves faster, so a run its budget cuts short still warms up and decays."""

import math
import subprocess
import sys

import nexusdsl
from tests.conftest import ROOT
from tests.train.models import FAST, TINY, write


def cosine(step: int, steps: int, warmup: int, final: float) -> float:
    """The documented schedule by steps: a linear ramp over `warmup` steps times a cosine
    from 1 to `final` over the run (docs/decisions.md, "Training")."""
    ramp = min(1.0, (step + 1) / warmup)
    return ramp * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / steps)))


def test_the_schedule_by_steps_is_the_documented_formula(tmp_path):
    path = write(tmp_path, TINY, train="\ntrain Tiny {\n  schedule = cosine(warmup = 4, "
                                       "final = 0.2)\n  optimizer = adamw(lr = 0.01)\n}\n")
    result = nexusdsl.train(str(path), steps=12, **FAST)
    expected = [0.01 * cosine(k, 12, 4, 0.2) for k in range(12)]
    got = [h["lr"] for h in result.history]
    assert len(got) == 12 and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(got, expected))


def test_a_resumed_run_gets_the_whole_time_budget_again_and_trains_to_its_steps(tmp_path):
    """The README's `--resume --steps 4000` with the file's `time = 100`: the first run spent
    its budget; the resumed one has its own and trains on to the steps asked."""
    path = str(write(tmp_path, TINY, train="\ntrain Tiny {\n  time = 1.5\n}\n"))
    first = nexusdsl.train(path, steps=1_000_000, out=tmp_path / "run", **FAST)
    assert 0 < first.steps < 1_000_000 and first.seconds >= 1.5
    resumed = nexusdsl.train(path, steps=first.steps + 5, out=tmp_path / "run", resume=True,
                             **FAST)
    assert resumed.steps == first.steps + 5 and len(resumed.history) == 5


def test_a_run_its_time_budget_cuts_short_still_warms_up_and_decays(tmp_path):
    """5,000 warm-up steps of 1,000,000, and one second: by steps the rate would never leave
    the first tenth of its ramp; the schedule follows the time instead."""
    path = str(write(tmp_path, TINY, train="\ntrain Tiny {\n  schedule = cosine(warmup = 5000,"
                                           " final = 0.1)\n  optimizer = adamw(lr = 0.01)\n}\n"))
    result = nexusdsl.train(path, steps=1_000_000, time=1.0, **FAST)
    rates = [h["lr"] / 0.01 for h in result.history]
    assert len(rates) >= 10, "too few steps in a second to see the schedule"
    assert max(rates) > 0.9  # warmed up: by steps it would be at most len(rates) / 5000
    assert rates[-1] < 0.1 + 0.1 * 0.5 * (1 + math.cos(math.pi * 0.9))  # past 90% of the decay
    assert rates[0] < 0.5 and rates.index(max(rates)) < len(rates) // 2


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    path = write(tmp_path, TINY)
    args = [sys.executable, "-m", "nexusdsl.cli", "train", str(path), "--steps", "3", "--batch",
            "8", "--context", "32", "--set", "eval_batches=1", "--out", str(tmp_path / "run"),
            "-q"]
    assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0
    again = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "at step 3; nothing to train" in again.stdout
    assert "give a larger --steps" in again.stdout
