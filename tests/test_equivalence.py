"""The `.nx` models equal hand-written PyTorch models: same parameter count, and with the
weights copied by name, the same outputs."""

import pytest
import torch

import nexusdsl
from tests.reference_models import GPT, TinyLM


def copy_weights(reference, compiled, names):
    compiled_state = compiled.state_dict()
    with torch.no_grad():
        for ours, theirs in names.items():
            compiled_state[theirs].copy_(reference.state_dict()[ours])


def unique_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("path,reference,hyper", [
    ("examples/tiny_lm.nx", TinyLM, dict(dim=128, depth=4, heads=4)),
    ("examples/tiny_lm.nx", TinyLM, dict(dim=64, depth=2, heads=8)),
    ("examples/gpt.nx", GPT, dict(dim=96, depth=3, heads=4)),
])
def test_matches_hand_written_reference(path, reference, hyper):
    torch.manual_seed(0)
    ref = reference(**hyper).eval()
    model = nexusdsl.compile(path, **hyper).eval()
    names = reference.nexus_names(hyper["depth"])
    assert unique_params(model) == unique_params(ref)
    expected_keys = set(names.values()) | {"unembed.weight"}
    assert set(model.state_dict()) == expected_keys
    copy_weights(ref, model, names)
    tokens = torch.randint(0, 256, (3, 37))
    torch.testing.assert_close(model(tokens), ref(tokens), atol=1e-6, rtol=0)
    torch.testing.assert_close(model(tokens=tokens), ref(tokens), atol=1e-6, rtol=0)


def test_tied_head_is_the_embedding():
    model = nexusdsl.compile("examples/tiny_lm.nx")
    assert model.get_parameter("unembed.weight") is model.get_parameter("tok.weight")


def test_gradients_reach_every_parameter():
    model = nexusdsl.compile("examples/gpt.nx")
    tokens = torch.randint(0, 256, (2, 16))
    model(tokens).logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
