"""Every shipped example compiles, runs forward and backward, and its summary counts match the
module's own parameters."""

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.summary import summarize
from tests.conftest import EXAMPLES, random_inputs


def small_configuration(program, name):
    """An example whose defaults are a design's full size (THANN) trains a small configuration
    given in its train section: use those hyperparameters."""
    hypers = {p.name for p in program.model_ast(name).params}
    return {k: v for k, (v, _) in program.train_config(name).items() if k in hypers}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_forward_and_backward(path):
    program = nexusdsl.load(path)
    for name in program.models:
        model = nexusdsl.compile(program, name, **small_configuration(program, name))
        out = model(*random_inputs(model.graph))
        outs = list(out.values()) if isinstance(out, dict) else [out]
        assert all(torch.isfinite(o).all() for o in outs)
        sum(o.float().square().mean() for o in outs).backward()
        assert any(p.grad is not None for p in model.parameters())
        info = summarize(model.graph)
        assert info["params"]["total"] == sum(p.numel() for p in model.parameters())
        assert info["params"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
