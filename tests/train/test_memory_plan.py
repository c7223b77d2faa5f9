"""`nexus compile --memory` (compiler/memory_plan.py) against what torch allocates: the
parameters, gradients and AdamW state of a real step counted tensor by tensor, the decode
cache a Decoder preallocates, and the peak resident memory of training steps measured in a
subprocess (torch keeps no allocator statistics on CPU: /proc/self/status's VmHWM, reset
through /proc/self/clear_refs, minus the resident size before the model is built) for
tiny_lm and a 100M-parameter tiny_lm, at two batch sizes, with and without activation
checkpointing: within 25%; and the peak of each of two processes training it sharded (FSDP2).

glibc raises its mmap threshold each time a large block is freed, after which freed blocks
stay resident: FSDP2's gathered weights, freed and made again for every unit, then count in
the high-water mark though they are not alive together. The sharded measurement fixes the
threshold (MALLOC_MMAP_THRESHOLD_) so that the mark counts live memory, as in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.lower.decode import Decoder
from nexusdsl.compiler.memory_plan import plan
from tests.conftest import ROOT

TINY_LM = "examples/tiny_lm.nx"  # the tests run from the repository's root
BIG = {"dim": 768, "depth": 14, "heads": 12}  # 99.6M parameters

# Two AdamW steps of cross-entropy training (the second has the optimizer's state), after a
# warm-up step of a small model of the same file (torch's kernels and the allocator's first
# arenas are not the configuration's); prints the peak above the baseline and the plan.
MEASURE = """
import json, sys
from pathlib import Path
import torch
import nexusdsl
from nexusdsl.compiler.memory_plan import plan
from nexusdsl.train import checkpointing

