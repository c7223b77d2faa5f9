"""A run folder's metrics.jsonl: every logged step and every evaluation, a resumed run's history
kept to its checkpoint, MoE routing shares, and progress lines when output is not a terminal."""

import json
import math
import subprocess
import sys

import torch

import nexusdsl
from nexusdsl.train.data import open_data
from nexusdsl.train.loop import step_generator
from nexusdsl.train.session import configure
from tests.conftest import ROOT
from tests.train.models import FAST, TINY, write


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_logged_step_and_every_evaluation_is_a_line(tmp_path):
    path = str(write(tmp_path, TINY))
    settings = {**FAST, "log_every": 3, "eval_every": 5}
    result = nexusdsl.train(path, steps=10, out=tmp_path / "run", **settings)
    rows = records(tmp_path / "run")
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]
    assert [r["step"] for r in train] == [3, 6, 9, 10]  # every log_every, and the last step
    assert [r["step"] for r in held] == [0, 5, 10]
    losses = {h["step"]: h["loss"] for h in result.history}
    for row, window in zip(train, [(1, 3), (4, 6), (7, 9), (10, 10)]):
        steps = range(window[0], window[1] + 1)  # the mean loss since the previous line
        assert math.isclose(row["loss"], sum(losses[s] for s in steps) / len(steps))
        assert row["lr"] == result.history[row["step"] - 1]["lr"]
        assert row["tok_per_s"] > 0
    assert [r["seconds"] for r in train] == sorted(r["seconds"] for r in train)
    assert {k: held[0][k] for k in result.before} == result.before
    assert {k: held[-1][k] for k in result.after} == result.after


def test_a_resumed_run_keeps_the_history_of_the_checkpoint_it_resumes(tmp_path):
    path, out = str(write(tmp_path, TINY)), tmp_path / "run"
    nexusdsl.train(path, steps=8, until=4, out=out, **FAST)
    with open(out / "metrics.jsonl", "a") as f:  # what a crashed run wrote past step 4
        f.write(json.dumps({"split": "train", "step": 6, "loss": 9.0}) + "\n")
        f.write('{"split": "train", "st')  # a line cut short by a kill
    nexusdsl.train(path, steps=8, out=out, resume=True, **FAST)
    rows = records(out)
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in rows if r["split"] == "heldout"] == [0, 4, 8]
    assert all(r.get("loss") != 9.0 for r in rows)


MOE = """nexus 0.1
import std.nn
modality text = bytes(code = 0)

model Routed(dim = 16, n = 4) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  experts ffn = n of mlp(mult = 2)
  x = x + moe(x, ffn, router = topk(k = 2))
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""


def test_moe_expert_shares_are_the_routing_of_the_logged_step(tmp_path):
    """The share of step 1's routing choices each expert got, against a hand computation:
    the router sees the embeddings of step 0's batch with the initial weights; each token
    picks the two experts of highest softmax(x W_router^T)."""
    path = str(write(tmp_path, MOE))
    nexusdsl.train(path, steps=1, out=tmp_path / "run", **FAST)
    logged = records(tmp_path / "run")[1]
    assert logged["split"] == "train" and set(logged["experts"]) == {"moe"}

    program = nexusdsl.load(path)
    config = configure(program, None, dict(FAST))
    initial = nexusdsl.compile(program, seed=config.seed).state_dict()
    data = open_data(config.data)
    window = data.train.sample(config.batch, config.context + 1, step_generator(config.seed, 0))
    tokens = window["bytes"][:, :-1]
    x = initial["tok.weight"][tokens].reshape(-1, 16)
    chosen = torch.softmax(x @ initial["moe.router.weight"].T, dim=-1).topk(2, dim=-1).indices
    expected = torch.bincount(chosen.flatten(), minlength=4).double() / chosen.numel()
    assert torch.allclose(torch.tensor(logged["experts"]["moe"], dtype=torch.float64),
                          expected, atol=1e-6)
    assert math.isclose(sum(logged["experts"]["moe"]), 1.0, abs_tol=1e-5)


def test_progress_is_one_line_per_logged_step_when_output_is_not_a_terminal(tmp_path):
    path = write(tmp_path, TINY)
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "train", str(path), "--steps",
                          "7", "--batch", "8", "--context", "32", "--set", "eval_batches=1",
                          "--set", "log_every=3", "--out", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert all(" loss " in line and " tok/s " in line and " lr " in line for line in lines)
