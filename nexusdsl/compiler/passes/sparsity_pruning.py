"""sparsity-pruning: static sparsity compacted. A `random(density, seed)` mix keeps a fixed
mask known at compile time, yet runs as a dense matrix times the mask; here it becomes a
`sparse_mix` that stores and multiplies only its connections (density x the parameters and
FLOPs), with the kernel the cost model (priced for `PassOptions.device`) or, with
`PassOptions.measure`, a timing on that device finds faster: a CSR sparse product or
index-gather + dense. A device this process cannot reach is not measured: the cost model
decides with its profile, and `--explain` says so.

Requires: a verified graph. Guarantees: no `random` mix over adjacent grid axes is left
dense. Keeps: outputs and gradients exactly (up to summation order): the dense weight's
entries outside the mask never influenced anything; the parameter keeps its name, with the
shape [connections] (an opt-0 checkpoint loads: ops/fused.py). Mixes whose parameters are
shared or tied stay as they are.
"""

from __future__ import annotations

import math

from nexusdsl.compiler.passes.base import (
    Pass,
    PatternPass,
    RewritePattern,
    can_emit,
    private_params,
)
from nexusdsl.compiler.passes.cost import Sizes, machine_for, priced
from nexusdsl.ir.graph import Graph, Node, ParamSpec
from nexusdsl.ops.axis import random_mask_count, wiring_fn
from nexusdsl.ops.base import attrs_of
from nexusdsl.ops.cost import Cost
from nexusdsl.ops.fused import SparseMix


def sparse_costs(cells: int, rest: int, count: int) -> dict[str, Cost]:
    """Both kernels for `rest` columns: a CSR product streams the connections once per
    column; gathering pads every row to the longest (about 1.5x the mean for these sizes)
    and materialises the gathered inputs."""
    width = math.ceil(1.5 * count / cells)
    moves = 4.0 * 2 * cells * rest  # the transposes in and out of cells-major
    return {"csr": Cost(2.0 * count * rest * 2, 8.0 * count + moves, 3),
            "gather": Cost(2.0 * cells * width * rest, 8.0 * cells * width * rest + moves, 4)}


def reachable(device: str) -> bool:
    """Whether this process can run kernels on `device` (to time them there)."""
    if not device.startswith("cuda"):
        return True
    import torch

    return torch.cuda.is_available()


def measured(cells: int, rest: int, density: float, seed: int, causal: bool,
             device: str = "cpu") -> dict[str, float]:
    """Seconds per forward and backward of each kernel at these sizes, on `device` (waiting
    for its queue to drain before reading the clock)."""
    import time

    import torch

    from nexusdsl.ops.fused_torch import CsrMatmul, gather_layout, gather_matmul, sparse_structure

    host = sparse_structure(cells, density, seed, causal)
    layout = tuple(t.to(device) for t in gather_layout(host, cells))
    structure = tuple(t.to(device) for t in host)
    values = torch.randn(structure[0].numel(), device=device, requires_grad=True)
    x = torch.randn(cells, rest, device=device, requires_grad=True)
    kernels = {"csr": lambda: CsrMatmul.apply(values, x, structure, cells),
               "gather": lambda: gather_matmul(values, x, structure, cells, layout)}
    wait = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = {}
    for name, run in kernels.items():
        times = []
        for _ in range(3):
            wait()
            start = time.perf_counter()
            run().sum().backward()
            wait()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return best


class CompactRandomWiring(RewritePattern):
    """mix(x) {wiring = random(density, seed)} -> sparse_mix(x) {count, kernel}"""

    name = "compact-random-wiring"

    def apply(self, graph: Graph, node: Node, p: Pass) -> bool:
        if node.op != SparseMix.replaces or not can_emit(p, SparseMix.name):
            return False
        mix = attrs_of(node)
        grid = sorted(mix.axes)
        if wiring_fn(mix.wiring) != "random" or grid != list(range(grid[0], grid[-1] + 1)):
            return False
        if not private_params(graph, node):
            return False
        shape = Sizes(graph, p.options.context).of(graph.type_of(node.inputs[0]))
        cells = math.prod(shape[q] for q in grid)
        count = random_mask_count(cells, cells, mix.wiring["density"], mix.causal)
        kernel = self._kernel(p, node, cells, math.prod(shape) // cells, count)
        attrs = {"axes": list(mix.axes), "density": mix.wiring["density"],
                 "seed": mix.wiring["seed"], "causal": mix.causal, "bias": mix.bias,
                 "cells": cells, "count": count, "kernel": kernel}
        dense = node.params["weight"]
        params = {**node.params, "weight": ParamSpec(shape=(count,), init=dense.init,
                                                     std=dense.std, frozen=dense.frozen)}
        # keywords, not a dict: the field `params` is also an op's name, which passes never write
        graph.replace(node, node.model_copy(update=dict(op=SparseMix.name, attrs=attrs,
                                                        params=params)))
        return True

    @staticmethod
    def _kernel(p: Pass, node: Node, cells: int, rest: int, count: int) -> str:
        mix = attrs_of(node)
        device = p.options.device
        if p.options.measure and reachable(device):
            times = measured(cells, rest, mix.wiring["density"], mix.wiring["seed"], mix.causal,
                             device)
            how = "measured " + ", ".join(f"{k} {v * 1e3:.2f} ms"
                                          for k, v in times.items()) + f" on {device}"
        else:
            costs = sparse_costs(cells, rest, count)
            machine = machine_for(device)
            times = {k: c.seconds(machine) for k, c in costs.items()}
            unmeasured = " (not measured: no such device here)" if p.options.measure else ""
            how = f"priced for {device}{unmeasured}: " + "; ".join(
                f"{k} {priced(c, machine)}" for k, c in costs.items())
        kernel = min(times, key=times.get)
        p.explain(f"{node.name}: {count:,} of {cells * cells:,} connections, {kernel} ({how})")
        return kernel


class SparsityPruning(PatternPass):
    name = "sparsity-pruning"
    patterns = (CompactRandomWiring,)
