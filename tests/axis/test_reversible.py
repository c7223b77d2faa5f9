"""`repeat N shared reversible`: one nested body graph run N times, whose backward pass
recomputes each step's input by inverting the body. Gradients equal ordinary autograd through
the unrolled `repeat N shared` (float64, relative error < 1e-4); activations are not stored;
bodies that cannot be inverted are located errors naming the op."""

import math

import pytest
import torch

import nexusdsl
from tests.axis.helpers import error_text

BODY = """
    g = mix(g, axes = [i, d], order = sequential, bias = true) |> leaky_relu(alpha = 0.5)
    g = 1.25 * linear(g, d) - 0.1
    g = step(g) |> partial(leaky_relu(alpha = 0.3), fraction = 0.5)
"""


def source(steps: int, reversible: bool, body: str = BODY) -> str:
    keyword = "reversible " if reversible else ""
    return f"""
block step(x: [*, d]) -> [*, d] {{
  return mix(x, axis = d) |> leaky_relu(alpha = 0.8)
}}

model R() {{
  input x: float[B, i=4, d=6]
  g = x
  repeat {steps} shared {keyword}{{{body}  }}
  output y = g
}}
"""


def orthogonalise(model) -> None:
    """Well-conditioned weights (orthogonal matrices, small biases): inverses are exact to
    rounding, so the comparison tests the algorithm, not the conditioning."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                q, _ = torch.linalg.qr(torch.randn(p.shape, generator=gen, dtype=p.dtype))
                p.copy_(q)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def pair(steps: int):
    """The reversible model and the unrolled one with the same weights."""
    rev = nexusdsl.compile(nexusdsl.loads(source(steps, True), "rev.nx"), dtype="f64")
    plain = nexusdsl.compile(nexusdsl.loads(source(steps, False), "plain.nx"), dtype="f64")
    orthogonalise(rev)
    with torch.no_grad():
        for name, p in rev.named_parameters():
            plain.get_parameter(name.replace("blocks.body.0.", "blocks.0.")).copy_(p)
    return rev, plain


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_body_is_one_nested_graph_in_a_recur_node():
    graph = nexusdsl.loads(source(40, True), "rev.nx").elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "recur"]
    assert node.attrs == {"count": 40, "carried": 1, "reversible": True, "checkpoint_every": 16}
    assert len(node.regions) == 1 and len(graph.nodes()) == 2  # input and recur
    plain = nexusdsl.loads(source(40, False), "plain.nx").elaborate()
    assert len(plain.nodes()) > 40 * 5


@pytest.mark.parametrize("steps", [40, 16, 1])
def test_gradients_equal_ordinary_autograd_in_float64(steps):
    rev, plain = pair(steps)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    y_rev, y_plain = rev(x), plain(x)
    torch.testing.assert_close(y_rev, y_plain, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(y_rev)
    names = [n for n, _ in rev.named_parameters()]
    got = torch.autograd.grad(y_rev, [x, *rev.parameters()], upstream)
    want = torch.autograd.grad(y_plain, [x, *(plain.get_parameter(n.replace(
        "blocks.body.0.", "blocks.0.")) for n in names)], upstream)
    for name, a, b in zip(["x", *names], got, want):
        assert relative(a, b) < 1e-4, name


def saved_numel(model, x) -> int:
    """Elements autograd keeps for the backward pass during one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_reversible_recursion_keeps_only_checkpoints():
    rev, plain = pair(64)
    x = torch.randn(8, 4, 6, dtype=torch.float64, requires_grad=True)
    state = x.numel()
    kept = saved_numel(rev, x)
    assert kept == (64 // 16 + 1) * state  # x_0, x_16, x_32, x_48 and the output
    assert saved_numel(plain, x) > 8 * kept


def test_without_gradients_and_with_zero_steps_it_is_a_plain_loop():
    rev, plain = pair(20)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(rev(x), plain(x))
    zero = nexusdsl.compile(nexusdsl.loads(source(0, True), "zero.nx"), dtype="f64")
    torch.testing.assert_close(zero(x), x)


def test_inside_an_outer_shared_repeat_the_body_parameters_are_shared():
    text = source(3, True).replace("  g = x\n", "  g = x\n  repeat 2 shared {\n") + ""
    text = text.replace("  output y = g", "  }\n  output y = g")
    model = nexusdsl.compile(nexusdsl.loads(text, "nested.nx"))
    single = nexusdsl.compile(nexusdsl.loads(source(3, True), "single.nx"))
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in single.parameters())
    recurs = [n for n in model.graph.nodes() if n.op == "recur"]
    assert len(recurs) == 2 and recurs[1].shares == recurs[0].name


def test_flops_count_the_body_once_per_step():
    from nexusdsl.compiler.summary import total_flops

    one, _ = total_flops(nexusdsl.loads(source(1, True), "a.nx").elaborate())
    many, _ = total_flops(nexusdsl.loads(source(40, True), "b.nx").elaborate())
    assert many == 40 * one


# ---------------------------------------------------------------------------- mistakes


def reversible_error(body: str, inputs: str = "x: float[B, i=4, d=6]", keyword="shared reversible",
                     before: str = "") -> str:
    text = (f"  g = x\n{before}  repeat 8 {keyword} {{\n{body}\n  }}\n  y = g")
    return error_text(text, inputs)


