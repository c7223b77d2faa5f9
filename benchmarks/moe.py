"""MoE dispatch speed: top-4 of 16 experts (mlp, mult 4), 8192 tokens of width 512.

    python benchmarks/moe.py [--tokens 8192] [--width 512] [--rounds 2] [--capacity 0]

Times the compiled `.nx` moe (sorted dispatch) against, in the same run and with the same
weights:
  - naive: a masked loop, every token through every expert, weighted by its gate (0 for
    experts it did not pick): 16/4 = 4x the useful FLOPs. Target: dispatch >= 3x faster.
  - ideal: one batched matmul MLP (baddbmm, the experts' own weights and biases) over 16
    equal groups of 8192*4/16 tokens: the same useful FLOPs with no routing at all.
    Target: dispatch within 1.5x.
Forward alone and forward + backward are reported separately (medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nexusdsl  # noqa: E402

SOURCE = """
import std.nn
model Moe(dim = 512, n = 16, k = 4, cap = 0.0) {
  input x: float[B, T, dim]
  experts ffn = n of mlp(mult = 4)
  output y = moe(x, ffn, router = topk(k = k), balance = 0.01, capacity = cap)
}
"""


def naive(model, x):
    """Every token through every expert, masked by the top-k gate weights."""
    flat = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(flat @ model.moe.router.weight.t(), dim=-1)
    w, i = torch.topk(probs, 4, dim=-1)
    gate = torch.zeros_like(probs).scatter(1, i, w)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--capacity", type=float, default=0.0)
    a = parser.parse_args()
    torch.manual_seed(0)
    model = nexusdsl.compile(nexusdsl.loads(SOURCE, "moe_bench.nx"), dim=a.width, cap=a.capacity)
    model.train()
    x = torch.randn(8, a.tokens // 8, a.width)
    groups = torch.randn(16, a.tokens * 4 // 16, a.width, requires_grad=True)
    weights = ideal_weights(model)
    cases = {"dispatch": lambda: model(x), "naive": lambda: naive(model, x),
             "ideal": lambda: ideal(weights, groups)}
    with torch.no_grad():
        torch.testing.assert_close(model(x), naive(model, x), atol=1e-4, rtol=1e-4)
    results = {}
    for backward in (False, True):
        times = {name: [] for name in cases}
        for _ in range(a.rounds + 1):  # the first round warms up
            for name, fn in cases.items():
                with torch.set_grad_enabled(backward):
                    times[name].append(timed(fn, backward))
        results[backward] = {n: statistics.median(t[1:]) for n, t in times.items()}
    print(f"moe top-4 of 16 mlp(mult = 4) experts, {a.tokens} tokens, width {a.width}, "
          f"capacity {a.capacity}, {torch.get_num_threads()} threads")
    for backward, label in ((False, "forward"), (True, "forward+backward")):
        r = results[backward]
        print(f"  {label:17s} dispatch {r['dispatch'] * 1e3:9.1f} ms   naive {r['naive'] * 1e3:9.1f}"
              f" ms   ideal {r['ideal'] * 1e3:9.1f} ms")
        print(f"  {'':17s} naive / dispatch = {r['naive'] / r['dispatch']:.2f} (target >= 3)   "
              f"dispatch / ideal = {r['dispatch'] / r['ideal']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
