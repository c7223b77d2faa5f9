"""Training-step overhead of a compiled `.nx` model against the same model written by hand.

    python benchmarks/overhead.py [--threads N]

Prints forward+backward time of the compiled tiny_lm divided by the hand-written reference's,
interleaved in one run. Target: 1.05 or less. Both times are also given as a FLOP rate (3x the
cost model's forward FLOPs) over the host's fp32 matmul rate (benchmarks/host.py, printed
first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate, training_flops  # noqa: E402
from tests.reference_models import TinyLM  # noqa: E402


def step_time(model, tokens, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        times.append(time.perf_counter() - start)
    return times


def main(batch=8, context=256, rounds=5, steps=5) -> None:
    host = calibrate()
    torch.manual_seed(0)
    compiled = nexusdsl.compile("examples/tiny_lm.nx")
    flops = training_flops(compiled.graph, context, batch)
    reference = TinyLM()
    tokens = torch.randint(0, 256, (batch, context))
    for model in (compiled, reference):  # warm-up
        step_time(model, tokens, 2)
    ours, theirs = [], []
    for _ in range(rounds):  # interleave so both see the same machine state
        ours += step_time(compiled, tokens, steps)
        theirs += step_time(reference, tokens, steps)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"tiny_lm fwd+bwd, batch {batch} x {context} tokens, {torch.get_num_threads()} threads")
    print(f"  compiled .nx   {a * 1e3:8.2f} ms  ({host.compute(flops, a)})")
    print(f"  hand-written   {b * 1e3:8.2f} ms  ({host.compute(flops, b)})")
    print(f"  ratio          {a / b:8.3f}   (target <= 1.05)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own; 1 is steadier on a busy machine)")
    if (threads := parser.parse_args().threads):
        torch.set_num_threads(threads)
    main()
