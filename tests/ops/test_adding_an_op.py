"""docs/design.md "Adding an op" is true: its op file, dropped into the ops package's path,
registers itself, its test passes, and the elaborator, the passes, the summary and both
generated docs handle the op without any other file being edited."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch

import nexusdsl
import nexusdsl.ops
from nexusdsl.compiler.backends import support_table
from nexusdsl.compiler.passes.activation_sparsity import ActivationSparsity
from nexusdsl.compiler.passes.base import PassOptions
from nexusdsl.compiler.pipeline import PassManager
from nexusdsl.compiler.summary import total_flops
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.reference import reference
from tests.conftest import ROOT

SECTION = (ROOT / "docs" / "design.md").read_text().split("## Adding an op\n")[1].split("\n## ")[0]


def example_files() -> dict[str, str]:
    """The section's files: each ```python block, named by the `path`: line before it."""
    found = re.findall(r"`([\w/]+\.py)`:\n\n```python\n(.*?)```", SECTION, re.S)
    return {path: text for path, text in found}


@pytest.fixture
def softsign(tmp_path):
    """The example op registered the way `import nexusdsl.ops` registers a new file, and
    removed again afterwards (so that no other test sees it)."""
    files = example_files()
    (tmp_path / "softsign.py").write_text(files["nexusdsl/ops/softsign.py"])
    nexusdsl.ops.__path__.append(str(tmp_path))
    try:
        nexusdsl.ops.import_op_modules()
        yield REGISTRY["softsign"]
    finally:
        nexusdsl.ops.__path__.remove(str(tmp_path))
        REGISTRY.pop("softsign", None)
        sys.modules.pop("nexusdsl.ops.softsign", None)


def test_the_section_shows_an_op_file_and_its_test():
    assert set(example_files()) == {"nexusdsl/ops/softsign.py", "tests/ops/test_softsign.py"}
    assert "softsign" not in REGISTRY  # an example, not an op of the language


def test_the_file_registers_a_public_elementwise_activation(softsign):
    assert softsign.public and softsign.family == "activations"
    traits = softsign.traits
    assert traits.activation and traits.elementwise and traits.tokenwise


def test_its_own_test_passes(softsign, tmp_path):
    path = tmp_path / "test_softsign.py"
    path.write_text(example_files()["tests/ops/test_softsign.py"])
    spec = importlib.util.spec_from_file_location("example_test_softsign", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def model(body: str, inputs: str = "x: float[B, T, 8]") -> str:
    return f"model M {{\n  input {inputs}\n{body}\n}}\n"


def test_partial_takes_it_as_an_elementwise_activation(softsign):
    module = nexusdsl.compile(nexusdsl.loads(model(
        "  output y = partial(x, act = softsign, fraction = 0.5)"), "p.nx"))
    x = torch.randn(2, 3, 8)
    want = torch.cat((x[..., :4] / (1 + x[..., :4].abs()), x[..., 4:]), dim=-1)
    torch.testing.assert_close(module(x), want)


def test_activation_sparsity_masks_it(softsign):
    graph = nexusdsl.loads(model("  output y = linear(linear(x, 16) |> softsign, 8)"),
                           "s.nx").elaborate()
    masked = PassManager([ActivationSparsity], PassOptions(sparsity=0.5), check=True).run(graph)
    (node,) = [n for n in masked.nodes() if n.op == "topk_mask"]
    assert node.attrs == {"keep": 8, "act": {"op": "softsign", "attrs": {}}}


def test_a_moe_runs_experts_using_it_on_their_own_tokens(softsign):
    text = ("nexus 0.1\nimport std.nn\n\nmodel M {\n  input x: float[B, T, 8]\n"
            "  experts e = 2 of mlp(mult = 2, act = softsign)\n"
            "  output y = moe(x, e, router = topk(k = 1))\n}\n")
    (moe,) = [n for n in nexusdsl.loads(text, "m.nx").elaborate().nodes() if n.regions]
    assert moe.attrs["sequence"] == [False, False]


def test_the_summary_counts_its_flops(softsign):
    graph = nexusdsl.loads(model("  output y = x |> softsign"), "f.nx").elaborate()
    flops, _ = total_flops(graph, context=10)
    assert flops == 3 * 1 * 10 * 8  # batch 1, T = 10, 8 channels


def test_the_generated_docs_pick_it_up(softsign):
    assert "### `softsign`" in reference() and "`softsign(x)`" in reference()
    assert "| `softsign` | activations |" in support_table()
