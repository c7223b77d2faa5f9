"""Checkpoints: tied tensors saved once, exact resume, and atomic saves under SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train.session import from_checkpoint
from tests.conftest import ROOT
from tests.train.models import FAST, TINY, write


def test_tied_parameters_are_saved_once_and_tied_again_on_load(tmp_path):
    path = write(tmp_path, TINY)
    nexusdsl.train(str(path), steps=2, out=tmp_path / "run", **FAST)
    step = tmp_path / "run" / "step-00000002"
    saved = load_file(step / "model.safetensors")
    assert "tok.weight" in saved and "unembed.weight" not in saved
    state = json.loads((step / "state.json").read_text())
    assert state["aliases"] == {"unembed.weight": "tok.weight"}
    assert state["step"] == 2 and state["graph_hash"] == nexusdsl.compile(path).graph.content_hash()
    assert state["source"]["sha256"] == ckpt.source_hash(path.read_text())
    assert all(isinstance(i, int) for i in state["rng"]["torch"][0])
    module = from_checkpoint(nexusdsl.load(path), None, tmp_path / "run").module
    assert module.unembed.weight is module.tok.weight
    assert torch.equal(module.tok.weight, saved["tok.weight"])
    for key, value in module.state_dict().items():
        assert torch.equal(value, saved.get(key, saved["tok.weight"])), key


def _tensors(run, step):
    where = run / f"step-{step:08d}"
    return load_file(where / "model.safetensors"), load_file(where / "optimizer.safetensors")


def test_resume_is_bit_exact(tmp_path):
    """2N steps straight == N steps, a stop, N resumed steps (the model has dropout, so the
    RNG state must come back too; the cosine schedule spans all 2N steps in both)."""
    path = str(write(tmp_path, TINY))
    straight = nexusdsl.train(path, steps=8, out=tmp_path / "a", **FAST)
    nexusdsl.train(path, steps=8, until=4, out=tmp_path / "b", **FAST)
    resumed = nexusdsl.train(path, steps=8, out=tmp_path / "b", resume=True, **FAST)
    assert [h["loss"] for h in straight.history[4:]] == [h["loss"] for h in resumed.history]
    for a, b in zip(_tensors(tmp_path / "a", 8), _tensors(tmp_path / "b", 8)):
        assert a.keys() == b.keys() and len(a) > 5
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_an_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    path = str(write(tmp_path, TINY))
    nexusdsl.train(path, steps=2, out=tmp_path / "run", **FAST)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(nexusdsl.NexusError, match="already holds a checkpoint"):
        nexusdsl.train(path, steps=4, out=tmp_path / "run", **FAST)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


# A child that trains 4 steps saving at 2 and 4, and freezes in the middle of the second save
# (after model.safetensors is written) so that the parent can SIGKILL it there.
FREEZE_MID_SAVE = """
import sys, time, nexusdsl
from nexusdsl.train import checkpoint
real, calls = checkpoint.save_file, []
def save_file(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    calls.append(filename)
    if len(calls) == 3:  # the second checkpoint's first file
        open(sys.argv[2], "w").write(filename)
        time.sleep(600)
checkpoint.save_file = save_file
nexusdsl.train(sys.argv[1], steps=4, save_every=2, out=sys.argv[3], batch=8, context=32,
               eval_batches=1)
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = write(tmp_path, TINY)
    marker, out = tmp_path / "mid-save", tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", FREEZE_MID_SAVE, str(path), str(marker),
                              str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.time() < deadline, "the child never reached its second save"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert "step-00000004" in marker.read_text()  # killed while writing step 4
    assert ckpt.latest_name(out) == "step-00000002"
    assert not (out / "step-00000004").exists() and list(out.glob(".step-00000004.tmp-*"))
    loaded = ckpt.load(out)
    assert loaded.step == 2 and "tok.weight" in loaded.model
    resumed = nexusdsl.train(str(path), steps=4, save_every=2, out=out, resume=True,
                             batch=8, context=32, eval_batches=1)
    assert resumed.steps == 4 and ckpt.load(out).step == 4
    assert not list(out.glob(".step-*.tmp-*"))  # the killed save's leftovers are gone


# A child that saves checkpoints as fast as it can; each one's tensor is filled with its step.
SAVE_FOREVER = """
import sys, torch
from nexusdsl.train import checkpoint
w = torch.zeros(512, 1024)
step = 0
while True:
    step += 1
    w.fill_(step)
    checkpoint.save(sys.argv[1], step, {"model.w": w}, {}, {"state": {}, "param_groups": []},
                    {"model": "M", "graph_hash": "0", "source": {"file": "m.nx", "sha256": "0"},
                     "hyper": {}, "config": {}})
    print(step, flush=True)
"""


@pytest.mark.parametrize("delay", [0.4, 0.7, 1.1])
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, delay):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "1"  # the first checkpoint is complete
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    loaded = ckpt.load(out)
    assert loaded.step >= 1 and loaded.path.name == ckpt.latest_name(out)
    assert torch.equal(loaded.model["w"], torch.full((512, 1024), float(loaded.step)))
