"""The compile targets through the public API: `nexusdsl.compile(..., target=...)`.

Dynamic batch, several outputs, located errors for unsupported op/backend combinations
(raised before any MLIR work), the missing-C++-compiler message, and the docs table."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import nexusdsl
from nexusdsl.compiler import backends
from nexusdsl.compiler.backends import BackendError
from nexusdsl.compiler.lower import mlir
from nexusdsl.ops import REGISTRY
from tests.backends.cases import ROOT, all_cases

SMALL_LM = """nexus 0.1
import std.nn
modality text = bytes(code = 0)
model LM(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + attention(rmsnorm(x), heads = 2, causal = true)
  x = x + mlp(rmsnorm(x), mult = 2)
  output logits = unembed(rmsnorm(x), tie = tok)
  output pooled = mean(x, axis = 1)
}
"""


@pytest.fixture(scope="module")
def program():
    return nexusdsl.loads(SMALL_LM, "lm.nx")


def tokens(*shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        scale = want[name].abs().max()
        assert (got[name] - want[name]).abs().max() <= 1e-4 * scale, name


def test_iree_module_with_dynamic_batch_runs_every_batch_size_from_one_vmfb(program):
    eager = nexusdsl.compile(program).eval()
    iree = nexusdsl.compile(program, target="iree-cpu",
                            options={"dynamic": ["B"], "sizes": {"T": 6}})
    for batch in (2, 3, 5):
        x = tokens(batch, 6, seed=batch)
        with torch.no_grad():
            close(iree(x), eager(x))  # two outputs, by name, in declaration order
    assert len(iree.artifacts) == 1, "a dynamic batch should need one compilation"
    assert "B?" in str(iree.artifacts[0].shapes[0])
    assert "?x6xi64" in iree.artifacts[0].mlir or "[?,6],si64" in iree.artifacts[0].mlir


def test_iree_module_compiles_again_for_new_static_shapes(program):
    iree = nexusdsl.compile(program, target="iree-cpu", options={"route": "mlir-linalg"})
    eager = nexusdsl.compile(program).eval()
    for x in (tokens(1, 4), tokens(2, 4), tokens(1, 4, seed=3)):
        with torch.no_grad():
            close(iree(tokens=x), eager(x))
    assert [a.shapes[0].shape for a in iree.artifacts] == [(1, 4), (2, 4)]


def test_mlir_targets_return_text_in_their_dialect(program):
    for target, marker in [("mlir-torch", "torch.aten."), ("mlir-linalg", "linalg."),
                           ("mlir-stablehlo", "stablehlo."), ("mlir-tosa", "tosa.")]:
        text = nexusdsl.compile(program, target=target, options={"sizes": {"B": 3, "T": 5}})
        assert marker in text, target
        assert "// input tokens: i64[3, 5]" in text


def test_dynamic_axis_stays_dynamic_in_the_mlir(program):
    text = nexusdsl.compile(program, target="mlir-torch", options={"dynamic": ["B", "T"]})
    assert "!torch.vtensor<[?,?],si64>" in text


def test_torch_compile_target_matches_eager_and_keeps_the_state_dict(program):
    eager = nexusdsl.compile(program).eval()
    compiled = nexusdsl.compile(program, target="torch.compile",
                                options={"backend": "eager"}).eval()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = tokens(2, 7)
    with torch.no_grad():
        close(compiled(x), eager(x))


def test_unknown_options_and_axes_are_clear_errors(program):
    with pytest.raises(ValueError, match="target iree-cpu takes no option mode"):
        nexusdsl.compile(program, target="iree-cpu", options={"mode": "max-autotune"})
    with pytest.raises(BackendError, match=r"no input of model LM has a symbolic axis C "
                                           r"\(its symbolic axes: B, T\)"):
        nexusdsl.compile(program, target="mlir-torch", options={"sizes": {"C": 3}})
    with pytest.raises(BackendError, match="cannot parse torch-mlir's TOSA"):
        nexusdsl.compile(program, target="iree-cpu", options={"route": "mlir-tosa"})
    with pytest.raises(BackendError, match="fails on torch-mlir's StableHLO for topk"):
        nexusdsl.compile(program, target="iree-cpu", options={"route": "mlir-stablehlo"})


def test_unsupported_op_is_a_located_error_before_any_mlir_work(program, monkeypatch):
    rmsnorm = type(REGISTRY["rmsnorm"])
    monkeypatch.setattr(rmsnorm, "backends", ("eager", "compile", "mlir-torch", "iree"))

    def no_mlir(*args, **kwargs):
        raise AssertionError("MLIR work started before the support check")

    monkeypatch.setattr(mlir, "export_program", no_mlir)
    with pytest.raises(nexusdsl.NexusError) as caught:
        nexusdsl.compile(program, target="mlir-linalg")
    text = str(caught.value)
    assert text.startswith("lm.nx:7:21: error: op `rmsnorm` (node rmsnorm) does not lower to "
                           "backend mlir-linalg"), text
    assert text.count("error:") == 3, "every rmsnorm node is reported"
    assert "x = x + attention(rmsnorm(x)" in text, "the source line is quoted"
    with pytest.raises(nexusdsl.NexusError, match="needed by target iree-cpu"):
        nexusdsl.compile(program, target="iree-cpu", options={"route": "mlir-linalg"})
    nexusdsl.compile(program, target="torch.compile", options={"backend": "eager"})  # fine


def test_missing_cpp_compiler_is_one_clear_message(program):
    from torch._inductor import config

    # torch's own patching: a monkeypatch of config.cpp.cxx leaves it unreadable afterwards
    with config.patch({"cpp.cxx": (None, "no-such-compiler-nexus")}), \
            pytest.raises(BackendError, match="needs a C\\+\\+ compiler for CPU code, and none "
                                              "was found: install g\\+\\+ \\(or set \\$CXX\\)"):
        nexusdsl.compile(program, target="torch.compile")


def test_iree_cuda_compiles_a_vmfb_without_a_gpu(program, tmp_path):
    iree = nexusdsl.compile(program, target="iree-cuda", options={"sizes": {"T": 4}})
    iree.save(tmp_path / "lm.vmfb")
    data = (tmp_path / "lm.vmfb").read_bytes()
    assert len(data) > 10_000 and b"cuda" in data
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="cannot run the vmfb here: no CUDA GPU"):
            iree(tokens(1, 4))


def test_importing_nexusdsl_does_not_import_torch_mlir_or_iree():
    code = ("import sys, nexusdsl, nexusdsl.cli; "
            "bad = [m for m in ('torch', 'torch_mlir', 'iree.compiler') if m in sys.modules]; "
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_docs_table_is_generated_from_the_registry():
    docs = (ROOT / "docs" / "backends.md").read_text()
    assert backends.support_table() in docs, ("docs/backends.md is out of date: run "
                                              "`python -m nexusdsl.compiler.backends`")


def test_every_op_that_claims_an_mlir_backend_is_exercised_by_the_backend_tests():
    def ops(graph):
        found = set()
        for node in graph.nodes():
            found.add(node.op)
            for region in node.regions:
                found |= ops(region)
        return found

    seen = set()
    for case in all_cases():
        seen |= ops(case.load().elaborate(case.model, **case.hyper))
    claims = {name for name, op in REGISTRY.items()
              if {"mlir-torch", "mlir-linalg", "iree"} & set(op.backends)}
    missing = sorted(claims - seen - TESTED_ELSEWHERE)
    assert not missing, (f"ops {missing} claim MLIR backends but no backend test runs them: "
                         "use them in tests/backends/zoo.nx (or an example / the stdlib), or "
                         "drop the backends they do not support from their `backends`")


# pretrained_module needs a model directory: tests/backends/test_pretrained.py runs it.
TESTED_ELSEWHERE = {"pretrained_module"}


def test_eager_on_cuda_matches_cpu_or_is_refused_without_a_gpu(program):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            nexusdsl.compile(program, device="cuda")
        return
    cpu = nexusdsl.compile(program).eval()
    gpu = nexusdsl.compile(program, device="cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    x = tokens(2, 5)
    with torch.no_grad():
        got = {k: v.cpu() for k, v in gpu(x.cuda()).items()}
        close(got, cpu(x))


def test_torch_compile_compiles_every_model_not_just_the_first_eight():
    # Every NexusModule shares one `forward`: compiled as such, dynamo would stop compiling
    # after its recompile limit (8 models) and silently run eager.
    from nexusdsl.compiler.lower.compile import compile_module

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    for width in range(1, 13):
        source = (f"nexus 0.1\nmodel S{width}() {{\n  input x: float[B, 8]\n"
                  f"  output y = linear(x, {width}) |> relu\n}}\n")
        model = compile_module(nexusdsl.compile(nexusdsl.loads(source)), backend=counting_backend)
        assert model(torch.randn(2, 8)).shape == (2, width)
        assert len(graphs) == width, f"model {width} was not compiled"
        assert list(model.state_dict()) == ["linear.weight", "linear.bias"]


def test_attention_along_a_grid_axis_under_inductor_equals_eager():
    """Attention along one axis of a 5-d grid: SDPA is given 4-d (batch, heads, T, size)
    tensors; with more leading axes inductor's code computed different numbers."""
    src = """nexus 0.1
model Grid(dim = 8) {
  input x: float[B, 2, 3, 4, dim]
  output y = x + attention(x, axis = 2, heads = 2)
}
"""
    program = nexusdsl.loads(src, "grid.nx")
    eager = nexusdsl.compile(program).eval()
    compiled = nexusdsl.compile(program, target="torch.compile").eval()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 2, 3, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
