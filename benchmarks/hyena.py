"""Hyena against causal attention: forward + backward time and peak memory, one run.

    python benchmarks/hyena.py [--lengths 1024 4096 16384] [--width 128] [--heads 4]
                               [--repeats 5] [--crossover] [--plain-malloc]

Both sides are whole mixing layers of the same width on one sequence (batch 1), compiled from
`.nx` with the same projections around their cores:
  - hyena: `hyena(x, order = 2, filter = 64, causal = true)` (FFT long convolutions);
  - attention: `attention(x, heads, causal = true)`, whose core is PyTorch's
    `scaled_dot_product_attention(is_causal = True)` (the fused CPU kernel).
Time is the median of `repeats` forward + backward passes after one warm-up, the two layers
timed in alternation in one process per length (a shared machine's speed drifts; alternating
makes the ratio fair). Peak memory is the growth of the process's peak resident memory during
one forward + backward pass, measured in a fresh process per (layer, length) so that each
starts from the same baseline. Both layers run with freed memory kept in the process, as the
`nexus` command runs (nexusdsl/allocator.py); `--plain-malloc` measures without. Both also run
with idle OpenMP workers sleeping at once, as the `nexus` command asks (nexusdsl/allocator.py
`wait_passively`): on a machine whose cores are busy with other work, libgomp's default
spin-then-sleep made hyena's many short kernels three times slower while attention's long
ones barely changed. `OMP_WAIT_POLICY=ACTIVE python benchmarks/hyena.py` measures otherwise.
Target: at 16k tokens hyena at least 10x faster than attention. `--crossover` also times
128 .. 1024 tokens and reports where hyena starts to win. The host's calibration
(benchmarks/host.py) is printed first; each time is also given as a FLOP rate (the cost
model's FLOPs, 3x the forward's) over the host's fp32 matmul rate.
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
LAYERS = ("Hyena", "Attention")
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


def build(layer: str, length: int, width: int, heads: int):
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

    return step


def measure_memory(layer: str, length: int, width: int, heads: int) -> dict:
    """Peak memory growth of one forward + backward pass (run in its own process)."""
    step = build(layer, length, width, heads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}


def measure_times(length: int, width: int, heads: int, repeats: int) -> dict:
    """Median forward + backward time of both layers, timed in alternation in one process so
    that a machine that speeds up or slows down during the run affects both alike."""
    steps = {layer: build(layer, length, width, heads) for layer in LAYERS}
    for step in steps.values():  # warm-up
        step()
    times = {layer: [] for layer in LAYERS}
    for _ in range(repeats):
        for layer, step in steps.items():
            times[layer].append(step())
    return {layer: statistics.median(t) for layer, t in times.items()}


def run_isolated(what: list[str], args) -> dict:
    command = [sys.executable, __file__, "--one", *what, "--width", str(args.width),
               "--heads", str(args.heads), "--repeats", str(args.repeats)]
    command += ["--plain-malloc"] if args.plain_malloc else []
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_length(length: int, args) -> tuple[dict, dict]:
    """(hyena, attention) rows {seconds, peak_mb} at one length, each part in a fresh process."""
    seconds = run_isolated(["times", str(length)], args)
    rows = []
    for layer in LAYERS:
        memory = run_isolated([f"memory-{layer}", str(length)], args)
        rows.append({"seconds": seconds[layer]} | memory)
    return rows[0], rows[1]


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


def rates(host, length: int, args, h: dict, a: dict) -> str:
    """Each layer's FLOP rate over the host's fp32 matmul."""
    from benchmarks.host import training_flops
    from nexusdsl import loads

    program = loads(SOURCE, "bench.nx")
    hyena = program.elaborate("Hyena", dim=args.width, T=length)
    attention = program.elaborate("Attention", dim=args.width, T=length, heads=args.heads)
    return (f"{host.compute(training_flops(hyena, length), h['seconds'])} / "
            f"{host.compute(training_flops(attention, length), a['seconds'])}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--crossover", action="store_true", help="also time 128..1024 tokens")
    parser.add_argument("--plain-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the `nexus` command keeps freed "
                             "memory: nexusdsl/allocator.py)")
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from nexusdsl.allocator import wait_passively

    wait_passively()  # as the nexus command does, before torch loads (its children inherit it)
    if args.one:
        if not args.plain_malloc:
            from nexusdsl.allocator import keep_freed_memory

            keep_freed_memory()  # as the `nexus` command does, for both layers
        what, length = args.one[0], int(args.one[1])
        if what == "times":
            result = measure_times(length, args.width, args.heads, args.repeats)
        else:
            result = measure_memory(what.removeprefix("memory-"), length, args.width, args.heads)
        print(json.dumps(result))
        return
    from benchmarks.host import calibrate

    host = calibrate()
    lengths = sorted(set(args.lengths) | ({128, 256, 512, 1024} if args.crossover else set()))
    malloc = "glibc malloc as is" if args.plain_malloc else "freed memory kept"
    print(f"hyena(order = 2, filter = 64) vs causal attention ({args.heads} heads, SDPA), "
          f"width {args.width}, batch 1, forward + backward, median of {args.repeats}, {malloc}")
    print(f"{'tokens':>7} {'hyena ms':>10} {'attn ms':>10} {'speed-up':>9} "
          f"{'hyena MB':>9} {'attn MB':>9} {'memory':>8}   hyena / attention against the host")
    rows = []
    for length in lengths:
        h, a = measure_length(length, args)
        rows.append((length, h, a))
        memory = a["peak_mb"] / h["peak_mb"] if h["peak_mb"] > 0 else float("nan")
        print(f"{length:>7} {1e3 * h['seconds']:>10.1f} {1e3 * a['seconds']:>10.1f} "
              f"{a['seconds'] / h['seconds']:>8.1f}x {h['peak_mb']:>9.1f} {a['peak_mb']:>9.1f} "
              f"{memory:>7.1f}x   {rates(host, length, args, h, a)}", flush=True)
    print(crossover(rows))
    longest = rows[-1]
    speedup = longest[2]["seconds"] / longest[1]["seconds"]
    verdict = "met" if speedup >= 10 else "NOT met"
    print(f"target (>= 10x faster at {longest[0]} tokens): {speedup:.1f}x, {verdict}")


if __name__ == "__main__":
    main()
