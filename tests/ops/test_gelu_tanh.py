"""gelu against the activations transformers' configs name: `hidden_act = "gelu"` (BERT, ViT)
is `gelu`, `"gelu_pytorch_tanh"` (Gemma) and `"gelu_new"` (GPT-2) are `gelu(approx = tanh)`."""

import pytest
import torch
from transformers.activations import ACT2FN

from nexusdsl.ops import REGISTRY

from .conftest import build, tt


@pytest.mark.parametrize("hidden_act,approx", [("gelu", "none"), ("gelu_pytorch_tanh", "tanh"),
                                               ("gelu_new", "tanh")])
def test_gelu_is_the_transformers_activation_of_that_name(hidden_act, approx):
    b = build("gelu", tt("B", ("d", 64)), approx=approx)
    x = torch.linspace(-8, 8, 64 * 5, dtype=torch.float64).view(5, 64)
    torch.testing.assert_close(b(x), ACT2FN[hidden_act](x), rtol=1e-12, atol=1e-12)
    portable = REGISTRY["gelu"].lower_portable(b.attrs)  # the form MLIR and IREE run
    torch.testing.assert_close(portable(b.module, x), ACT2FN[hidden_act](x), rtol=1e-12,
                               atol=1e-12)


def test_the_two_forms_differ_so_the_choice_matters():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    exact, approx = (REGISTRY["gelu"].torch_fn(REGISTRY["gelu"].Attrs(approx=a))(x)
                     for a in ("none", "tanh"))
    assert (exact - approx).abs().max() > 1e-4
