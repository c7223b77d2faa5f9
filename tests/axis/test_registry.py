"""The ops of docs/axes.md are registered in their families and show their `.nx` use."""

import pytest

from nexusdsl.ops import REGISTRY

FAMILIES = {"mix": "axis", "knn_attention": "mnn", "fast_weights": "mnn",
            "selective_relu": "mnn", "recur": "mnn"}


@pytest.mark.parametrize("name,family", FAMILIES.items())
def test_registered_and_documented(name, family):
    op = REGISTRY[name]
    assert op.family == family
    assert "`" in (type(op).__doc__ or "")
