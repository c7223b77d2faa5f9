"""The pass manager: levels, verification around every pass, disabling, printing, reports,
and the `nexus compile` flags that drive them."""

import subprocess
import sys

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.passes.base import Pass
from nexusdsl.compiler.pipeline import (
    ALL_PASSES,
    PIPELINES,
    PassError,
    PassManager,
    optimize,
    passes_for,
)
from nexusdsl.ir.verify import VerifyError
from tests.conftest import ROOT
from tests.passes.helpers import assert_same_function, graph_of, ops, source

SMALL = ["tiny_lm", "gpt", "conv_lm", "captioner", "digits"]


def test_every_pass_has_a_kebab_case_name_and_a_contract():
    for name, cls in ALL_PASSES.items():
        assert name == cls.name and name == name.lower() and "_" not in name
        doc = __import__(cls.__module__, fromlist=["x"]).__doc__ or ""
        for word in ("Requires", "Guarantees", "Keeps"):
            assert word in doc, f"{name}: its docstring does not say what it {word.lower()}"


def test_level_zero_changes_nothing():
    graph = nexusdsl.load("examples/mnn.nx").elaborate(depth=1)
    assert optimize(graph, 0).to_json() == graph.to_json()
    assert PIPELINES[0] == []


@pytest.mark.parametrize("name", SMALL)
def test_every_level_keeps_state_dict_keys_and_initial_weights(name):
    program = nexusdsl.load(f"examples/{name}.nx")
    models = {opt: nexusdsl.compile(program, opt=opt, seed=3) for opt in (0, 1, 2)}
    reference = models[0].state_dict()
    for opt in (1, 2):
        state = models[opt].state_dict()
        assert list(state) == list(reference), f"opt {opt} renamed parameters"
        for key, value in reference.items():
            assert torch.equal(state[key], value), f"opt {opt}: {key} starts elsewhere"


def test_mnn_at_opt_2_computes_what_opt_0_computes():
    graph = nexusdsl.load("examples/mnn.nx").elaborate(depth=1)
    assert_same_function(graph, optimize(graph, 2, check=True), batch=1)


class Breaks(Pass):
    """A pass that leaves a dangling reference, to check that the manager catches it.
    Requires nothing. Guarantees nothing. Keeps nothing."""

    name = "breaks"

    def run(self, graph):
        node = next(n for n in graph.nodes() if n.op == "gelu")
        graph.outputs["y"] = node.ref(5)
        return graph


def test_the_verifier_runs_after_every_pass():
    graph = graph_of(source("  output y = gelu(x)", "x: float[B, d=4]"))
    with pytest.raises(VerifyError, match="output y refers to a missing value"):
        PassManager([Breaks], check=True).run(graph)
    PassManager([Breaks], check=False).run(graph)  # unchecked: nobody looks


def test_the_manager_works_on_a_copy():
    graph = graph_of(source("  output y = gelu(linear(x, 4))", "x: float[B, d=4]"))
    before = graph.to_json()
    optimize(graph, 2, check=True)
    assert graph.to_json() == before


def test_disabled_passes_do_not_run_and_unknown_names_are_refused():
    graph = graph_of(source("  output y = gelu(linear(x, 4))", "x: float[B, d=4]"))
    manager = PassManager(passes_for(2), check=True, disable=["linear-fusion"])
    assert "linear_act" not in ops(manager.run(graph))
    assert "linear_act" in ops(PassManager(passes_for(2), check=True).run(graph))
    assert any(r.skipped and r.name == "linear-fusion" for r in manager.records)
    with pytest.raises(PassError, match="no pass `linear-fusoin`; did you mean `linear-fusion`"):
        PassManager(passes_for(2), disable=["linear-fusoin"])
    with pytest.raises(PassError, match="--print-after: there is no pass `axis`"):
        PassManager(passes_for(2), print_after=["axis"])


def test_print_after_and_records():
    graph = graph_of(source("  a = gelu(x)\n  b = gelu(x)\n  output y = a + b",
                            "x: float[B, d=4]"))
    printed = []
    manager = PassManager(passes_for(1), check=True, print_after=["cse"], emit=printed.append)
    manager.run(graph)
    assert len(printed) == 1 and printed[0].startswith("// IR after cse\nmodel M(")
    assert printed[0].count("gelu(") == 1
    cse = next(r for r in manager.records if r.name == "cse")
    assert cse.changes == {"merge-duplicate": 1} and cse.nodes_before - cse.nodes_after == 1
    every = []
    PassManager(passes_for(1), print_all=True, emit=every.append).run(graph)
    assert len(every) == len(passes_for(1))


# ---------------------------------------------------------------------------- the CLI


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_emit_passes_with_explain_reports_changes_costs_and_choices():
    run = nexus("compile", "examples/mnn.nx", "-O", "2", "--set", "depth=2", "--emit", "passes",
                "--explain")
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "axis-fusion" in text and "axial-einsum x2" in text
    assert "kernel-fusion" in text and "depthwise-conv x2" in text
    assert "cost " in text and "FLOP" in text and " -> " in text
    assert "blocks.0.axial_layer.mix: products (einsum" in text  # the cost model's choice


def test_print_after_and_disable_pass_on_the_command_line():
    run = nexus("compile", "examples/mnn.nx", "-O", "2", "--set", "depth=1", "--emit", "ir",
                "--print-after", "axis-fusion", "--disable-pass", "kernel-fusion")
    assert run.returncode == 0, run.stderr
    assert "// IR after axis-fusion" in run.stdout and "axial_mix(" in run.stdout
    assert "depthwise_conv" not in run.stdout and "conv(" in run.stdout


@pytest.mark.parametrize("flags,message", [
    (["--disable-pass", "nope"], "error: --disable-pass: there is no pass `nope`"),
    (["--sparsity", "1.5"], "error: --sparsity must be at least 0 and below 1, got 1.5"),
])
def test_flag_mistakes_are_one_line_errors(flags, message):
    run = nexus("compile", "examples/tiny_lm.nx", *flags)
    assert run.returncode == 1 and message in run.stderr
    assert "Traceback" not in run.stderr


def test_mlir_targets_get_no_fused_ops():
    graph = nexusdsl.load("examples/mnn.nx").elaborate(depth=1)
    from nexusdsl.compiler.pipeline import options_for

    options = options_for("mlir-linalg")
    assert not {"axial_mix", "linear_act", "fused_rmsnorm", "depthwise_conv"} & set(
        ops(optimize(graph, 2, check=True, options=options)))
