"""Mixed precision (`precision = bf16 | fp16 | fp32`), and the throughput a run reports."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import distributed, metrics
from nexusdsl.train.loop import local_batch, prepare_optimizer, save, train_step
from nexusdsl.train.metrics import Throughput
from nexusdsl.train.precision import matmul_peak
from nexusdsl.train.session import build, configure
from nexusdsl.train.threads import threads_for
from tests.conftest import ROOT
from tests.train.models import FAST, write

# No dropout: a step is a function of the batch and the weights alone.
DEEP = """nexus 0.1
import std.nn
modality text = bytes(code = 0)

model Deep(dim = 32, heads = 2) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  repeat 2 {
    x = x + attention(rmsnorm(x), heads = heads, causal = true)
    x = x + mlp(rmsnorm(x), mult = 2)
  }
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""

LM = "examples/tiny_lm.nx"
SMALL_LM = {"dim": 32, "depth": 2, "heads": 2, "batch": 16, "context": 32, "eval_batches": 8,
            "threads": 1, "time": 0}


def test_bf16_reaches_the_heldout_bits_per_byte_of_fp32():
    fp32 = nexusdsl.train(LM, steps=150, **SMALL_LM)
    bf16 = nexusdsl.train(LM, steps=150, precision="bf16", **SMALL_LM)
    assert fp32.after["bpb"] < fp32.before["bpb"] - 2  # both learned something
    assert abs(bf16.after["bpb"] - fp32.after["bpb"]) <= 0.05, (bf16.after, fp32.after)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def session_for(path, precision, **overrides):
    program = nexusdsl.load(path)
    config = configure(program, None, {**FAST, "precision": precision, "optimizer": "sgd",
                                        "lr": 0.1, "clip": 0.0, "schedule": "constant",
                                        **overrides})
    config.optimizer.kwargs["momentum"] = 0.0
    config.schedule.kwargs["warmup"] = 0
    return build(program, None, config, distributed.Dist())


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_a_step_is_autocast_forward_with_float32_master_weights(tmp_path, precision, dtype):
    """Against a hand-written step: the forward and the loss under torch.autocast, backward,
    SGD on the float32 weights; for fp16 the backward pass of the loss times GradScaler's
    first scale, 2^16, and the gradients divided by it again (a power of two: exact)."""
    s = session_for(write(tmp_path, DEEP), precision)
    reference = copy.deepcopy(s.trainee)
    prepare_optimizer(s)
    x = local_batch(s, 0)["bytes"]
    with torch.autocast("cpu", dtype=dtype):
        logits = reference(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    assert logits.dtype == dtype  # the matrix products ran in the low precision
    scale = 2.0**16 if precision == "fp16" else 1.0
    (loss * scale).backward()
    step_loss, _ = train_step(s, 0, 0.1)
    assert float(step_loss) == pytest.approx(float(loss.detach()), abs=1e-6)
    trained = dict(s.trainee.named_parameters())
    for name, p in reference.named_parameters():
        assert trained[name].dtype == torch.float32
        torch.testing.assert_close(trained[name].detach(), (p - 0.1 * p.grad / scale).detach(),
                                   rtol=0, atol=1e-6)


def test_fp16_skips_a_step_whose_scaled_gradients_overflow(tmp_path):
    s = session_for(write(tmp_path, DEEP), "fp16")
    prepare_optimizer(s)
    assert s.precision.scaler is not None
    before = {n: p.detach().clone() for n, p in s.trainee.named_parameters()}
    s.precision.restore({**s.precision.state(), "scale": 3e38})  # loss x scale: inf
    train_step(s, 0, 0.1)
    for name, p in s.trainee.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"{name} changed"
    assert s.precision.state()["scale"] == pytest.approx(1.5e38)  # backed off by half
    s.precision.restore({**s.precision.state(), "scale": 2.0**16})
    train_step(s, 1, 0.1)  # a scale that fits: the step is taken
    assert any(not torch.equal(p.detach(), before[n]) for n, p in s.trainee.named_parameters())


def test_fp16_checkpoints_record_the_loss_scale_and_resume_with_it(tmp_path):
    path = write(tmp_path, DEEP)
    run = tmp_path / "run"
    nexusdsl.train(str(path), steps=2, precision="fp16", out=run, **FAST)
    state = json.loads((run / "step-00000002" / "state.json").read_text())
    assert state["grad_scaler"] == {"scale": 65536.0, "growth_factor": 2.0,
                                    "backoff_factor": 0.5, "growth_interval": 2000,
                                    "_growth_tracker": 2}
    assert state["config"]["precision"] == "fp16"
    resumed = nexusdsl.train(str(path), steps=3, precision="fp16", out=run, resume=True, **FAST)
    assert resumed.steps == 3
    state = json.loads((run / "step-00000003" / "state.json").read_text())
    assert state["grad_scaler"]["_growth_tracker"] == 3  # counted on from the checkpoint's 2


def test_a_bf16_frozen_part_trains_beside_float32_ones_and_keeps_its_dtype(tmp_path):
    """A frozen bf16 block (as a bf16 checkpoint bound and frozen leaves it) under bf16
    autocast: the float32 parts train, the frozen part is bit for bit the same, and the
    checkpoint holds each tensor in its own dtype."""
    s = session_for(write(tmp_path, DEEP), "bf16", freeze=["blocks.0"])
    frozen = {n: p for n, p in s.trainee.named_parameters() if n.startswith("model.blocks.0.")}
    assert frozen and not any(p.requires_grad for p in frozen.values())
    with torch.no_grad():
        for p in frozen.values():
            p.data = p.data.to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in s.trainee.named_parameters()}
    prepare_optimizer(s)
    train_step(s, 0, 0.1)
    s.step, s.out = 1, tmp_path / "run"
    for name, p in s.trainee.named_parameters():
        if name in frozen:
            assert p.dtype == torch.bfloat16 and torch.equal(p, before[name])
        else:
            assert p.dtype == torch.float32 and not torch.equal(p.detach(), before[name])
    saved = load_file(save(s) / "model.safetensors")
    dtypes = {name: t.dtype for name, t in saved.items()}
    assert {d for n, d in dtypes.items() if n.startswith("blocks.0.")} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if not n.startswith("blocks.0.")} == {torch.float32}


