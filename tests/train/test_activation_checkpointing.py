"""Activation checkpointing per repeat step (`checkpoint = true` or a list of steps)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import checkpointing, distributed
from nexusdsl.train.loop import prepare_optimizer, train_step
from nexusdsl.train.session import build, configure
from tests.train.models import FAST, TINY, write

# Four repeat steps with dropout inside them: recomputation must draw the same masks.
DEEP = """nexus 0.1
import std.nn
modality text = bytes(code = 0)

model Deep(dim = 32, heads = 2, depth = 4) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  repeat depth {
    x = x + attention(rmsnorm(x), heads = heads, causal = true)
    x = x + (mlp(rmsnorm(x), mult = 4) |> dropout(0.1))
  }
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""


def loss_of(model, x):
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


def gradients(model, x, seed=0):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in both runs
    loss = loss_of(model, x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def tokens(batch=4, length=33):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


def test_checkpointed_steps_give_the_gradients_of_plain_autograd(tmp_path):
    plain = nexusdsl.compile(write(tmp_path, DEEP))
    steps = checkpointing.chosen_steps(plain.graph, True, None)
    assert steps == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    checked = copy.deepcopy(plain)
    split = checkpointing.install(checked, steps)
    wrapped = [m for m in split.modules() if isinstance(m, checkpointing.Checkpointed)]
    assert len(wrapped) == 4  # one region per step, the embedding and head outside
    x = tokens()
    loss, expected = gradients(plain, x)
    checked_loss, got = gradients(checked, x)
    torch.testing.assert_close(checked_loss, loss, rtol=0, atol=1e-6)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    # evaluation and no_grad run the regions as they are
    checked.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(checked(x[:, :-1]), plain(x[:, :-1]), rtol=0, atol=1e-6)
    assert checked.state_dict().keys() == plain.state_dict().keys()


def test_recomputation_lowers_the_measured_peak_memory(tmp_path):
    """Peak bytes allocated during forward + backward (torch's profiler, every CPU
    allocation and free in order): checkpointing keeps only each step's input."""
    path = write(tmp_path, DEEP)
    plain = nexusdsl.compile(path, dim=64, depth=4)
    checked = copy.deepcopy(plain)
    checkpointing.install(checked, checkpointing.chosen_steps(checked.graph, True, None))
    x = tokens(8, 129)
    peaks = {name: peak_bytes(model, x) for name, model in (("plain", plain),
                                                             ("checked", checked))}
    assert peaks["checked"] < 0.6 * peaks["plain"], peaks


def peak_bytes(model, x) -> int:
    model.train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        loss_of(model, x).backward()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_a_list_chooses_steps_by_name_scope_or_glob(tmp_path):
    graph = nexusdsl.compile(write(tmp_path, DEEP)).graph
    assert checkpointing.chosen_steps(graph, ["blocks"], None) == [
        "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert checkpointing.chosen_steps(graph, ["blocks.2"], None) == ["blocks.2"]
    assert checkpointing.chosen_steps(graph, ["blocks.[13]"], None) == ["blocks.1", "blocks.3"]
    assert checkpointing.chosen_steps(graph, False, None) == []


def test_only_the_chosen_steps_are_recomputed(tmp_path):
    plain = nexusdsl.compile(write(tmp_path, DEEP))
    checked = copy.deepcopy(plain)
    split = checkpointing.install(checked, ["blocks.1"])
    wrapped = [m for m in split.modules() if isinstance(m, checkpointing.Checkpointed)]
    assert len(wrapped) == 1
    # the region calls the step's own op modules (no copies): the parameters of blocks.1
    inner = {id(p) for p in wrapped[0].parameters()}
    assert inner == {id(p) for n, p in checked.named_parameters() if n.startswith("blocks.1.")}
    x = tokens()
    _, expected = gradients(plain, x)
    _, got = gradients(checked, x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_a_step_that_does_not_exist_is_a_located_error(tmp_path):
    path = write(tmp_path, DEEP, train='train Deep {\n  checkpoint = ["layers"]\n}\n')
    with pytest.raises(NexusError) as info:
        nexusdsl.train(str(path), steps=1, batch=2, context=8)
    assert info.value.render().startswith(
        f"{path}:15:3: error: checkpoint: `layers` names no repeat step of Deep (its steps: "
        "blocks.0 to blocks.3)")
    flat = write(tmp_path, TINY, name="flat.nx", train="train Tiny {\n  checkpoint = true\n}\n")
    with pytest.raises(NexusError) as info:
        nexusdsl.train(str(flat), steps=1, batch=2, context=8)
    assert info.value.render().startswith(
        f"{flat}:13:3: error: checkpoint: Tiny has no `repeat` steps")


def test_training_with_checkpointing_follows_plain_training(tmp_path):
    """The loop through `checkpoint = true`: the same losses as without, step by step."""
    path = write(tmp_path, DEEP)
    fast = dict(steps=4, batch=4, context=16, eval_batches=1, log_every=1, threads=1)
    plain = nexusdsl.train(str(path), **fast)
    checked = nexusdsl.train(str(path), checkpoint=True, **fast)
    assert [h["loss"] for h in checked.history] == pytest.approx(
        [h["loss"] for h in plain.history], abs=1e-6)
    assert len(plain.history) == 4


def sgd_step(path, checkpoint):
    """One SGD step (lr 0.1) of a session whose blocks.1.rmsnorm sets an auxiliary loss
    5 |w|^2 in its forward pass, as MoE balance losses are set."""
    program = nexusdsl.load(path)
    config = configure(program, None, {**FAST, "checkpoint": checkpoint, "optimizer": "sgd",
                                        "lr": 0.1, "clip": 0.0, "schedule": "constant"})
    config.optimizer.kwargs["momentum"] = 0.0
    config.schedule.kwargs["warmup"] = 0
    s = build(program, None, config, distributed.Dist())
    norm = s.module.get_submodule("blocks.1.rmsnorm")
    norm.register_forward_hook(
        lambda m, args, out: setattr(m, "aux_loss", 5.0 * m.weight.square().sum()))
    prepare_optimizer(s)
    torch.manual_seed(0)
    train_step(s, 0, 0.1)
    return s, norm


def test_an_auxiliary_loss_in_a_recomputed_step_counts_once(tmp_path):
    """The recomputation sets the auxiliary loss again after the loop read it: it is cleared,
    so the step equals plain autograd's and the next step does not find a stale one."""
    path = write(tmp_path, DEEP)
    plain, _ = sgd_step(path, False)
    checked, norm = sgd_step(path, True)
    assert norm.aux_loss is None
    for name, weight in plain.trainee.state_dict().items():
        torch.testing.assert_close(checked.trainee.state_dict()[name], weight, rtol=0,
                                   atol=1e-6)
