"""Paths that must not wait for the device: on a GPU, reading a tensor's value on the host
(`.item()`, `.tolist()`, `int(t)`, `bool(t)`, `nonzero`, the singularity check of
`torch.linalg.inv`) or building a tensor from Python data (`torch.tensor(rows)`) stalls the
queue of kernels. No GPU here, so `no_host_reads` makes each of those Python-level reads fail
while the path runs on the CPU, and every path is compared with the reference it replaces.

Covered: the MoE device-side dropless dispatch (against the exact-block dispatch the CPU
uses), swarm's message matrix, the gather kernel of a compacted sparse mix, and reversible
recursion's backward pass (its matrices inverted once per backward, not at every step)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.passes.sparsity_pruning import SparsityPruning
from nexusdsl.ops import moe_torch
from nexusdsl.ops.fused_torch import gather_matmul, sparse_structure
from nexusdsl.ops.swarm import neighbours, normalize_topology
from nexusdsl.ops.swarm_torch import exchange, message_matrix
from tests.axis.test_reversible import pair, relative
from tests.passes.helpers import graph_of, modules, run, source
from tests.passes.test_sparsity import with_kernel


class HostRead(AssertionError):
    pass


def _refuse(name):
    def refuse(*args, **kwargs):
        raise HostRead(f"{name} reads the device from the host")
    return refuse


# Tensor methods and torch functions that read values back, or copy Python data in.
TENSOR_READS = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                "cpu", "numpy"]
TORCH_READS = [(torch, "tensor"), (torch, "as_tensor"), (torch, "nonzero"),
               (torch.linalg, "inv")]


@contextmanager
def no_host_reads():
    saved = [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in TENSOR_READS]
    saved += [(owner, name, getattr(owner, name)) for owner, name in TORCH_READS]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, _refuse(name))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.mark.parametrize("read", [
    lambda t: t.sum().item(), lambda t: t.tolist(), lambda t: bool(t[0] > 0),
    lambda t: int(t.max()), lambda t: float(t[0]), lambda t: [1, 2, 3][t.argmax()],
    lambda t: t.nonzero(), lambda t: torch.tensor([[1.0]]), lambda t: torch.linalg.inv(
        torch.eye(2))], ids=["item", "tolist", "bool", "int", "float", "index", "nonzero",
                             "tensor", "inv"])
def test_the_guard_catches_each_kind_of_host_read(read):
    t = torch.arange(3.0)
    with pytest.raises(HostRead), no_host_reads():
        read(t)
    read(t)  # and restores them afterwards


# ---------------------------------------------------------------------------- moe

MOE = """
import std.nn
model M(dim = 8, n = 4, k = 2) {{
  input x: float[B, T, dim]
  experts ffn = n of mlp(mult = 2)
  output y = moe(x, ffn, router = {router}, balance = 0.01, capacity = 0.0)
}}
"""
ROUTERS = ["topk(k = k)", "knn(k = 2, min_tokens = 3)", "hash()"]


def moe_outputs(model, x, upstream):
    """Output, the gradients of x and of every parameter, and the balance loss."""
    x = x.clone().requires_grad_(True)
    y = model(x)
    aux = getattr(model.moe, "aux_loss", None)
    grads = torch.autograd.grad((y * upstream).sum() + (aux if aux is not None else 0),
                                [x, *model.parameters()], allow_unused=True)
    return [y, aux, *grads]


@pytest.mark.parametrize("router", ROUTERS)
def test_moe_device_side_dropless_path_equals_the_exact_blocks(monkeypatch, router):
    model = nexusdsl.compile(nexusdsl.loads(MOE.format(router=router), "moe.nx"), seed=2,
                             dtype="f64")
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 8, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, 9, 8, generator=gen, dtype=torch.float64)
    exact = moe_outputs(model, x, upstream)  # on the CPU: blocks of the counted sizes
    with pytest.raises(HostRead), no_host_reads():
        moe_outputs(model, x, upstream)  # the exact blocks read the counts: the guard sees it
    monkeypatch.setattr(moe_torch, "HOST_READ_DEVICES", frozenset())  # as on a GPU
    with no_host_reads():
        device_side = moe_outputs(model, x, upstream)
    for want, got in zip(exact, device_side):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_moe_uses_the_exact_blocks_only_where_host_reads_are_free():
    assert moe_torch.reads_are_free(torch.device("cpu"))
    assert not moe_torch.reads_are_free(torch.device("cuda", 0))
    assert not moe_torch.reads_are_free(torch.device("meta"))


# ---------------------------------------------------------------------------- swarm

SWARM = """
import std.nn
model S {
  input x: float[B, T, 4]
  output y = swarm(x, 5 of mlp(mult = 1), topology = ring(2), rounds = 2, combine = mean)
}
"""


def test_swarm_forward_builds_no_tensor_from_python_rows():
    model = nexusdsl.compile(nexusdsl.loads(SWARM, "s.nx"), seed=0)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    links = neighbours(normalize_topology({"fn": "ring", "args": [2], "kwargs": {}}, 5), 5)
    with torch.no_grad(), no_host_reads():
        got = [model(x), model(x)]  # the second forward too: the copy is made once
    agents = list(model.swarm.agents)
    with torch.no_grad():  # the per-forward matrix of Python rows, as the op did before
        weights = message_matrix(links, x)
        states = torch.stack([agent(x) for agent in agents])
        for _ in range(2):
            heard = states + exchange(states, weights)
            states = torch.stack([a(h) for a, h in zip(agents, heard.unbind(0))])
    for y in got:
        assert torch.equal(y, states.mean(0))


# ---------------------------------------------------------------------------- sparse mix


def test_gathered_sparse_mix_reads_no_row_width_from_the_device():
    grid = "x: float[B, i=8, j=6, d=3]"
    dense = graph_of(source("  output y = mix(x, axes = [i, j], wiring = random(density = "
                            "0.2, seed = 4), bias = true)", grid))
    compact = with_kernel(run(dense, SparsityPruning), "gather")
    (node,) = [n for n in compact.nodes() if n.op == "sparse_mix"]
    m_dense, m_compact = modules(dense, compact)
    x = torch.randn(2, 8, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xr = x.clone().requires_grad_(True)
    with no_host_reads():
        y = m_compact(xr)
        (gx,) = torch.autograd.grad(y.square().sum(), [xr])
    xd = x.clone().requires_grad_(True)
    want = m_dense(xd)
    (gx_want,) = torch.autograd.grad(want.square().sum(), [xd])
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_want, rtol=1e-12, atol=1e-12)
    # the precomputed layout gives the very numbers of the layout computed per call
    (mix,) = [m for name, m in m_compact.named_modules() if name == node.name]
    structure = sparse_structure(48, 0.2, 4, False)
    xc = torch.randn(48, 5, dtype=torch.float64)
    with torch.no_grad():
        fast = mix._fn.structure(48, xc.device)
        assert torch.equal(gather_matmul(mix.weight, xc, fast[:5], 48, fast[5:]),
                           gather_matmul(mix.weight, xc, structure, 48))


# ---------------------------------------------------------------------------- reversible


def count_inversions(monkeypatch) -> list[int]:
    calls = [0]
    inv_ex = torch.linalg.inv_ex

    def counted(*args, **kwargs):
        calls[0] += 1
        return inv_ex(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "inv_ex", counted)
    return calls


@pytest.mark.parametrize("steps", [3, 12])
def test_reversible_backward_inverts_each_matrix_once_and_reads_nothing(monkeypatch, steps):
    rev, plain = pair(steps)
    calls = count_inversions(monkeypatch)
    x = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    upstream = torch.randn_like(x)
    names = [n for n, _ in rev.named_parameters()]
    xr = x.clone().requires_grad_(True)
    with no_host_reads():
        got = torch.autograd.grad(rev(xr), [xr, *rev.parameters()], upstream)
    # the body's matrices: mix over [i, d] (two), linear, and the step block's mix over d
    assert calls[0] == 4
    xp = x.clone().requires_grad_(True)
    want = torch.autograd.grad(plain(xp), [xp, *(plain.get_parameter(n.replace(
        "blocks.body.0.", "blocks.0.")) for n in names)], upstream)
    for name, a, b in zip(["x", *names], got, want):
        assert relative(a, b) < 1e-10, name


# ---------------------------------------------------------------------------- objectives


def test_the_denoise_loss_of_a_training_step_reads_nothing_back():
    from tests.train.models import TINY
    from tests.train.test_objectives import objective

    module, obj = objective(TINY, "denoise", mask=0.25, noise=0.1)
    module.eval()  # its dropout off, so that the reference sees the same function
    x = torch.randint(1, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    batch = obj.prepare({"bytes": x}, torch.Generator().manual_seed(2))
    with no_host_reads():
        loss = obj.loss(module, batch)
        loss.backward()
    with torch.no_grad():  # by hand: the mean cross-entropy over the corrupted positions
        logits = module(batch["input"]).log_softmax(-1)
        picked = -logits.gather(-1, x[..., None])[..., 0]
        want = picked[batch["corrupt"]].mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- training batches


def session_for_batches():
    from nexusdsl.train import distributed
    from nexusdsl.train.session import build, configure
    from tests.train.models import FAST, TINY

    program = nexusdsl.loads(TINY, "t.nx")
    config = configure(program, None, {**FAST, "objective": "denoise"})
    return build(program, None, config, distributed.Dist())


def test_batches_built_ahead_in_a_thread_are_the_batches_built_in_turn():
    import threading

    from nexusdsl.train.data import Prefetch
    from nexusdsl.train.loop import host_batch, local_batch

    s = session_for_batches()
    builders = set()

    def make(step):
        builders.add(threading.current_thread().name)
        return host_batch(s, step)

    batches = Prefetch(make, "cpu", ahead=2)
    try:
        for step in [0, 1, 2, 5, 6]:  # 5: a jump, as when a run resumes
            got, want = batches.take(step), local_batch(s, step)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want)
        assert sorted(batches.pending) == [7, 8]
    finally:
        batches.close()
    assert any(name.startswith("nexus-batches") for name in builders)


def test_byte_fields_ship_as_uint8_pinned_and_arrive_as_int64(monkeypatch):
    from nexusdsl.train.data import Prefetch

    pinned = []

    def pin(t):  # no CUDA here: record what would be pinned
        pinned.append(t.dtype)
        return t

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = {"bytes": torch.tensor([[0, 7, 255]]), "label": torch.tensor([3]),
             "ppo_seed": torch.tensor([2**40]), "corrupt": torch.tensor([[True, False, True]]),
             "image": torch.rand(1, 2)}
    batches = Prefetch(lambda step: batch, "cpu", ahead=0)
    batches.shipping = True  # as for a CUDA device
    host, narrowed = batches.host_batch(0)
    assert narrowed == {"bytes", "label"}
    assert host["bytes"].dtype == torch.uint8 and host["ppo_seed"].dtype == torch.int64
    assert len(pinned) == len(batch)
    got = batches.take(0)
    for k, v in batch.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
