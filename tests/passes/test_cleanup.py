"""The basic passes: dead-code, cse, fold-constants and layout-cancel. Each rewrite is checked
by numerical equivalence (outputs and gradients before and after) and by golden IR text;
layout composition also on random chains of layouts (hypothesis)."""

import einops
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.passes.cse import CommonSubexpressions
from nexusdsl.compiler.passes.dead_code import DeadCode
from nexusdsl.compiler.passes.fold_constants import FoldConstants
from nexusdsl.compiler.passes.layout_cancel import LayoutCancel
from tests.passes.helpers import assert_same_function, golden, graph_of, ops, run, source

# ---------------------------------------------------------------------------- dead-code


def test_dead_nodes_go_and_dead_weights_stay_as_params():
    text = source("  unused = linear(gelu(x), 8)\n  output y = linear(x, 3)", "x: float[B, d=4]")
    before = graph_of(text)
    after = run(before, DeadCode)
    golden("dead_code", before, after)
    assert ops(after) == ["params", "linear"]  # the gelu is gone, the weights are not
    m0, m1 = lower(before), lower(after)
    assert list(m0.state_dict()) == list(m1.state_dict())
    assert all(torch.equal(m0.state_dict()[k], v) for k, v in m1.state_dict().items())
    assert_same_function(before, after)


def test_dead_code_keeps_inputs_and_owners_of_shared_weights():
    text = source("  h = x\n  repeat 2 shared {\n    h = linear(h, 4)\n  }\n  output y = h",
                  "x: float[B, d=4]\n  input z: float[B, d=4]")
    before = graph_of(text)
    after = run(before, DeadCode)
    assert [n.name for n in after.inputs()] == ["x", "z"]
    assert after.to_json() == before.to_json()


# ---------------------------------------------------------------------------- cse


def test_cse_merges_equal_parameter_free_nodes():
    text = source("  a = gelu(x)\n  b = gelu(x)\n  c = layout(x, \"b d -> d b\")\n"
                  "  e = layout(x, \"b d -> d b\")\n  output y = a + b + mean(c + e, axis = 1)",
                  "x: float[B, d=4]")
    before = graph_of(text)
    after = run(before, CommonSubexpressions)
    golden("cse", before, after)
    assert ops(after).count("gelu") == 1 and ops(after).count("layout") == 1
    assert_same_function(before, after)


def test_cse_keeps_random_ops_and_parameters_apart():
    text = source("  a = dropout(x, 0.5) + dropout(x, 0.5)\n  output y = a + linear(x, 4) + "
                  "linear(x, 4)", "x: float[B, d=4]")
    before = graph_of(text)
    after = run(before, CommonSubexpressions)
    assert ops(after).count("dropout") == 2 and ops(after).count("linear") == 2


# ---------------------------------------------------------------------------- fold-constants


def test_fold_constants():
    text = source("  h = identity(dropout(x, 0.0))\n  h = (h * 2.0) * 3.0\n"
                  "  h = (h + 1.0) + 2.0\n  output y = h * 1.0 + linear(h, 4)",
                  "x: float[B, d=4]")
    before = graph_of(text)
    after = run(before, FoldConstants)
    golden("fold_constants", before, after)
    assert ops(after) == ["scale", "shift", "linear", "add"]
    assert_same_function(before, after)


# ---------------------------------------------------------------------------- layout-cancel

GRID = "x: float[B, T=12, d=2]"


def test_an_inverse_pair_of_layouts_disappears():
    text = source("  g = layout(x, \"b (i j) d -> b i j d\", i = 3)\n"
                  "  output y = layout(g, \"b i j d -> b (i j) d\")", GRID)
    before = graph_of(text)
    after = run(before, LayoutCancel)
    golden("layout_cancel", before, after)
    assert ops(after) == [] and after.outputs["y"].node == after.by_name("x").id
    assert_same_function(before, after)


