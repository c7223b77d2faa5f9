"""`nexus plot`: the curves drawn are the runs' metrics.jsonl, one line per run."""

import json
import subprocess
import sys

import pytest

import nexusdsl
from nexusdsl.train.plot import figure, read_runs
from tests.conftest import ROOT
from tests.train.models import FAST, TINY, write


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plot")
    path = str(write(tmp, TINY))
    nexusdsl.train(path, steps=6, out=tmp / "a", **{**FAST, "eval_every": 3})
    nexusdsl.train(path, steps=4, out=tmp / "b", lr=3e-3, **FAST)
    return tmp / "a", tmp / "b"


def _rows(run, split, key):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["split"] == split]


def test_each_run_is_a_training_curve_and_a_held_out_curve(runs):
    fig = figure(read_runs(list(runs)))
    loss_ax, held_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == [
        "a: training", "a: held-out", "b: training", "b: held-out"]
    for i, run in enumerate(runs):
        training, heldout = loss_ax.lines[2 * i: 2 * i + 2]
        assert [tuple(p) for p in training.get_xydata()] == _rows(run, "train", "loss")
        assert [tuple(p) for p in heldout.get_xydata()] == _rows(run, "heldout", "loss")
    for line, run in zip(held_ax.lines, runs):
        assert [tuple(p) for p in line.get_xydata()] == _rows(run, "heldout", "bpb")
    assert held_ax.get_ylabel() == "held-out bits per byte"
    assert _rows(runs[0], "heldout", "bpb")[1][0] == 3  # eval_every: the middle point


def test_the_command_writes_a_png(runs, tmp_path):
    done = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "plot", *map(str, runs), "-o",
                           str(tmp_path / "curves.png")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("target,message", [("curves.gif", "choose a .png, .svg or .pdf"),
                                            ("curves.png", "has no metrics.jsonl")])
def test_mistakes_are_one_error_line(tmp_path, target, message):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "plot", str(tmp_path / "empty"),
                           "-o", str(tmp_path / target)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
