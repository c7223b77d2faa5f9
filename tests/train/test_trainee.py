"""Prompt tuning, freezing, and the auxiliary-loss protocol."""

import copy

import pytest
import torch
import torch.nn.functional as F

import nexusdsl
from nexusdsl.train import distributed
from nexusdsl.train.generate import sample
from nexusdsl.train.loop import evaluate, local_batch, prepare_optimizer, train_step
from nexusdsl.train.session import build, configure, from_checkpoint
from tests.train.models import FAST, TINY, write


def initial_state(path):
    return {k: v.clone() for k, v in nexusdsl.compile(path).state_dict().items()}


def test_prompt_tuning_changes_only_the_prefix(tmp_path):
    path = write(tmp_path, TINY)
    before = initial_state(path)
    r = nexusdsl.train(str(path), prefix=4, steps=25, lr=3e-2, out=tmp_path / "run", **FAST)
    after = r.model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), f"{key} changed"
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "step-00000025" / "model.safetensors")
    assert saved["@prefix"].shape == (4, 32)
    session = build(nexusdsl.load(path), None, configure(nexusdsl.load(path), None,
                                                        {"prefix": 4, **FAST}), distributed.Dist())
    assert not torch.equal(session.trainee.prefix.detach(), saved["@prefix"])  # it trained
    assert r.after["loss"] < r.before["loss"]
    # eval and generate rebuild the prefix from the checkpoint
    restored = from_checkpoint(nexusdsl.load(path), None, tmp_path / "run")
    assert torch.equal(restored.trainee.prefix.detach(), saved["@prefix"])
    assert evaluate(restored) == pytest.approx(r.after)
    text = sample(restored.trainee, "logits", b"The ", 8, restored.config.context, seed=1)
    assert len(text) == 8


def test_the_prefix_enters_after_the_embedding_and_leaves_the_outputs(tmp_path):
    path = write(tmp_path, TINY)
    program = nexusdsl.load(path)
    s = build(program, None, configure(program, None, {"prefix": 3}), distributed.Dist())
    s.trainee.eval()
    x = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = s.trainee(x)
        # reference: the same layers applied by hand to [prefix; embed(x)]
        m = s.module
        h = torch.cat([s.trainee.prefix.expand(2, -1, -1), F.embedding(x, m.tok.weight)], 1)
        h = h + m.attention(m.rmsnorm(h))
        h = h + m.dropout(m.mlp.linear_1(m.mlp.gelu(m.mlp.linear(m.rmsnorm_1(h)))))
        ref = F.linear(m.rmsnorm_2(h), m.tok.weight)[:, 3:]
    assert got.shape == (2, 5, 256)
    torch.testing.assert_close(got, ref)


def test_freeze_keeps_the_named_nodes_and_their_ties(tmp_path):
    path = write(tmp_path, TINY)
    before = initial_state(path)
    after = nexusdsl.train(str(path), freeze=["tok"], steps=3, **FAST).model.state_dict()
    assert torch.equal(after["tok.weight"], before["tok.weight"])
    assert torch.equal(after["unembed.weight"], before["unembed.weight"])  # tied to tok
    assert not torch.equal(after["attention.qkv.weight"], before["attention.qkv.weight"])


def test_freezing_an_unknown_node_is_located(tmp_path):
    path = write(tmp_path, TINY, train="\ntrain Tiny {\n  freeze = [tok, blocks]\n}\n")
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.train(str(path), steps=1, **FAST)
    rendered = info.value.render()
    assert rendered.startswith(f"{path}:14:3: error: freeze: Tiny has no node `blocks`")


def test_aux_losses_are_added_and_cleared(tmp_path):
    """An op module that sets `aux_loss` during forward (as MoE balance losses do) adds it to
    the step's loss: checked against a hand-made SGD step on loss + aux."""
    path = write(tmp_path, TINY)
    program = nexusdsl.load(path)
    config = configure(program, None, {**FAST, "optimizer": "sgd", "lr": 0.1, "clip": 0.0,
                                        "schedule": "constant"})
    config.optimizer.kwargs["momentum"] = 0.0
    config.schedule.kwargs["warmup"] = 0
    s = build(program, None, config, distributed.Dist())
    norm = s.module.rmsnorm_2

    def set_aux(module, args, out):
        module.aux_loss = 5.0 * module.weight.square().sum()

    reference = copy.deepcopy(s.trainee)
    prepare_optimizer(s)
    norm.register_forward_hook(set_aux)
    batch = local_batch(s, 0)
    reference.train()
    torch.manual_seed(config.seed)  # the same dropout mask as the training step
    x = batch["bytes"]
    logits = reference(x[:, :-1])
    main = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    w = reference.model.rmsnorm_2.weight
    (main + 5.0 * w.square().sum()).backward()
    torch.manual_seed(config.seed)
    train_step(s, 0, 0.1)
    torch.testing.assert_close(norm.weight.detach(), (w - 0.1 * w.grad).detach())
    assert norm.aux_loss is None  # read and cleared by the loop
