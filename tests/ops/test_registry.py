"""The registry as a whole: every op declared, documented, and torch-free until lowered."""

import subprocess
import sys

import pytest

from nexusdsl.ops import REGISTRY

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


@pytest.mark.parametrize("name", sorted(n for names in FAMILIES.values() for n in names))
def test_every_op_documents_its_nx_usage(name):
    doc = type(REGISTRY[name]).__doc__ or ""
    assert "`" in doc, f"{name} has no .nx example in its docstring"
