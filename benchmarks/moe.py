"""MoE dispatch speed: top-4 of 16 experts (mlp, mult 4), 4096 tokens of width 512.

    python benchmarks/moe.py [--tokens 4096] [--width 512] [--experts 16] [--k 4]
                             [--capacity 0] [--rounds 2] [--threads N]

Times the compiled `.nx` moe (each expert's tokens gathered into one block, no sort) against,
in the same run, with the same weights and interleaved round by round:
  - naive: a masked loop, every token through every expert, weighted by its gate (0 for
    experts it did not pick, or whose capacity its assignment overflowed): experts / k times
    the useful FLOPs. Target: dispatch >= 3x faster.
  - ideal: one batched matmul MLP (baddbmm, the experts' own weights and biases) over equal
    groups of as many tokens as dispatch runs per expert (tokens * k / experts, or the
    capacity's slots): the same useful FLOPs with no routing at all. Target: dispatch within
    1.5x.
  - device-side: the dispatch as it runs off the CPU (moe_torch.HOST_READ_DEVICES empty): the
    static layout with dropless capacity, which reads nothing back to the host (no sync on a
    GPU) but runs every expert on as many slots as one expert could receive.
The naive loop is also the reference: its outputs must match dispatch's before timing, with
capacity too (its own drop rule: first choices before second choices, then earlier tokens).
Forward alone (no autograd) and forward + backward are reported separately (medians);
backward computes the gradients of every weight and of the input on every side. Each time
is also given as the useful FLOP rate (tokens * k expert MLPs; 3x for forward + backward) over
the host's fp32 matmul rate (benchmarks/host.py, printed first).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate  # noqa: E402
from nexusdsl.ops import moe_torch  # noqa: E402

SOURCE = """
import std.nn
model Moe(dim = 512, n = 16, k = 4, cap = 0.0) {
  input x: float[B, T, dim]
  experts ffn = n of mlp(mult = 4)
  output y = moe(x, ffn, router = topk(k = k), balance = 0.01, capacity = cap)
}
"""


def slots(tokens: int, experts: int, k: int, capacity: float) -> int:
    """Rows each expert runs: its share of the assignments, or the capacity's slots."""
    if capacity > 0:
        return max(1, math.ceil(capacity * tokens * k / experts))
    return tokens * k // experts


def gates(model, flat, k: int, capacity: float):
    """(tokens, experts) gate weights: top-k softmax probabilities, minus the assignments
    that overflow an expert's capacity (first choices win, then earlier tokens)."""
    probs = torch.softmax(flat @ model.moe.router.weight.t(), dim=-1)
    w, i = torch.topk(probs, k, dim=-1)
    experts = probs.shape[1]
    keep = torch.ones_like(w, dtype=torch.bool)
    if capacity > 0:
        limit = slots(flat.shape[0], experts, k, capacity)
        taken = torch.zeros(experts, dtype=torch.long)
        for choice in range(k):  # all first choices, then all second choices, ...
            onehot = F.one_hot(i[:, choice], experts)
            rank = taken[i[:, choice]] + (onehot.cumsum(0) * onehot).sum(1) - 1
            keep[:, choice] = rank < limit
            taken += onehot.sum(0)
    return torch.zeros_like(probs).scatter(1, i, torch.where(keep, w, torch.zeros_like(w)))


def naive(model, x, k: int, capacity: float):
    """Every token through every expert, masked by its gate weights."""
    flat = x.reshape(-1, x.shape[-1])
    gate = gates(model, flat, k, capacity)
    y = torch.zeros_like(flat)
    for e, expert in enumerate(model.moe.experts):
        y = y + gate[:, e:e + 1] * expert(flat)
    return y.reshape(x.shape)


