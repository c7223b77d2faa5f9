"""FSDP2 (`--shard`) with two processes through torchrun on CPU (gloo), against one process:

- a model of repeat steps trains to the same weights (1e-6 with SGD after six steps);
- each repeat step is one unit, and a frozen `bind` section's parameters sit in units of
  their own that never hold a gradient;
- a distributed checkpoint written by two processes resumes in one and in two, and a
  one-process checkpoint in two.

Each torchrun here runs `nexusdsl.train` in a small script written to the test's folder,
which writes what every process sees (its units, its gradients) as JSON before exiting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from tests.conftest import ROOT

MODEL = """nexus 0.1
import std.nn
modality text = bytes(code = 0)

model Deep(dim = 32, depth = 2, heads = 2) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  repeat depth {
    x = x + attention(rmsnorm(x), heads = heads, causal = true)
    x = x + mlp(rmsnorm(x), mult = 2)
  }
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""

# SGD moves each weight by the learning rate times its gradient, so the rounding differences
# of two processes' summation stay of the gradients' size (Adam would divide a gradient that
# is zero up to rounding by its own scale and move the weight by up to the learning rate).
SGD = "\ntrain Deep {\n  optimizer = sgd(lr = 0.05, momentum = 0.9)\n}\n"

# Step 0's MLP of the first repeat step read from a checkpoint, frozen.
FROZEN = """
bind Deep from "ck" frozen {
  "blocks.0.mlp.linear.weight" <- "up.w"
  "blocks.0.mlp.linear.bias" <- "up.b"
  "blocks.0.mlp.linear_1.weight" <- "down.w"
  "blocks.0.mlp.linear_1.bias" <- "down.b"
}
"""

SETTINGS = {"batch": 8, "context": 32, "eval_batches": 1}

# Run by every process: train, then report the FSDP units and the gradients it holds.
WORKER = """
import json, os, sys
from pathlib import Path
from torch.distributed.fsdp import FSDPModule
import nexusdsl

path, out, until, resume = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
result = nexusdsl.train(path, steps=6, until=until, out=out, resume=resume, shard=True,
                        batch=8, context=32, eval_batches=1, precision=sys.argv[5])
units, seen = [], set()
for module in result.model.modules():
    state = module._get_fsdp_state() if isinstance(module, FSDPModule) else None
    if state is None or module is result.model or id(state) in seen:
        continue  # the modules of one unit share its state
    seen.add(id(state))
    group = state._fsdp_param_group
    params = [(p._module_info.module, p._module_info.param_name, p.sharded_param)
              for p in group.fsdp_params]
    names = {id(m): n for n, m in result.model.named_modules()}
    units.append({
        "params": [names[id(m)] + "." + n for m, n, _ in params],
        "trainable": [p.requires_grad for _, _, p in params],
        "grads": [p.grad is not None for _, _, p in params],
        "grad_bytes": sum(p.grad.to_local().nbytes for _, _, p in params if p.grad is not None),
        "gathered": str(group.mp_policy.param_dtype),  # the dtype the forward sees
    })
root = [n for n, p in result.model.named_parameters() if n not in
        {q for u in units for q in u["params"]}]
report = {"units": units, "root": root,
          "grads": {n: p.grad is not None for n, p in result.model.named_parameters()}}
Path(out, f"units-{os.environ['RANK']}.json").write_text(json.dumps(report))
"""