def test_throughput_is_model_flops_over_the_measured_peak(tmp_path):
    """MFU = units per second x FLOPs per unit (3 x a forward's: 2 x in x out per token for
    a linear layer) / the matmul peak; the metrics line's figures agree with each other."""
    path = write(tmp_path, """nexus 0.1
modality text = bytes(code = 0)

model Lin {
  input tokens: text[B, T]
  output logits = linear(embed(tokens, 16), 256)
}
""")
    graph = nexusdsl.compile(path).graph
    throughput = Throughput.of(graph, 32, "tok", 1e9, 2)
    assert throughput.flops_per_unit == pytest.approx(3 * 2 * 16 * 256, rel=0.05)
    assert throughput.peak == 2e9
    assert throughput.mfu(1000.0) == pytest.approx(1000 * throughput.flops_per_unit / 2e9)
    run = tmp_path / "run"
    nexusdsl.train(str(path), steps=2, out=run, **FAST)
    line = next(m for m in metrics.read(run) if m["split"] == "train")
    with threads_for(FAST["threads"]):  # the run's threads: the peak it measured
        peak = matmul_peak(torch.float32)
        assert peak == matmul_peak(torch.float32)  # measured once per process
    expected = line["tok_per_s"] * Throughput.of(graph, 32, "tok", peak, 1).flops_per_unit / peak
    assert line["mfu"] == pytest.approx(expected, rel=1e-3, abs=1e-5)


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_the_train_command_takes_precision_and_accumulate(tmp_path):
    path = write(tmp_path, DEEP)
    run = nexus("train", path, "--steps", "2", "--batch", "8", "--context", "16",
                "--precision", "bf16", "--accumulate", "2", "--set", "eval_batches=1",
                "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    assert "matmul peak: " in run.stdout and " in bf16 with " in run.stdout
    state = json.loads((tmp_path / "run" / "step-00000002" / "state.json").read_text())
    assert (state["config"]["precision"], state["config"]["accumulate"]) == ("bf16", 2)
    bad = nexus("train", path, "--precision", "bf17", "--out", tmp_path / "bad")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("error: --precision: precision must be one of fp32, bf16, "
                                  "fp16, got 'bf17'")


@pytest.mark.parametrize("setting,message", [
    ("precision = bf17", "train setting `precision`: precision must be one of fp32, bf16, "
                         "fp16, got 'bf17'"),
    ("compile = 1", "train setting `compile`: compile must be true or false, got 1"),
    ("checkpoint = 3", "train setting `checkpoint`: checkpoint is true, false or a list of "
                       "repeat steps or globs"),
    ("accumulate = 0", "train setting `accumulate`: accumulate must be a whole number >= 1"),
])
def test_a_step_setting_s_mistake_is_located(tmp_path, setting, message):
    path = write(tmp_path, DEEP, train=f"train Deep {{\n  {setting}\n}}\n")
    with pytest.raises(NexusError) as info:
        nexusdsl.train(str(path), steps=1)
    assert info.value.render().startswith(f"{path}:15:3: error: {message}")
