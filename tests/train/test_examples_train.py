"""Every example trains through the training layer (experts, axis layouts and modalities as
they land): two steps with its own `train` section, on data its inputs can take."""

import pytest
import torch

import nexusdsl
from nexusdsl.train.objectives import ports
from nexusdsl.train.session import configure
from tests.conftest import EXAMPLES


def settings_for(program, model):
    """Digits for image models (classify a [B, classes] output, else caption them), the
    default corpus for byte models."""
    inputs, outputs = ports(program.elaborate(model))
    if any(p.kind == "patches" for p in inputs):
        kind = "classify" if outputs[0].type.rank == 2 else "next_token"
        return {"data": "digits", "objective": kind}
    return {}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_trains(path):
    program = nexusdsl.load(path)
    for model in program.models:
        fields = program.train_config(model)
        small = {"steps": 2, "batch": 2, "eval_batches": 1, "save_every": 0}
        if "context" not in fields:
            small["context"] = 16
        hyper = configure(program, model, {}).hyper  # the section's sizes (THANN's default is huge)
        initial = nexusdsl.compile(program, model, **hyper)
        before = {k: v.clone() for k, v in initial.state_dict().items()}
        r = nexusdsl.train(program, model, **small, **settings_for(program, model))
        assert r.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)
        after = r.model.state_dict()
        assert any(not torch.equal(after[k], before[k]) for k in before), f"{model}: no update"
