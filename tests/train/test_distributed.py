"""Two processes through torchrun on CPU (gloo): DDP keeps replicas identical and equals one
process on the same global batch; a sharded (FSDP) run's checkpoint loads in one process.

gloo may abort while the process group is torn down after training has finished. Each rank
therefore writes a report (`OUT/ranks/rank-R.json`) before teardown; a failed exit is accepted
only when every rank reported finishing and the final checkpoint is complete, and never when
a Python traceback was printed.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import metrics
from tests.conftest import ROOT
from tests.train.models import TINY, write

# Without dropout: the processes' dropout masks could not equal one process's.
PLAIN = TINY.replace(" |> dropout(0.1)", "")
ARGS = ["--steps", "4", "--batch", "8", "--context", "32", "--quiet"]


def torchrun(path, out, *extra, eval_batches=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "nexusdsl.cli", "train", str(path), "--out", str(out), *ARGS,
           "--set", f"eval_batches={eval_batches}", *extra]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    reports = [out / "ranks" / f"rank-{r}.json" for r in range(2)]
    log = f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    assert "Traceback" not in run.stderr, log
    assert all(p.exists() for p in reports), log
    results = [json.loads(p.read_text()) for p in reports]
    assert all(r["done"] and r["step"] == 4 and r["world"] == 2 for r in results), results
    assert ckpt.load(out).step == 4, log  # complete even if teardown then aborted
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, the same settings."""
    tmp = tmp_path_factory.mktemp("single")
    path = write(tmp, PLAIN)
    assert "dropout" not in PLAIN
    nexusdsl.train(str(path), steps=4, batch=8, context=32, eval_batches=2, out=tmp / "run")
    return path, ckpt.load(tmp / "run")


def assert_same_weights(a, b):
    """Equal up to summation order. Adam divides each gradient element by its own scale, so
    an element whose gradient is zero up to rounding (key biases, bytes absent from the batch)
    moves by up to a learning-rate-sized step (1e-3 here) either way: hence atol 1e-4."""
    assert a.model.keys() == b.model.keys()
    tight = []
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=1e-4, atol=1e-4)
        tight.append(torch.isclose(a.model[key], b.model[key], rtol=1e-4, atol=1e-6).flatten())
    assert torch.cat(tight).float().mean() > 0.99  # nearly all agree far more tightly


def test_ddp_keeps_replicas_identical_and_matches_one_process(single, tmp_path):
    path, reference = single
    ranks = torchrun(path, tmp_path / "ddp")
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert not ranks[0]["sharded"]
    assert_same_weights(ckpt.load(tmp_path / "ddp"), reference)


def test_fewer_heldout_batches_than_processes_evaluate_on_every_process(single, tmp_path):
    """One held-out batch for two processes: each evaluates it (a process left without a
    batch had no sums to add and crashed), so the held-out loss is one process's on it."""
    path, _ = single
    torchrun(path, tmp_path / "ddp", eval_batches=1)
    alone = tmp_path / "alone"
    nexusdsl.train(str(path), steps=4, batch=8, context=32, eval_batches=1, out=alone)
    heldout = [[m for m in metrics.read(run) if m["split"] == "heldout"][-1]
               for run in (tmp_path / "ddp", alone)]
    assert heldout[0]["step"] == heldout[1]["step"] == 4
    assert heldout[0]["loss"] == pytest.approx(heldout[1]["loss"], rel=1e-3)


def test_sharded_checkpoint_loads_in_one_process(single, tmp_path):
    path, reference = single
    ranks = torchrun(path, tmp_path / "fsdp", "--shard")
    assert ranks[0]["sharded"] and ranks[0]["params_sha256"] != ranks[1]["params_sha256"]
    saved = ckpt.load(tmp_path / "fsdp")
    assert saved.state["sharded"] and saved.state["storage"] == "dcp"  # each rank's shards
    assert not any("model/unembed.weight" in ckpt.load_file(str(saved.path / f))
                   for f in saved.state["files"])  # a tied name is saved once
    assert_same_weights(saved, reference)
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "eval", str(path), "-c",
                          str(tmp_path / "fsdp"), "--json"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["bpb"] == pytest.approx(ranks[0]["after"]["bpb"], rel=1e-5)
