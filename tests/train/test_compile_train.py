"""`compile = true` / `--compile`: the training step's model through torch.compile."""

import pytest
import torch

import nexusdsl
from nexusdsl.train import distributed
from nexusdsl.train.loop import prepare_optimizer
from nexusdsl.train.session import build, configure
from tests.train.models import FAST, TINY, write


def test_compiled_training_follows_the_eager_loss_curve(tmp_path):
    """The same losses step by step (dropout included: the compiled graph draws its masks
    from torch's generator like the eager one), and the same weights at the end."""
    path = write(tmp_path, TINY)
    fast = {**FAST, "steps": 4, "eval_batches": 1, "lr": 1e-2}
    eager = nexusdsl.train(str(path), **fast)
    compiled = nexusdsl.train(str(path), compile=True, **fast)
    losses = [h["loss"] for h in eager.history]
    assert len(losses) == 4 and losses[-1] != losses[0]
    assert [h["loss"] for h in compiled.history] == pytest.approx(losses, rel=1e-5, abs=1e-5)
    assert compiled.after["loss"] == pytest.approx(eager.after["loss"], rel=1e-5, abs=1e-5)
    # AdamW moves every weight by about lr per step whatever its gradient's size, so a
    # rounding difference in a near-zero gradient shows; bound it at a tenth of one step
    for name, weight in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[name], weight, rtol=0,
                                   atol=1e-3)


def test_the_optimizer_steps_the_model_s_own_parameters(tmp_path):
    """torch.compile wraps what the step calls; the optimizer holds the trainee's parameters
    (not a copy), so checkpoints and the returned model are the trained ones."""
    program = nexusdsl.load(write(tmp_path, TINY))
    s = build(program, None, configure(program, None, {**FAST, "compile": True}),
              distributed.Dist())
    prepare_optimizer(s)
    assert s.net is not s.trainee and s.net._orig_mod is s.trainee
    held = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in s.trainee.parameters() if p.requires_grad}