def torchrun(tmp_path, path, out, until=6, resume=False, precision="fp32"):
    """Two processes train `path` sharded up to step `until` of a six-step schedule; returns
    each one's report."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(worker), str(path), str(out), str(until), "1" if resume else "0", precision]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    log = f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    assert "Traceback" not in run.stderr, log
    reports = [out / f"units-{r}.json" for r in range(2)]
    assert all(p.exists() for p in reports), log
    assert ckpt.load(out).step == until, log  # complete even if gloo's teardown then aborted
    return [json.loads(p.read_text()) for p in reports]


def one_process(path, out, until=6, resume=False, precision="fp32"):
    nexusdsl.train(str(path), steps=6, until=until, out=out, resume=resume, threads=1,
                   precision=precision, **SETTINGS)
    return ckpt.load(out)


def assert_close(a: ckpt.Checkpoint, b: ckpt.Checkpoint, tol: float) -> None:
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=tol, msg=key)


def assert_equal(a: ckpt.Checkpoint, b: ckpt.Checkpoint) -> None:
    assert a.model.keys() == b.model.keys() and a.optimizer.keys() == b.optimizer.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    for key in a.optimizer:
        assert torch.equal(a.optimizer[key], b.optimizer[key]), key


@pytest.fixture(scope="module")
def sgd(tmp_path_factory):
    """Deep with SGD in one process: six steps, and the first three of them saved (the
    schedule spans six steps in both)."""
    tmp = tmp_path_factory.mktemp("sgd")
    path = tmp / "deep.nx"
    path.write_text(MODEL + SGD)
    return path, one_process(path, tmp / "six"), one_process(path, tmp / "three", 3)


def test_two_processes_train_the_weights_of_one(sgd, tmp_path):
    path, six, _ = sgd
    ranks = torchrun(tmp_path, path, tmp_path / "fsdp")
    units = sorted(sorted(u["params"]) for u in ranks[0]["units"])
    step = [sorted(n for n in six.model if n.startswith(f"blocks.{i}.")) for i in (0, 1)]
    # one unit per repeat step, the final norm its own; the tied embedding stays in the root
    assert units == sorted([*step, ["rmsnorm.weight"]]) and ranks[0]["root"] == ["tok.weight"]
    assert all(u["gathered"] == "None" for u in ranks[0]["units"])  # float32 as stored
    saved = ckpt.load(tmp_path / "fsdp")
    assert saved.state["storage"] == "dcp" and len(saved.state["files"]) == 2
    assert_close(saved, six, 1e-6)
    # a shard file missing is a damaged checkpoint, not zeros
    (saved.path / saved.state["files"][1]).unlink()
    with pytest.raises(ckpt.CheckpointError, match="is damaged: shard file .* is missing"):
        ckpt.load(tmp_path / "fsdp")


def test_bf16_gathers_half_precision_weights_and_keeps_float32_ones(sgd, tmp_path):
    path, six, _ = sgd
    ranks = torchrun(tmp_path, path, tmp_path / "bf16", precision="bf16")
    assert all(u["gathered"] == "torch.bfloat16" for u in ranks[0]["units"])
    saved = ckpt.load(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 for t in saved.model.values())  # the master weights
    # one process's bf16 autocast rounds the same products; FSDP2 also gathers the norms'
    # weights in bf16, hence a looser bound than float32's, and yet far from float32's run
    reference = one_process(path, tmp_path / "one-bf16", precision="bf16")
    assert_close(saved, reference, 2e-3)
    assert max(float((saved.model[k] - six.model[k]).abs().max()) for k in six.model) > 1e-5


def test_a_frozen_bound_part_holds_no_gradients(tmp_path):
    g = torch.Generator().manual_seed(0)
    bound = {"up.w": torch.randn(64, 32, generator=g), "up.b": torch.randn(64, generator=g),
             "down.w": torch.randn(32, 64, generator=g), "down.b": torch.randn(32, generator=g)}
    (tmp_path / "ck").mkdir()
    save_file(bound, tmp_path / "ck" / "model.safetensors")
    (tmp_path / "ck" / "config.json").write_text("{}")
    path = tmp_path / "frozen.nx"
    path.write_text(MODEL + FROZEN)
    names = {"blocks.0.mlp.linear.weight": "up.w", "blocks.0.mlp.linear.bias": "up.b",
             "blocks.0.mlp.linear_1.weight": "down.w", "blocks.0.mlp.linear_1.bias": "down.b"}
    for rank in torchrun(tmp_path, path, tmp_path / "run", 3):
        assert [n for n, has in rank["grads"].items() if not has] == list(names)  # .grad None
        frozen = [u for u in rank["units"] if u["params"] == list(names)]
        assert len(frozen) == 1  # a unit of their own, holding no gradient
        assert frozen[0]["trainable"] == frozen[0]["grads"] == [False] * 4
        assert frozen[0]["grad_bytes"] == 0
        step = next(u for u in rank["units"] if u["params"][0].startswith("blocks.0."))
        assert step["params"] == ["blocks.0.rmsnorm.weight", "blocks.0.attention.qkv.weight",
                                  "blocks.0.attention.qkv.bias", "blocks.0.attention.out.weight",
                                  "blocks.0.attention.out.bias", "blocks.0.rmsnorm_1.weight"]
        assert all(step["grads"]) and step["grad_bytes"] > 0  # what the step's unit reduces
    saved = ckpt.load(tmp_path / "run")
    for name, key in names.items():  # bit for bit what was bound
        assert torch.equal(saved.model[name], bound[key]), name


def resumed(tmp_path, source, name, path, processes):
    """`source`'s run folder copied to `name` and resumed to step 6 in 1 or 2 processes."""
    shutil.copytree(source, tmp_path / name)
    if processes == 1:
        return one_process(path, tmp_path / name, resume=True)
    torchrun(tmp_path, path, tmp_path / name, resume=True)
    return ckpt.load(tmp_path / name)


def test_a_distributed_checkpoint_resumes_in_one_and_in_two(sgd, tmp_path):
    path, six, three = sgd
    torchrun(tmp_path, path, tmp_path / "two")  # six steps in two processes, straight
    straight = ckpt.load(tmp_path / "two")
    shutil.rmtree(tmp_path / "two")
    torchrun(tmp_path, path, tmp_path / "two", 3)
    two = ckpt.load(tmp_path / "two")
    assert two.state["storage"] == "dcp" and two.state["world_size"] == 2
    assert_close(two, three, 1e-6)
    # 2 -> 2: every process reads back exactly its shards: the same run as straight through
    assert_equal(resumed(tmp_path, tmp_path / "two", "two-two", path, 2), straight)
    # 2 -> 1 and 1 -> 2: the same weights as one process, up to the order of the sums
    assert_close(resumed(tmp_path, tmp_path / "two", "two-one", path, 1), six, 1e-6)
    assert_close(resumed(tmp_path, three.path.parent, "one-two", path, 2), six, 1e-6)
