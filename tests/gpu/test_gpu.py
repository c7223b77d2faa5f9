"""On a GPU (tests/gpu/conftest.py deselects these without one): training per objective,
two-GPU torchrun (DDP and --shard), IREE's CUDA backend against eager, Hyena in bf16, an MoE
forward without host syncs, and resume bit for bit. Written without a GPU to run them on:
docs/gpu.md says which have been run where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from tests.conftest import ROOT
from tests.train.models import TINY, write

QUICK = ["--steps", "3", "--batch", "8", "--set", "eval_batches=1", "--quiet"]


def nexus(*args, env=None, timeout=900):
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert run.returncode == 0 and "Traceback" not in run.stderr, \
        f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return run


# (file, extra flags): every objective, each on a model it fits
OBJECTIVES = {
    "next_token": ("tiny", ["--context", "32"]),
    "denoise": ("tiny", ["--context", "32", "--set", "objective=denoise"]),
    "contrastive": ("examples/thann.nx", ["--data", "digits", "--set", "dim=32"]),
    "classify": ("examples/thann.nx", ["--data", "digits", "--set", "dim=32",
                                       "--set", "objective=classify"]),
    "ppo": ("examples/thann.nx", ["--data", "digits", "--set", "dim=32", "--set",
                                  "objective=ppo", "--set",
                                  "reward=nexusdsl.train.ppo:match_label"]),
}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_nexus_train_on_cuda(tmp_path, objective):
    """Evaluation before step 1, three steps, evaluation and a checkpoint, all on the GPU;
    then nexus eval of that checkpoint on the GPU gives the CPU's loss (TF32 and summation
    order apart). PPO's metrics count discrete rewards, which one flipped argmax changes:
    there the GPU's evaluation only has to run."""
    file, flags = OBJECTIVES[objective]
    path = write(tmp_path, TINY) if file == "tiny" else file
    nexus("train", path, "--device", "cuda", "--out", tmp_path / "run", *QUICK, *flags)
    saved = ckpt.load(tmp_path / "run")
    assert saved.step == 3
    assert all(bool(torch.isfinite(t).all()) for t in saved.model.values()
               if t.is_floating_point())
    on = [json.loads(nexus("eval", path, "-c", tmp_path / "run", "--json", "--device", d,
                           "--batches", 1).stdout) for d in ("cuda", "cpu")]
    assert on[0]["step"] == on[1]["step"] == 3
    if objective != "ppo":
        assert on[0]["loss"] == pytest.approx(on[1]["loss"], rel=1e-3, abs=1e-4)


def test_generate_and_prune_take_the_gpu(tmp_path):
    path = write(tmp_path, TINY)
    nexus("train", path, "--device", "cuda", "--out", tmp_path / "run", *QUICK,
          "--context", "32")
    text = nexus("generate", path, "-c", tmp_path / "run", "--prompt", "The ", "-n", 8,
                 "--device", "cuda").stdout
    assert text.startswith("The ")
    nexus("prune", path, "-c", tmp_path / "run", "--amount", 0.5, "--device", "cuda",
          "--out", tmp_path / "pruned", "--batches", 1)
    assert ckpt.load(tmp_path / "pruned").state["ir"] is not None


@pytest.mark.gpus(2)
@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "shard"])
def test_two_gpus_under_torchrun(tmp_path, shard):
    """DDP and FSDP on two GPUs with --out: the held-out evaluation before step 1 and the
    checkpoints go through the gloo half of the process group; the result equals one process
    on the same global batch, as on the CPU (tests/train/test_distributed.py)."""
    from tests.train.test_distributed import PLAIN, assert_same_weights, torchrun

    path = write(tmp_path, PLAIN)
    nexusdsl.train(str(path), steps=4, batch=8, context=32, eval_batches=2,
                   out=tmp_path / "one", device="cuda")
    ranks = torchrun(path, tmp_path / "two", "--device", "cuda", *(["--shard"] if shard else []))
    assert [r["world"] for r in ranks] == [2, 2]
    assert_same_weights(ckpt.load(tmp_path / "two"), ckpt.load(tmp_path / "one"))


def test_iree_cuda_matches_eager_on_the_gpu():
    run = nexus("run", "examples/tiny_lm.nx", "--backend", "iree-cuda", "--device", "cuda",
                "--check", "--size", "B=2", "--size", "T=16")
    assert "(ok," in run.stdout


