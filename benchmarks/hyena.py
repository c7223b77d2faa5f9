"""Hyena against causal attention: forward + backward time and peak memory, one run.

    python benchmarks/hyena.py [--lengths 1024 4096 16384] [--width 128] [--heads 4]
                               [--repeats 3] [--crossover]

Both sides are whole mixing layers of the same width on one sequence (batch 1), compiled from
`.nx` with the same projections around their cores:
  - hyena: `hyena(x, order = 2, filter = 64, causal = true)` (FFT long convolutions);
  - attention: `attention(x, heads, causal = true)`, whose core is PyTorch's
    `scaled_dot_product_attention(is_causal = True)` (the fused CPU kernel).
Time is the median of `repeats` forward + backward passes after one warm-up. Peak memory is
the growth of the process's peak resident memory during one forward + backward pass, measured
in a fresh subprocess per (layer, length) so that each starts from the same baseline.
Target: at 16k tokens hyena at least 10x faster than attention. `--crossover` also times
128 .. 1024 tokens and reports where hyena starts to win.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = """nexus 0.1
model Hyena(dim = 128, T = 1024) {
  input x: float[B, T, dim]
  output y = hyena(x, order = 2, filter = 64, causal = true)
}
model Attention(dim = 128, T = 1024, heads = 4) {
  input x: float[B, T, dim]
  output y = attention(x, heads = heads, causal = true)
}
"""


def measure(layer: str, length: int, width: int, heads: int, repeats: int) -> dict:
    """Time and peak memory of one layer at one length (run in its own process)."""
    import torch

    import nexusdsl

    torch.manual_seed(0)
    hyper = {"dim": width, "T": length} | ({"heads": heads} if layer == "Attention" else {})
    model = nexusdsl.compile(nexusdsl.loads(SOURCE, "bench.nx"), layer, **hyper)
    x = torch.randn(1, length, width, requires_grad=True)

    def step() -> float:
        start = time.perf_counter()
        model(x).square().mean().backward()
        return time.perf_counter() - start

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first = step()  # the warm-up pass also gives the memory peak
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = [step() for _ in range(repeats)] if repeats else [first]
    return {"seconds": statistics.median(times), "peak_mb": peak_mb}


def run_isolated(layer: str, length: int, args) -> dict:
    command = [sys.executable, __file__, "--one", layer, str(length), "--width", str(args.width),
               "--heads", str(args.heads), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def crossover(rows: list[tuple[int, dict, dict]]) -> str:
    """Where hyena's time falls below attention's, interpolated on log length."""
    import math

    previous = None
    for length, h, a in rows:
        ratio = a["seconds"] / h["seconds"]
        if ratio >= 1:
            if previous is None:
                return f"hyena is already faster at {length} tokens (the shortest measured)"
            (l0, r0) = previous
            frac = (0 - math.log(r0)) / (math.log(ratio) - math.log(r0))
            at = math.exp(math.log(l0) + frac * (math.log(length) - math.log(l0)))
            return f"hyena becomes faster than attention at about {at:.0f} tokens " \
                   f"(between {l0} and {length})"
        previous = (length, ratio)
    return "attention stays faster at every measured length"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crossover", action="store_true", help="also time 128..1024 tokens")
    parser.add_argument("--one", nargs=2, metavar=("LAYER", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.width, args.heads,
                                 args.repeats)))
        return
    lengths = sorted(set(args.lengths) | ({128, 256, 512, 1024} if args.crossover else set()))
    print(f"hyena(order = 2, filter = 64) vs causal attention ({args.heads} heads, SDPA), "
          f"width {args.width}, batch 1, forward + backward, median of {args.repeats}")
    print(f"{'tokens':>7} {'hyena ms':>10} {'attn ms':>10} {'speed-up':>9} "
          f"{'hyena MB':>9} {'attn MB':>9} {'memory':>8}")
    rows = []
    for length in lengths:
        h, a = run_isolated("Hyena", length, args), run_isolated("Attention", length, args)
        rows.append((length, h, a))
        memory = a["peak_mb"] / h["peak_mb"] if h["peak_mb"] > 0 else float("nan")
        print(f"{length:>7} {1e3 * h['seconds']:>10.1f} {1e3 * a['seconds']:>10.1f} "
              f"{a['seconds'] / h['seconds']:>8.1f}x {h['peak_mb']:>9.1f} {a['peak_mb']:>9.1f} "
              f"{memory:>7.1f}x", flush=True)
    print(crossover(rows))
    longest = rows[-1]
    speedup = longest[2]["seconds"] / longest[1]["seconds"]
    verdict = "met" if speedup >= 10 else "NOT met"
    print(f"target (>= 10x faster at {longest[0]} tokens): {speedup:.1f}x, {verdict}")


if __name__ == "__main__":
    main()
