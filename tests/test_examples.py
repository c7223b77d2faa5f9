"""Every shipped example compiles, runs forward and backward, and its summary counts match the
module's own parameters."""

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.summary import summarize
from tests.conftest import EXAMPLES, random_inputs


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_forward_and_backward(path):
    program = nexusdsl.load(path)
    for name in program.models:
        model = nexusdsl.compile(program, name)
        out = model(*random_inputs(model.graph))
        outs = list(out.values()) if isinstance(out, dict) else [out]
        assert all(torch.isfinite(o).all() for o in outs)
        sum(o.float().square().mean() for o in outs).backward()
        assert any(p.grad is not None for p in model.parameters())
        info = summarize(model.graph)
        assert info["params"]["total"] == sum(p.numel() for p in model.parameters())
        assert info["params"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
