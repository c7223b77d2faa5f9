"""The registry as a whole: every op declared, documented, and torch-free until lowered."""

import subprocess
import sys

import pytest

from nexusdsl.ops import REGISTRY
from nexusdsl.ops.reference import shows_a_call

FAMILIES = {
    "core": {"linear", "layernorm", "rmsnorm", "dropout", "add", "sub", "mul", "scale", "shift",
             "concat", "split", "mean", "sum", "conv", "layout", "position", "identity"},
    "activations": {"relu", "leaky_relu", "hardtanh", "elu", "melu", "gelu", "silu", "tanh",
                    "sigmoid", "sort2", "modnorm", "softmax", "partial"},
    "mixers": {"attention"},
    "modality": {"embed", "unembed", "tag", "generate"},
}


def test_importing_the_ops_does_not_import_torch():
    code = "import sys, nexusdsl.ops; assert 'torch' not in sys.modules, 'torch was imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("family,names", FAMILIES.items())
def test_every_op_is_registered_in_its_family(family, names):
    for name in names:
        assert name in REGISTRY, name
        assert REGISTRY[name].family == family, name


PUBLIC = sorted(name for name, op in REGISTRY.items() if op.public)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_op_documents_its_nx_usage(name):
    """Its docstring writes a call of it in code (`linear(x, 4)`, `x |> relu`), which
    docs/ops.md shows as its usage."""
    doc = type(REGISTRY[name]).__doc__ or ""
    assert any(shows_a_call(p, name) for p in doc.split("\n\n")), (
        f"{name} has no .nx example in its docstring")


def test_the_usage_check_wants_the_op_itself_in_code():
    assert shows_a_call("`x |> linear(4)` maps the last axis", "linear")
    assert not shows_a_call("A dense map of the last axis (`x` in, `y` out).", "linear")
    assert not shows_a_call("`x |> linear_act` fuses", "linear")


def test_ops_made_by_the_optimizer_are_not_callable():
    fused = [name for name, op in REGISTRY.items() if op.family == "fused"]
    assert fused and not any(REGISTRY[name].public for name in fused)
