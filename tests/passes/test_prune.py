"""`nexus prune`: magnitude pruning of trained weights. Structured pruning is checked for
exactness where it must be exact (units and heads whose weights contribute nothing are the
ones removed, and the smaller model computes the same outputs); the command runs end to end
on a briefly trained model, reporting held-out loss before and after, and `nexus eval` loads
the smaller checkpoint through the IR it records."""

import json
import subprocess
import sys

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.lower.fx import lower
from nexusdsl.train.prune import keep_count, prune_magnitude, prune_structured
from tests.conftest import ROOT
from tests.passes.helpers import graph_of, source


def _silence(weights, units):
    """Zero what some hidden units send on, so removing them changes nothing."""
    weights = dict(weights)
    w2 = weights["linear_1.weight"].clone()
    w2[:, units] = 0.0
    weights["linear_1.weight"] = w2
    return weights


def test_structured_pruning_removes_the_units_that_do_nothing():
    graph = graph_of(source("  output y = linear(gelu(linear(x, 8)), 4)", "x: float[B, d=5]"))
    model = lower(graph, seed=0)
    weights = _silence(model.state_dict(), [0, 2, 5, 7])
    model.load_state_dict(weights)
    pruned = prune_structured(graph, weights, 0.5)
    assert pruned.removed == {"mlp units": (4, 8)}
    first = pruned.graph.by_name("linear")
    assert first.attrs["out"] == 4 and first.outputs[0].axes[-1].size == 4
    assert pruned.weights["linear_1.weight"].shape == (4, 4)
    small = lower(pruned.graph, seed=1)
    small.load_state_dict(pruned.weights)
    x = torch.randn(3, 5)
    torch.testing.assert_close(small(x), model(x))
    kept = torch.tensor([1, 3, 4, 6])
    assert torch.equal(pruned.weights["linear.weight"], weights["linear.weight"][kept])


def test_structured_pruning_removes_silent_heads():
    graph = graph_of(source("  output y = attention(x, heads = 4, causal = true)",
                            "x: float[B, T, d=8]"))
    model = lower(graph, seed=0)
    weights = dict(model.state_dict())
    out = weights["attention.out.weight"].clone()
    out[:, 2:6] = 0.0  # heads 1 and 2 (2 channels each) say nothing
    weights["attention.out.weight"] = out
    model.load_state_dict(weights)
    pruned = prune_structured(graph, weights, 0.5)
    assert pruned.removed == {"attention heads": (2, 4)}
    node = pruned.graph.by_name("attention")
    assert node.op == "pruned_attention" and node.attrs["heads"] == 2
    small = lower(pruned.graph, seed=1)
    small.load_state_dict(pruned.weights)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(small(x), model(x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.9])
def test_unstructured_pruning_zeroes_the_smallest_weights_of_each_projection(amount):
    graph = graph_of(source("  output y = linear(rmsnorm(linear(x, 8)), 4)", "x: float[B, d=5]"))
    weights = lower(graph, seed=0).state_dict()
    pruned = prune_magnitude(graph, weights, amount)
    for name in ("linear.weight", "linear_1.weight"):
        w, p = weights[name], pruned.weights[name]
        zeros = int((p == 0).sum())
        assert zeros == int(amount * w.numel() + 1e-9)
        assert p[p != 0].abs().min() >= w.abs().flatten().kthvalue(zeros).values
    assert torch.equal(pruned.weights["rmsnorm.weight"], weights["rmsnorm.weight"])
    assert pruned.graph is graph


