"""Random well-formed `.nx` programs of layouts, mixes (every wiring), linears, activations,
norms, convolutions, residuals, duplicates, constants and dead branches (hypothesis): at
`--opt 2` their outputs and gradients (inputs and every parameter) equal `--opt 0`'s within
1e-5, with the IR verified before and after every pass. This runs every rewriting pass of the
pipeline on graphs nobody wrote by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.passes.helpers import assert_same_function, graph_of, optimized

ACTS = ["gelu", "relu", "tanh", "silu", "sigmoid"]


@dataclass
class State:
    """The current tensor: a grid [B, i, j, d] (grid axes in `order`) or flat [B, n, d]."""

    sizes: dict[str, int]
    width: int
    grid: bool = True
    order: list[str] = field(default_factory=lambda: ["i", "j"])
    lines: list[str] = field(default_factory=list)
    count: int = 0

    def emit(self, expr: str) -> None:
        self.count += 1
        self.lines.append(f"  h{self.count} = {expr}")

    @property
    def h(self) -> str:
        return f"h{self.count}" if self.count else "x"

    def to_grid(self) -> None:
        if not self.grid:
            a, b = self.order
            self.emit(f"layout({self.h}, \"b ({a} {b}) d -> b {a} {b} d\", {a} = {self.sizes[a]})")
            self.grid = True

    def to_flat(self) -> None:
        if self.grid:
            a, b = self.order
            self.emit(f"layout({self.h}, \"b {a} {b} d -> b ({a} {b}) d\")")
            self.grid = False


def _flag(value: bool) -> str:
    return "true" if value else "false"


def square_map(s: State, step: dict) -> str:
    """A shape-keeping map of the current tensor (for residuals)."""
    kind = step["inner"]
    if kind == "act":
        return f"{step['act']}({s.h})"
    if kind == "linear" or not s.grid:
        return f"linear({s.h}, {s.width}, bias = {_flag(step['bias'])})"
    if kind == "mlp":
        return (f"linear({step['act']}(linear({s.h}, {step['size'] + 2})), {s.width})")
    axis = step["axis"]
    return f"mix({s.h}, axis = {axis}, causal = {_flag(step['causal'])})"


def apply(s: State, step: dict) -> None:
    op = step["op"]
    h = s.h
    if op in ("mix_axis", "mix_axial", "mix_full", "transpose"):
        s.to_grid()
        h = s.h
    if op in ("conv", "mix_flat"):
        s.to_flat()
        h = s.h
    if op == "mix_axis":
        axis, to = step["axis"], step["size"]
        if step["causal"]:
            s.emit(f"mix({h}, axis = {axis}, causal = true, bias = {_flag(step['bias'])})")
        else:
            s.emit(f"mix({h}, axis = {axis}, to = {to}, bias = {_flag(step['bias'])})")
            s.sizes[axis] = to
    elif op == "mix_axial":
        share = step["share"]
        order = step["order"]
        extra = f", order = {order}, share = {share}, bias = {_flag(step['bias'])}"
        if order == "sequential" and not step["causal"]:
            extra += f", to = [{step['size']}, {s.sizes['j']}]"
            s.sizes["i"] = step["size"]
        elif step["causal"]:
            extra += ", causal = true"
        s.emit(f"mix({h}, axes = [i, j]{extra})")
    elif op == "mix_full":
        wiring = "full" if step["dense"] else f"random(density = 0.3, seed = {step['size']})"
        s.emit(f"mix({h}, axes = [i, j], wiring = {wiring}, causal = {_flag(step['causal'])}, "
               f"bias = {_flag(step['bias'])})")
    elif op == "mix_flat":
        s.emit(f"mix({h}, axis = 1, bias = {_flag(step['bias'])})")
    elif op == "transpose":
        a, b = s.order
        s.emit(f"layout({h}, \"b {a} {b} d -> b {b} {a} d\")")
        s.order = [b, a]
    elif op == "linear":
        s.emit(f"linear({h}, {step['size']}, bias = {_flag(step['bias'])})")
        s.width = step["size"]
    elif op == "act":
        s.emit(f"{step['act']}({h})")
    elif op == "norm":
        s.emit(f"{step['norm']}({h})")
    elif op == "conv":
        s.emit(f"conv({h}, {s.width}, kernel = {step['size']}, causal = "
               f"{_flag(step['causal'])}, groups = {s.width})")
    elif op == "residual":
        inner = square_map(s, step)
        s.emit(f"{h} + {inner}")
    elif op == "duplicate":
        s.emit(f"{step['act']}({h}) + {step['act']}({h})")
    elif op == "constants":
        s.emit(f"(({h} * 2.0) * 0.25 + 1.0) - 1.0")
    elif op == "dead":
        s.lines.append(f"  unused{s.count} = linear({h}, 3)")
    elif op == "layouts":
        if s.grid:
            a, b = s.order
            s.emit(f"layout(layout({h}, \"b {a} {b} d -> b ({a} {b}) d\"), "
                   f"\"b ({a} {b}) d -> b {a} {b} d\", {a} = {s.sizes[a]})")


STEP = st.fixed_dictionaries({
    "op": st.sampled_from(["mix_axis", "mix_axial", "mix_full", "mix_flat", "transpose",
                           "linear", "act", "norm", "conv", "residual", "duplicate",
                           "constants", "dead", "layouts"]),
    "axis": st.sampled_from(["i", "j"]),
    "size": st.integers(2, 5),
    "causal": st.booleans(),
    "bias": st.booleans(),
    "dense": st.booleans(),
    "share": st.sampled_from(["axis", "none"]),
    "order": st.sampled_from(["parallel", "sequential"]),
    "act": st.sampled_from(ACTS),
    "norm": st.sampled_from(["rmsnorm", "layernorm"]),
    "inner": st.sampled_from(["act", "linear", "mlp", "mix"]),
})


def program(steps: list[dict], i: int, j: int, d: int) -> str:
    s = State({"i": i, "j": j}, d)
    for step in steps:
        apply(s, step)
    body = "\n".join(s.lines)
    return (f"nexus 0.1\nmodel R() {{\n  input x: float[B, i={i}, j={j}, d={d}]\n{body}\n"
            f"  output y = {s.h}\n}}\n")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=7), st.integers(2, 4), st.integers(2, 4),
       st.integers(2, 4))
def test_opt_2_computes_what_opt_0_computes(steps, i, j, d):
    text = program(steps, i, j, d)
    graph = graph_of(text)
    try:
        assert_same_function(graph, optimized(graph, 2), batch=2)
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- program ---\n{text}") from None


def test_the_generator_covers_every_rewrite():
    """One long program that makes every pass of opt 2 change something."""
    every = [{"op": o, "axis": "i", "size": 3, "causal": False, "bias": True, "dense": False,
              "share": "axis", "order": "parallel", "act": "gelu", "norm": "rmsnorm",
              "inner": "mlp"}
             for o in ["mix_axis", "mix_axis", "mix_axial", "mix_full", "layouts", "linear", "act",
                       "norm", "conv", "residual", "duplicate", "constants", "dead"]]
    text = program(every, 3, 4, 2)
    graph = graph_of(text)
    from nexusdsl.compiler.pipeline import PassManager, passes_for

    manager = PassManager(passes_for(2), check=True)
    after = manager.run(graph)
    changed = {r.name for r in manager.records if r.changes}
    assert changed >= {"dead-code", "fold-constants", "cse", "layout-cancel", "sparsity-pruning",
                       "axis-fusion", "linear-fusion", "kernel-fusion"}, changed
    assert_same_function(graph, after)