def resident(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def step(module, optimizer, tokens):
    logits = module(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

def built(program, hyper, checkpointed):
    module = nexusdsl.compile(program, None, **hyper)
    if checkpointed:
        checkpointing.install(module, checkpointing.repeat_steps(module.graph))
    return module

file, batch, context, checkpointed, hyper = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    sys.argv[4] == "1", json.loads(sys.argv[5])
torch.set_num_threads(1)
program = nexusdsl.load(file)
tokens = torch.randint(0, 256, (batch, context + 1))
small = built(program, {**hyper, "dim": 16, "depth": 1, "heads": 2}, checkpointed)
step(small, torch.optim.AdamW(small.parameters()), tokens[:2, :9])
del small
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
base = resident("VmRSS")
module = built(program, hyper, checkpointed)
optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
for _ in range(2):
    step(module, optimizer, tokens)
peak = resident("VmHWM") - base
print(json.dumps({"peak": peak,
                  "plan": plan(module.graph, batch, context, checkpoint=checkpointed).total}))
"""


def measured(batch: int, context: int, checkpointed: bool, hyper: dict) -> dict:
    run = subprocess.run([sys.executable, "-c", MEASURE, TINY_LM, str(batch), str(context),
                          "1" if checkpointed else "0", json.dumps(hyper)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize(("hyper", "context", "batches"), [
    ({}, 128, (8, 32)),
    (BIG, 64, (2, 8)),
], ids=["tiny_lm", "100M"])
def test_the_plan_is_within_a_quarter_of_the_measured_peak(hyper, context, batches):
    for batch in batches:
        plain, checkpointed = (measured(batch, context, c, hyper) for c in (False, True))
        for m in (plain, checkpointed):
            assert 0.75 * m["peak"] <= m["plan"] <= 1.25 * m["peak"], (batch, m)
        assert checkpointed["peak"] < plain["peak"] and checkpointed["plan"] < plain["plan"]


def test_states_and_cache_are_what_torch_allocates():
    program = nexusdsl.load(TINY_LM)
    module = nexusdsl.compile(program, None)
    tokens = torch.randint(0, 256, (2, 17))
    optimizer = torch.optim.AdamW(module.parameters())
    logits = module(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()
    params = list(module.parameters())
    moments = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
    for shard in (1, 2):
        p = plan(module.graph, 2, 16, shard=shard)
        assert p.weights == sum(t.nbytes for t in params) / shard
        assert p.gradients == sum(t.grad.nbytes for t in params) / shard
        assert p.optimizer == sum(t.nbytes for t in moments) / shard
    for batch, capacity in ((1, 32), (3, 100)):
        decoder = Decoder(module, batch, capacity)
        cache = sum(t.nbytes for m in decoder._installed
                    for state in m.__dict__["_decoding"][1].states if isinstance(state, dict)
                    for key, t in state.items() if key in ("k", "v"))
        assert cache > 0 and plan(module.graph, batch, capacity).cache == cache
        assert plan(module.graph, batch, capacity, "bf16").cache == cache // 2


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", "compile", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_the_command_prints_the_plan_and_refuses_what_cannot_fit():
    run = nexus(TINY_LM, "--memory", "--batch", "8", "--context", "128", "--json")
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    p = plan(nexusdsl.compile(nexusdsl.load(TINY_LM), None).graph, 8, 128)
    assert rows == p.rows()
    assert rows["total"] == rows["weights"] + rows["gradients"] + rows["optimizer"] \
        + rows["activations"]
    sharded = json.loads(nexus(TINY_LM, "--memory", "--batch", "8", "--context", "128",
                               "--shard", "2", "--checkpoint", "--json").stdout)
    assert sharded["optimizer"] == rows["optimizer"] // 2
    assert sharded["total"] == (rows["weights"] + rows["gradients"] + rows["optimizer"]) // 2 \
        + rows["activations_checkpointed"]
    text = nexus(TINY_LM, "--memory", "--batch", "8", "--context", "128").stdout
    assert "generation cache" in text and "activations (checkpointed)" in text
    huge = nexus(TINY_LM, "--memory", "--batch", "8", "--context", "100000", "--set",
                 "dim=4096")
    assert huge.returncode == 1 and "Traceback" not in huge.stderr
    assert "examples/tiny_lm.nx:6:1: error: training TinyLM needs" in huge.stderr
    for flags, message in [(["--batch", "8"], "error: --memory needs --batch and --context (the step's rows and tokens)"),
                           (["--batch", "8", "--context", "8", "--precision", "fp8"],
                            "error: --precision must be fp32, bf16 or fp16, got fp8")]:
        bad = nexus(TINY_LM, "--memory", *flags)
        assert bad.returncode == 1 and bad.stderr.strip() == message, bad.stderr


# Every process builds the model, shards it (train/distributed.py's units), and trains its half
# of the batch; prints its peak above its baseline and the plan for N = 2.
SHARDED = """
import json, os, sys
from pathlib import Path
import torch
from torch import nn
import nexusdsl
from nexusdsl.compiler.memory_plan import plan
from nexusdsl.train import distributed

def resident(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

class Trainee(nn.Module):  # what distributed.wrap shards: `.model`, the compiled model
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

def step(net, optimizer, tokens):
    logits = net(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

file, batch, context, hyper = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    json.loads(sys.argv[4])
d = distributed.setup(shard=True)
program = nexusdsl.load(file)
tokens = torch.randint(0, 256, (batch, context + 1), generator=torch.Generator().manual_seed(0))
small = Trainee(nexusdsl.compile(program, None, **{**hyper, "dim": 16, "depth": 1, "heads": 2}))
distributed.wrap(small, d)
step(small, torch.optim.AdamW(small.parameters()), tokens[:2, :9])
del small
Path("/proc/self/clear_refs").write_text("5")
base = resident("VmRSS")
module = nexusdsl.compile(program, None, **hyper)
net = Trainee(module)
distributed.wrap(net, d)
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
mine = tokens[d.rank::d.world]
for _ in range(2):
    step(net, optimizer, mine)
peak = resident("VmHWM") - base
total = plan(module.graph, mine.shape[0], context, shard=d.world).total
Path(sys.argv[5], f"rank-{d.rank}.json").write_text(json.dumps({"peak": peak, "plan": total}))
distributed.teardown(d)
"""


def test_the_sharded_plan_is_within_a_quarter_of_each_process_peak(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "PYTHONPATH": str(ROOT)}
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(script), TINY_LM, "8", "64",
                          json.dumps(BIG), str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    ranks = [tmp_path / f"rank-{r}.json" for r in range(2)]
    assert all(p.exists() for p in ranks), run.stderr[-3000:]
    one = plan(nexusdsl.compile(nexusdsl.load(TINY_LM), None, **BIG).graph, 8, 64)
    for m in (json.loads(p.read_text()) for p in ranks):
        assert 0.75 * m["peak"] <= m["plan"] <= 1.25 * m["peak"], m
        assert m["peak"] < 0.6 * one.total  # the states halved, the activations of half a batch
