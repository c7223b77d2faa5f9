"""Every example learns through the training layer (experts, axis layouts and modalities as
they land): a short run on data its inputs can take lowers its held-out loss well below the
loss of its initial weights, measured on the same held-out batches before and after."""

import math

import pytest

import nexusdsl
from nexusdsl.train.objectives import ports
from tests.conftest import EXAMPLES

# 30 steps at a learning rate of 3e-3 (the examples' own rates are 2e-3 to 6e-3; the default
# 1e-3 is meant for long runs) lower the next-byte models' held-out loss by 25% to 88%; the
# test asks for 10%. Two learn more slowly and get longer runs: the digit classifier sits near
# the uniform guess (ln 10) for 40 to 60 steps, depending on its initial weights, and halves its
# loss in 100; THANN's contrastive loss falls by 18% in 30 steps and by 31% in 60.
SHORT = {"steps": 30, "batch": 8, "lr": 3e-3, "eval_batches": 4, "save_every": 0}
LONGER = {"DigitsClassifier": {"steps": 100, "batch": 32}, "THANN": {"steps": 60}}


def settings_for(program, model):
    """Digits for image models (classify a [B, classes] output, else caption them), the
    default corpus for byte models; a short context unless the model fixes its own (MNN's
    16 x 16 x 16 grid is 4096 bytes, so it takes two windows per batch)."""
    settings = dict(SHORT, **LONGER.get(model, {}))
    inputs, outputs = ports(program.elaborate(model))
    if any(p.kind == "patches" for p in inputs):
        settings["data"] = "digits"
        settings["objective"] = "classify" if outputs[0].type.rank == 2 else "next_token"
    context = program.train_config(model).get("context")
    if context is None:
        settings["context"] = 32
    elif context[0] >= 1024:
        settings["batch"] = 2
    return settings


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_lowers_its_held_out_loss_in_a_short_run(path):
    program = nexusdsl.load(path)
    for model in program.models:
        settings = settings_for(program, model)
        r = nexusdsl.train(program, model, **settings)
        assert r.steps == settings["steps"]
        assert all(math.isfinite(h["loss"]) for h in r.history), f"{model}: {r.history}"
        before, after = r.before["loss"], r.after["loss"]
        assert after < 0.9 * before, f"{model}: held-out loss {before:.3f} -> {after:.3f}"