def test_two_layouts_compose_into_one():
    text = source("  g = layout(x, \"b (i j) d -> b i j d\", i = 3)\n"
                  "  g = layout(g, \"b i j d -> b j d i\")\n"
                  "  output y = layout(g, \"b j d i -> b (j i) d\")", GRID)
    before = graph_of(text)
    after = run(before, LayoutCancel)
    golden("layout_compose", before, after)
    assert ops(after) == ["layout"]
    assert after.type_of(after.outputs["y"]) == before.type_of(before.outputs["y"])
    assert_same_function(before, after)


def test_layouts_that_do_not_align_stay():
    # 6 = 2 x 3 on one side, 3 x 2 on the other: no common refinement
    text = source("  g = layout(x, \"b (i j) -> b i j\", i = 2)\n"
                  "  output y = layout(g, \"b i j -> b (i j)\")", "x: float[B, n=6]")
    before = graph_of(text.replace("b (i j) -> b i j\", i = 2", "b (i j) -> b j i\", i = 2"))
    after = run(before, LayoutCancel)
    assert_same_function(before, after)
    text = source("  g = layout(x, \"b (i j) -> b i j\", i = 2)\n"
                  "  output y = layout(g, \"b i j -> b (i j)\")", "x: float[B, n=6]")
    assert ops(run(graph_of(text), LayoutCancel)) == []
    odd = source("  g = layout(x, \"b (i j) -> b i j\", i = 2)\n"
                 "  output y = layout(g, \"b (k l) j -> b k (l j)\", k = 1)", "x: float[B, n=6]")
    assert_same_function(graph_of(odd), run(graph_of(odd), LayoutCancel))


# Random chains: split a [B, 24, 2] tensor into factors, permute, merge; twice or three times.
FACTORS = [(2, 12), (3, 8), (4, 6), (6, 4), (2, 3, 4), (4, 3, 2), (2, 2, 6)]


@st.composite
def layout_chain(draw):
    steps = []
    for k in range(draw(st.integers(2, 3))):
        sizes = draw(st.sampled_from(FACTORS))
        names = [f"a{k}{i}" for i in range(len(sizes))]
        order = draw(st.permutations(names + ["d"]))
        left = f"b ({' '.join(names)}) d"
        middle = "b " + " ".join(order)
        kw = {n: s for n, s in zip(names[:-1], sizes[:-1])}
        steps.append((left, middle, kw, order))
    return steps


def _chain_source(steps) -> str:
    lines, var = [], "x"
    for k, (left, middle, kw, order) in enumerate(steps):
        sizes = "".join(f", {n} = {s}" for n, s in kw.items())
        merged = "b (" + " ".join(o for o in order if o != "d") + ") d"
        lines.append(f"  g{k} = layout({var}, \"{left} -> {middle}\"{sizes})")
        lines.append(f"  h{k} = layout(g{k}, \"{middle} -> {merged}\")")
        var = f"h{k}"
    lines.append(f"  output y = {var}")
    return source("\n".join(lines), "x: float[B, T=24, d=2]")


@settings(max_examples=25, deadline=None)
@given(layout_chain())
def test_random_layout_chains_compose_exactly(steps):
    before = graph_of(_chain_source(steps))
    after = run(before, LayoutCancel)
    assert ops(after).count("layout") <= ops(before).count("layout")
    x = torch.randn(2, 24, 2, dtype=torch.float64)
    m0, m1 = lower(before, dtype="f64"), lower(after, dtype="f64")
    assert torch.equal(m0(x), m1(x))  # layouts move elements: exactly equal


def test_random_chain_reference():
    # the test above compares two compiled graphs; this pins one chain to einops itself
    steps = [("b (a00 a01) d", "b a01 d a00", {"a00": 3}, ["a01", "d", "a00"])]
    before = graph_of(_chain_source(steps))
    x = torch.randn(2, 24, 2)
    want = einops.rearrange(einops.rearrange(x, "b (p q) d -> b q d p", p=3),
                            "b q d p -> b (q p) d")
    assert torch.equal(lower(run(before, LayoutCancel))(x), want)


@pytest.mark.parametrize("pattern", ["b t d -> b t d", "b (t) d -> b t d"])
def test_identity_layouts_disappear(pattern):
    before = graph_of(source(f"  output y = layout(x, \"{pattern}\") + x", GRID))
    after = run(before, LayoutCancel)
    assert ops(after) == ["add"]