def ideal_weights(model):
    """The experts' weights stacked (E, in, out) and biases (E, 1, out), as leaves."""
    def stacked(name, what):
        parts = [getattr(getattr(ex.mlp, name), what).detach() for ex in model.moe.experts]
        return (torch.stack([p.t() for p in parts]) if what == "weight" else
                torch.stack(parts)[:, None, :]).requires_grad_()

    return [stacked(layer, what) for layer in ("linear", "linear_1") for what in ("weight", "bias")]


def ideal(weights, groups):
    """The same useful FLOPs as one batched matmul MLP over equal groups (no routing)."""
    w1, b1, w2, b2 = weights
    return torch.baddbmm(b2, F.gelu(torch.baddbmm(b1, groups, w1)), w2)


def timed(fn, backward: bool) -> float:
    start = time.perf_counter()
    out = fn()
    if backward:
        out.float().pow(2).mean().backward()
    return time.perf_counter() - start


def device_side(model, x):
    """The dispatch as on a GPU: no host read of the per-expert counts."""
    cpu_reads = moe_torch.HOST_READ_DEVICES
    moe_torch.HOST_READ_DEVICES = frozenset()
    try:
        return model(x)
    finally:
        moe_torch.HOST_READ_DEVICES = cpu_reads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--capacity", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own; 1 is steadier on a busy machine)")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    host = calibrate()
    torch.manual_seed(0)
    model = nexusdsl.compile(nexusdsl.loads(SOURCE, "moe_bench.nx"), dim=a.width, n=a.experts,
                             k=a.k, cap=a.capacity)
    model.train()
    x = torch.randn(8, a.tokens // 8, a.width, requires_grad=True)
    rows = slots(a.tokens, a.experts, a.k, a.capacity)
    groups = torch.randn(a.experts, rows, a.width, requires_grad=True)
    weights = ideal_weights(model)
    cases = {"dispatch": lambda: model(x), "naive": lambda: naive(model, x, a.k, a.capacity),
             "ideal": lambda: ideal(weights, groups), "device-side": lambda: device_side(model, x)}
    with torch.no_grad():
        torch.testing.assert_close(model(x), cases["naive"](), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cases["device-side"](), cases["naive"](), atol=1e-4,
                                   rtol=1e-4)
    useful = 2 * 2 * a.tokens * a.k * a.width * 4 * a.width  # two linears per assignment
    results = {}
    for backward in (False, True):
        times = {name: [] for name in cases}
        for _ in range(a.rounds + 1):  # the first round warms up
            for name, fn in cases.items():
                with torch.set_grad_enabled(backward):
                    times[name].append(timed(fn, backward))
        results[backward] = {n: statistics.median(t[1:]) for n, t in times.items()}
    print(f"moe top-{a.k} of {a.experts} mlp(mult = 4) experts, {a.tokens} tokens, width "
          f"{a.width}, capacity {a.capacity} ({rows} rows per expert in the ideal), "
          f"{torch.get_num_threads()} threads")
    for backward, label in ((False, "forward"), (True, "forward+backward")):
        r, flops = results[backward], useful * (3 if backward else 1)
        print(f"  {label:17s} dispatch {r['dispatch'] * 1e3:9.1f} ms   naive {r['naive'] * 1e3:9.1f}"
              f" ms   ideal {r['ideal'] * 1e3:9.1f} ms   device-side "
              f"{r['device-side'] * 1e3:9.1f} ms")
        print(f"  {'':17s} naive / dispatch = {r['naive'] / r['dispatch']:.2f} (target >= 3)   "
              f"dispatch / ideal = {r['dispatch'] / r['ideal']:.2f} (target <= 1.5)   "
              f"device-side / dispatch = {r['device-side'] / r['dispatch']:.2f}")
        print(f"  {'':17s} useful FLOP rate: dispatch {host.compute(flops, r['dispatch'])}, "
              f"ideal {host.compute(flops, r['ideal'])}, device-side "
              f"{host.compute(flops, r['device-side'])}")


if __name__ == "__main__":
    main()