def test_iree_module_returns_outputs_on_the_callers_device():
    module = nexusdsl.compile("examples/tiny_lm.nx", target="iree-cuda", device="cuda")
    tokens = torch.randint(0, 256, (2, 16), device="cuda")
    got = module(tokens)
    with torch.no_grad():
        want = module.module.eval()(tokens)  # the eager module IREE was compiled from
    if torch.is_tensor(got):
        got, want = {"out": got}, {"out": want}
    for name, tensor in got.items():
        assert tensor.device == tokens.device, name
        torch.testing.assert_close(tensor, want[name], rtol=1e-3, atol=1e-3)


HYENA = """nexus 0.1
model H(dim = 64) {
  input x: float[B, T, dim]
  output y = hyena(x, order = 2, filter = 32, features = 9, max = 4096)
}
"""


def test_hyena_in_bf16_follows_float32():
    """The same weights in bf16 and float32 at 4,096 positions: the filters are one bf16
    rounding apart, the outputs within bf16's precision of the output's scale."""
    from nexusdsl.ops.hyena_torch import implicit_filters

    torch.manual_seed(0)
    exact = nexusdsl.compile(nexusdsl.loads(HYENA, "h.nx"), device="cuda").eval()
    half = nexusdsl.compile(nexusdsl.loads(HYENA, "h.nx"), device="cuda").eval()
    half.load_state_dict(exact.state_dict())
    half.to(torch.bfloat16)
    x = torch.randn(2, 4096, 64, device="cuda")
    with torch.no_grad():
        want, got = exact(x), half(x.bfloat16())
        node = next(n for n in exact.graph.nodes() if n.op == "hyena")
        attrs = type(nexusdsl.ops.REGISTRY["hyena"]).Attrs.model_validate(node.attrs)
        rounded = half.get_submodule(node.name)
        weights = exact.get_submodule(node.name)
        weights.load_state_dict({k: v.float() for k, v in rounded.state_dict().items()})
        f32 = implicit_filters(weights, 4096, attrs, x[0, 0, 0])
        bf16 = implicit_filters(rounded, 4096, attrs, x[0, 0, 0].bfloat16())
    torch.testing.assert_close(bf16.float(), f32, rtol=2**-8, atol=1e-6)
    error = (got.float() - want).abs().max() / want.abs().max()
    assert error < 3e-2, float(error)


MOE = """nexus 0.1
import std.nn
model M(dim = 64, n = 8, k = 2) {
  input x: float[B, T, dim]
  experts ffn = n of mlp(mult = 2)
  output y = moe(x, ffn, router = topk(k = k))
}
"""


def test_moe_forward_does_not_wait_for_the_gpu():
    """Under set_sync_debug_mode("error") any host sync (a count read on the CPU, a
    `.tolist()` of routing counts) raises."""
    module = nexusdsl.compile(nexusdsl.loads(MOE, "moe.nx"), device="cuda").eval()
    x = torch.randn(4, 128, 64, device="cuda")
    with torch.no_grad():
        module(x)  # the first call may build constants
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            module(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


RESUME = textwrap.dedent("""
    import sys, torch, nexusdsl
    torch.use_deterministic_algorithms(True, warn_only=True)  # a warning names any that is not
    path, out, until = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nexusdsl.train(path, steps=8, batch=8, context=32, eval_batches=2, out=out, device="cuda",
                   until=until or None, resume=until == 0 and out.endswith("b"), threads=1)
""")


def test_resume_is_bit_exact_on_cuda(tmp_path):
    """8 steps straight == 4 steps, a stop, 4 resumed steps, with dropout drawn on the GPU
    (its generator's state comes back from the checkpoint). Deterministic kernels, so that
    two runs can be equal at all."""
    path = write(tmp_path, TINY)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    for out, until in [("a", 0), ("b", 4), ("b", 0)]:
        run = subprocess.run([sys.executable, "-c", RESUME, str(path), str(tmp_path / out),
                              str(until)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, run.stderr[-4000:]
    a, b = ckpt.load(tmp_path / "a"), ckpt.load(tmp_path / "b")
    assert a.step == b.step == 8 and len(b.state["rng"]["cuda"]) == 1
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
