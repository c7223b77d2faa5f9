"""Gradient accumulation (`accumulate = N`): N micro-batches per optimizer step."""

import copy

import pytest
import torch

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import distributed
from nexusdsl.train.loop import local_batch, prepare_optimizer, train_step
from nexusdsl.train.session import build, configure
from tests.train.models import FAST, write

# Two repeat steps, no dropout: a batch's gradient is a function of its examples alone.
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


def session_after_one_step(path, accumulate: int, aux: bool = False):
    """A session of batch 32 trained one SGD step (lr 0.1, no momentum, no clipping) with
    `accumulate` micro-batches; with `aux`, an auxiliary loss 5 |w|^2 of a norm's weight."""
    program = nexusdsl.load(path)
    config = configure(program, None, {**FAST, "batch": 32, "accumulate": accumulate,
                                        "optimizer": "sgd", "lr": 0.1, "clip": 0.0,
                                        "schedule": "constant"})
    config.optimizer.kwargs["momentum"] = 0.0
    config.schedule.kwargs["warmup"] = 0
    s = build(program, None, config, distributed.Dist())
    if aux:
        s.module.rmsnorm.register_forward_hook(
            lambda m, args, out: setattr(m, "aux_loss", 5.0 * m.weight.square().sum()))
    prepare_optimizer(s)
    loss, units = train_step(s, 0, 0.1)
    return s, float(loss), units


def test_four_batches_of_8_equal_one_batch_of_32(tmp_path):
    path = write(tmp_path, DEEP)
    whole, whole_loss, whole_units = session_after_one_step(path, 1)
    parts, parts_loss, parts_units = session_after_one_step(path, 4)
    assert parts.config.batch == 32 and parts.config.accumulate == 4
    assert (whole_units, parts_units) == (32 * 32, 32 * 32)
    assert parts_loss == pytest.approx(whole_loss, abs=1e-6)
    before = nexusdsl.compile(path).state_dict()
    for name, weight in whole.module.state_dict().items():
        assert not torch.equal(weight, before[name]), f"{name} did not train"
        torch.testing.assert_close(parts.module.state_dict()[name], weight, rtol=0, atol=1e-6)


def test_the_accumulated_step_is_the_whole_batch_gradient_by_hand(tmp_path):
    """The reference: one SGD step on the mean cross-entropy of the 32 examples plus the
    auxiliary loss counted once, computed on a copy of the model by hand."""
    path = write(tmp_path, DEEP)
    program = nexusdsl.load(path)
    config = configure(program, None, {**FAST, "batch": 32})
    s = build(program, None, config, distributed.Dist())
    reference = copy.deepcopy(s.trainee)
    x = local_batch(s, 0)["bytes"]
    logits = reference(x[:, :-1])
    w = reference.model.rmsnorm.weight
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    (loss + 5.0 * w.square().sum()).backward()
    trained, _, _ = session_after_one_step(path, 4, aux=True)
    torch.testing.assert_close(trained.module.rmsnorm.weight.detach(),
                               (w - 0.1 * w.grad).detach(), rtol=0, atol=1e-6)
    assert trained.module.rmsnorm.aux_loss is None  # read and cleared at each micro-batch
    for name, p in reference.named_parameters():
        torch.testing.assert_close(dict(trained.trainee.named_parameters())[name].detach(),
                                   (p - 0.1 * p.grad).detach(), rtol=0, atol=1e-6)


def test_a_batch_that_does_not_split_is_a_located_error(tmp_path):
    path = write(tmp_path, DEEP, train="train Deep {\n  batch = 12\n  accumulate = 5\n}\n")
    with pytest.raises(NexusError) as info:
        nexusdsl.train(str(path), steps=1)
    assert info.value.render().startswith(
        f"{path}:16:3: error: train setting `accumulate`: batch 12 does not split into "
        "accumulate = 5 equal micro-batches")
    plain = write(tmp_path, DEEP, name="plain.nx")
    with pytest.raises(NexusError) as info:
        nexusdsl.train(str(plain), steps=1, accumulate=0)
    assert info.value.render().endswith("error: --accumulate: accumulate must be a whole number "
                                   ">= 1 (the micro-batches of one optimizer step), got 0")
    with pytest.raises(NexusError) as info:
        nexusdsl.train(str(plain), steps=1, batch=6, accumulate=4)
    assert info.value.render().endswith("error: --batch: batch 6 does not split into "
                                   "accumulate = 4 equal micro-batches; choose a batch that "
                                   "is a multiple of it")
