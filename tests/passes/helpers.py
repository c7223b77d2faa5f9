"""Shared helpers for the optimizer tests: build a graph from a small `.nx` text, run passes
with the IR verified before and after each, and check that two graphs compute the same
function: same outputs, same gradients (inputs and every parameter) on the same inputs and
weights, in float64 so that the tolerance measures the rewrite, not float32 rounding."""

from __future__ import annotations

import torch

import nexusdsl
from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.passes.base import PassOptions
from nexusdsl.compiler.pipeline import PassManager, passes_for
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.printer import print_graph
from tests.conftest import ROOT, check_golden, random_inputs

GOLDEN = ROOT / "tests" / "golden" / "passes"


def source(body: str, inputs: str, hyper: str = "", imports: str = "") -> str:
    """A one-model program: `inputs` is one `input` line, `body` ends with `output`."""
    return f"nexus 0.1\n{imports}\nmodel M({hyper}) {{\n  input {inputs}\n{body}\n}}\n"


def graph_of(text: str, **hyper) -> Graph:
    return nexusdsl.loads(text, "t.nx").elaborate(**hyper)


def run(graph: Graph, *passes, options: PassOptions | None = None) -> Graph:
    """The passes in order, verified before and after each (on a copy)."""
    return PassManager(list(passes), options, check=True).run(graph)


def optimized(graph: Graph, opt: int = 2, options: PassOptions | None = None) -> Graph:
    return PassManager(passes_for(opt, options), options, check=True).run(graph)


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes() if n.op != "input"]


def golden(name: str, before: Graph, after: Graph) -> None:
    """Before/after IR text of one rewrite, compared with tests/golden/passes/NAME.txt."""
    text = f"// before\n{print_graph(before)}\n\n// after\n{print_graph(after)}\n"
    check_golden(GOLDEN / f"{name}.txt", text)


# ---------------------------------------------------------------------------- equivalence


def modules(g0: Graph, g1: Graph, dtype: str = "f64"):
    """Both graphs lowered, the second with the first's weights (its checkpoint loads)."""
    m0 = lower(g0, dtype=dtype, seed=0)
    m1 = lower(g1, dtype=dtype, seed=0)
    m1.load_state_dict(m0.state_dict())
    return m0, m1


def outputs_and_grads(module, inputs, probes):
    """Outputs, and gradients of sum(output * probe) w.r.t. float inputs and parameters."""
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = module(*xs)
    outs = out if isinstance(out, dict) else {"out": out}
    loss = sum((o * probes[k]).sum() for k, o in outs.items())
    params = dict(module.named_parameters())
    wanted = [x for x in xs if x.requires_grad] + list(params.values())
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    n = sum(x.requires_grad for x in xs)
    return outs, list(grads[:n]), dict(zip(params, grads[n:]))


def assert_same_function(g0: Graph, g1: Graph, batch: int = 2, atol: float = 1e-5,
                         rtol: float = 1e-5, seed: int = 0) -> None:
    m0, m1 = modules(g0, g1)
    gen = torch.Generator().manual_seed(seed)
    inputs = [x.double() if x.is_floating_point() else x
              for x in random_inputs(g0, symbolic=6, batch=batch, seed=seed)]
    with torch.no_grad():
        shapes = {k: o.shape for k, o in _as_dict(m0(*inputs)).items()}
    probes = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    o0, gx0, gp0 = outputs_and_grads(m0, inputs, probes)
    o1, gx1, gp1 = outputs_and_grads(m1, inputs, probes)
    for k in o0:
        torch.testing.assert_close(o1[k], o0[k], atol=atol, rtol=rtol)
    for a, b in zip(gx0, gx1):
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol)
    for name, grad in gp0.items():
        want, got = _compact(g1, name, grad), gp1[name]
        if want is None or got is None:
            assert want is None and got is None or _all_zero(want if got is None else got), name
            continue
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def _as_dict(out):
    return out if isinstance(out, dict) else {"out": out}


def _all_zero(t) -> bool:
    return bool((t == 0).all())


def _compact(graph: Graph, name: str, grad):
    """A dense gradient as the compacted parameter sees it (sparse_mix: the mask's values)."""
    from nexusdsl.ops.fused_torch import sparse_structure

    node = graph.by_name(name.rsplit(".", 1)[0])
    if grad is None or node is None or node.op != "sparse_mix" or not name.endswith("weight"):
        return grad
    a = node.attrs
    rows, cols, *_ = sparse_structure(grad.shape[0], a["density"], a["seed"], a["causal"])
    return grad[rows, cols]