@pytest.mark.parametrize("body,where,message", [
    ("    g = mix(g, axis = i) |> relu", "5:9",
     "`relu` cannot be inverted in a reversible repeat: it is not invertible"),
    ("    g = mix(g, axes = [i, d])", "5:9",
     "`mix` cannot be inverted in a reversible repeat: a parallel axial mix over several axes"),
    ("    g = linear(g, 12) |> linear(d)", "5:9",
     "`linear` cannot be inverted in a reversible repeat: it maps width 6 to 12 (not square)"),
    ("    g = g + mix(g, axis = i)", "5:9", "`add` combines or branches tensors"),
    ("    g = mix(g, axes = [i, d], wiring = local(3))", "5:9",
     "`mix` cannot be inverted in a reversible repeat: a local wiring is not invertible"),
    ("    g = elu(g)", "5:9", "`elu` cannot be inverted in a reversible repeat: it saturates"),
    ("    g = leaky_relu(g, alpha = 0.0)", "5:9",
     "`leaky_relu` cannot be inverted in a reversible repeat: alpha = 0.0 is not positive"),
    ("    g = mix(g, axis = i, to = 3)", "5:9",
     "a reversible repeat needs `g` back in its own shape after each step: it is "
     "f32[B, i=4, d=6] before the step and f32[B, i=3, d=6] after it"),
])
def test_bodies_that_cannot_be_inverted_are_located_errors(body, where, message):
    text = reversible_error(body)
    assert f"test.nx:{where}: error: {message}" in text, text


def test_carrying_two_tensors_or_reading_another_is_an_error():
    text = reversible_error("    g = mix(g, axis = i)\n    h = mix(h, axis = i)", before="  h = x\n")
    assert "carries one tensor and reads no other, but its body uses `g`, `h`" in text
    text = reversible_error("    g = mix(g, axis = i) * x")
    assert "its body uses `g`, `x`" in text


@pytest.mark.parametrize("body,keyword,message", [
    ("    g = mix(g, axis = i)", "reversible", "write `repeat N shared reversible { ... }`"),
    ("    h = mix(g, axis = i)", "shared reversible", "assigns no variable that exists before it"),
])
def test_repeat_form_mistakes(body, keyword, message):
    text = reversible_error(body, keyword=keyword)
    assert "test.nx:4:3: error:" in text and message in text


def test_a_carried_hyperparameter_is_an_error():
    text = error_text("  g = x\n  n = 2\n  repeat 3 shared reversible {\n    n = n + 1\n"
                      "    g = mix(g, axis = i)\n  }\n  y = g", "x: float[B, i=4, d=6]")
    assert "carries tensors from step to step, but `n` is the number 2" in text


def test_relative_error_stays_small_over_256_steps():
    rev, plain = pair(256)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(rev(x).sum(), [*rev.parameters()])
    want = torch.autograd.grad(plain(x).sum(), [plain.get_parameter(n.replace(
        "blocks.body.0.", "blocks.0.")) for n, _ in rev.named_parameters()])
    assert max(relative(a, b) for a, b in zip(got, want)) < 1e-4
    assert not math.isnan(got[0].sum().item())


def test_the_recur_node_survives_the_json_round_trip():
    from nexusdsl.compiler.lower.fx import lower
    from nexusdsl.ir.graph import Graph

    graph = nexusdsl.loads(source(20, True), "rev.nx").elaborate()
    again = Graph.from_json(graph.to_json())
    assert again.content_hash() == graph.content_hash()
    a, b = lower(graph, dtype="f64"), lower(again, dtype="f64")
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("body", [
    "    g = mix(g, axes = [i, d], wiring = full, bias = true) |> leaky_relu(alpha = 0.5)\n",
    "    g = mix(g, axes = [i, d], order = sequential, share = none) |> leaky_relu\n",
    "    g = mix(g, axes = [d, i], order = sequential, causal = true) + 0.5\n",
])
def test_other_invertible_mixes(body):
    rev = nexusdsl.compile(nexusdsl.loads(source(20, True, body), "rev.nx"), dtype="f64")
    plain = nexusdsl.compile(nexusdsl.loads(source(20, False, body), "plain.nx"), dtype="f64")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in rev.named_parameters():
            eye = torch.eye(p.shape[-1], dtype=p.dtype) if p.shape[-1] == p.shape[-2] else 0
            p.copy_(eye + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            plain.get_parameter(name.replace("blocks.body.0.", "blocks.0.")).copy_(p)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    got = torch.autograd.grad(rev(x).square().sum(), list(rev.parameters()))
    want = torch.autograd.grad(plain(x).square().sum(), [plain.get_parameter(n.replace(
        "blocks.body.0.", "blocks.0.")) for n, _ in rev.named_parameters()])
    assert max(relative(a, b) for a, b in zip(got, want)) < 1e-4


def test_a_failed_body_poisons_the_carried_names_so_one_mistake_is_reported_once():
    text = error_text("  g = x\n  repeat 3 shared reversible {\n    g = relu(g)\n  }\n"
                      "  y = linear(g, 3) + x", "x: float[B, i=4, d=6]")
    assert text.count("error:") == 1 and "`relu` cannot be inverted" in text