def test_at_least_one_unit_stays():
    assert keep_count(4, 0.99) == 1 and keep_count(10, 0.5) == 5 and keep_count(7, 0.5) == 4


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_prune_command_end_to_end(tmp_path):
    run_dir = tmp_path / "tiny"
    nexusdsl.train("examples/tiny_lm.nx", steps=3, out=run_dir, batch=4, context=16,
                   eval_batches=2, dim=32, depth=1, heads=4)
    out = tmp_path / "pruned"
    run = nexus("prune", "examples/tiny_lm.nx", "--checkpoint", str(run_dir), "--amount", "0.5",
                "--structured", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "attention heads: kept 2 of 4" in run.stdout and "mlp units: kept 64 of 128" in run.stdout
    assert "held-out bpb:" in run.stdout and "before" in run.stdout and "after" in run.stdout
    after = float(run.stdout.split("before, ")[1].split(" after")[0])
    state = json.loads(next(out.glob("step-*/state.json")).read_text())
    assert state["pruned"]["structured"] and state["ir"]["name"] == "TinyLM"
    evaluated = nexus("eval", "examples/tiny_lm.nx", "--checkpoint", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["bpb"] == pytest.approx(after, abs=5e-4)
    bad = nexus("prune", "examples/tiny_lm.nx", "--checkpoint", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    amount = nexus("prune", "examples/tiny_lm.nx", "--checkpoint", str(run_dir), "--amount", "1")
    assert amount.returncode == 1 and "--amount must be between 0 and 1" in amount.stderr


def test_structured_pruning_removes_the_experts_with_the_smallest_weights_and_their_router_rows():
    """Experts are scored by the norm of their weights, not by how often the router picks
    them. Here the two smallest experts are also ones the router never picks for the test
    data (checked by routing it by hand), so removing them must leave the outputs unchanged."""
    text = ("import std.nn\nmodel M {\n  input x: float[B, T, d=8]\n"
            "  experts e = 6 of mlp(mult = 2)\n"
            "  output y = moe(x, e, router = topk(k = 2, normalize = true))\n}\n")
    graph = nexusdsl.loads(text, "t.nx").elaborate()
    model = lower(graph, seed=0).eval()
    weights = dict(model.state_dict())
    small_experts = [1, 4]
    router = weights["moe.router.weight"].clone()
    router[small_experts] = -10.0  # for positive inputs these experts never make the top 2
    weights["moe.router.weight"] = router
    for key in weights:
        if any(key.startswith(f"moe.experts.{e}.") for e in small_experts):
            weights[key] = weights[key] * 1e-3  # the smallest weights: what the score sees
    model.load_state_dict(weights)
    x = torch.rand(3, 5, 8)
    picked = torch.topk(x.reshape(-1, 8) @ router.t(), 2, dim=-1).indices
    assert not torch.isin(picked, torch.tensor(small_experts)).any()
    pruned = prune_structured(graph, weights, 1 / 3)
    assert pruned.removed == {"experts": (4, 6)}
    node = pruned.graph.by_name("moe")
    assert node.attrs["experts"] == 4 and len(node.regions) == 4
    kept = [0, 2, 3, 5]
    assert torch.equal(pruned.weights["moe.router.weight"], router[kept])
    for new, old in enumerate(kept):
        assert torch.equal(pruned.weights[f"moe.experts.{new}.mlp.linear.weight"],
                           weights[f"moe.experts.{old}.mlp.linear.weight"])
    small = lower(pruned.graph, seed=1).eval()
    small.load_state_dict(pruned.weights)
    torch.testing.assert_close(small(x), model(x))


def test_structured_pruning_keeps_k_experts_and_leaves_hash_routers_whole():
    text = ("import std.nn\nmodel M {\n  input x: float[B, T=4, d=8]\n"
            "  experts e = 4 of mlp(mult = 2)\n  experts f = 4 of mlp(mult = 2)\n"
            "  y = moe(x, e, router = topk(k = 3))\n"
            "  output y = moe(y, f, router = hash())\n}\n")
    graph = nexusdsl.loads(text, "t.nx").elaborate()
    weights = dict(lower(graph, seed=0).state_dict())
    pruned = prune_structured(graph, weights, 0.75)
    assert pruned.removed == {"experts": (3, 4)}  # k = 3 of them must stay
    assert pruned.graph.by_name("moe_1").attrs["experts"] == 4
