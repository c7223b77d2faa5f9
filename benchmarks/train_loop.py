"""Overhead of `nexusdsl.train`'s loop against a minimal hand-written training loop; bf16
against fp32; activation checkpointing's peak memory.

    python benchmarks/train_loop.py [--steps 20] [--rounds 8] [--threads 1]

Both train the same compiled tiny_lm (dim 96, depth 2, 8 heads) on the default corpus (CPython's
documentation text) with AdamW, gradient clipping and the same batch (32 x 64 bytes). The hand
loop draws windows from the corpus as one in-memory tensor; the nexus loop reads the same bytes
from a file (`data = text(FILE)`), memory-mapped as `nexus train` reads any text file, with
per-step generators, the schedule, auxiliary-loss collection and progress bookkeeping. Only
the steps are timed (not compilation or held-out evaluation). Each round runs both loops back
to back, in alternating order, and gives one ratio; on a shared machine the load drifts over
seconds, so short paired rounds say more than a long run of each. Both use the same thread
count. Prints the median seconds per step of each, and the median and range of the rounds'
ratios (target: 1.00 or less). The host's calibration (benchmarks/host.py) is printed first, at
the loops' thread count, and each s/step also as a FLOP rate (3x the cost model's forward
FLOPs per batch) over the host's fp32 matmul rate.

Then the nexus loop in bf16 (`precision = bf16`: autocast, float32 master weights) against
fp32, in the same alternating rounds; and one forward + backward pass of a larger TinyLM
(dim 256, depth 8, batch 8 x 256) with and without `checkpoint = true`, and in bf16
(autocast, as `precision = bf16` runs it): the peak bytes allocated above the start (torch's
profiler, every CPU allocation and free in order) and the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate, training_flops  # noqa: E402
from nexusdsl.train.data import default_corpus  # noqa: E402

HYPER = {"dim": 96, "depth": 2, "heads": 8}  # the demo's TinyLM
BATCH, CONTEXT = 32, 64


def hand_loop(steps: int) -> float:
    model = nexusdsl.compile("examples/tiny_lm.nx", **HYPER)
    data = torch.from_numpy(default_corpus().astype("int64"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,), generator=gen)
        x = torch.stack([data[i: i + CONTEXT + 1] for i in idx.tolist()])
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return (time.perf_counter() - start) / steps


def nexus_loop(steps: int, threads: int, corpus: Path, precision: str = "fp32") -> float:
    result = nexusdsl.train("examples/tiny_lm.nx", data=str(corpus), steps=steps, batch=BATCH,
                            context=CONTEXT, eval_batches=1, threads=threads,
                            precision=precision, **HYPER)
    return result.seconds / steps


def paired(rounds: int, first, second) -> tuple[list[float], list[float]]:
    """Each round runs both, in alternating order (the load drifts over seconds)."""
    a, b = [], []
    for r in range(rounds):
        if r % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return a, b


def ratio_line(name: str, top: list[float], bottom: list[float], target: str) -> str:
    ratios = sorted(t / b for t, b in zip(top, bottom))
    return (f"ratio {name}: median {statistics.median(ratios):.3f}, rounds {ratios[0]:.2f} to "
            f"{ratios[-1]:.2f}{target}")


BIG = {"dim": 256, "depth": 8, "heads": 8}  # activations that matter: checkpointing's case
BIG_BATCH, BIG_CONTEXT = 8, 256


def checkpointing_figures() -> dict[str, tuple[int, float]]:
    """(peak bytes, seconds) of one forward + backward pass, plain and checkpointed."""
    from nexusdsl.train import checkpointing

    x = torch.randint(0, 256, (BIG_BATCH, BIG_CONTEXT + 1),
                      generator=torch.Generator().manual_seed(0))
    figures = {}
    for name in ("plain", "checkpoint = true", "plain, bf16"):
        model = nexusdsl.compile("examples/tiny_lm.nx", **BIG)
        if name == "checkpoint = true":
            checkpointing.install(model, checkpointing.chosen_steps(model.graph, True, None))
        model.train()
        precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("bf16"))
        with precision:
            step(model, x)  # warm-up: first calls allocate caches
            model.zero_grad(set_to_none=True)
            figures[name] = peak_bytes(model, x)
    return figures


def step(model, x) -> None:
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()


def peak_bytes(model, x) -> tuple[int, float]:
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step(model, x)
    seconds = time.perf_counter() - start
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    host = calibrate()
    graph = nexusdsl.loads(Path("examples/tiny_lm.nx").read_text(), "tiny_lm.nx").elaborate(
        **HYPER)
    flops = training_flops(graph, CONTEXT, BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_bytes(default_corpus().tobytes())
        hand, nexus = paired(args.rounds, lambda: hand_loop(args.steps),
                             lambda: nexus_loop(args.steps, args.threads, corpus))
        bf16, fp32 = paired(args.rounds,
                            lambda: nexus_loop(args.steps, args.threads, corpus, "bf16"),
                            lambda: nexus_loop(args.steps, args.threads, corpus))
    print(f"{'loop':<12}{'s/step':>10}   ({args.rounds} rounds of {args.steps} steps, "
          f"{args.threads} thread(s))")
    for name, times in (("hand", hand), ("nexus", nexus)):
        t = statistics.median(times)
        print(f"{name:<12}{t:>10.4f}   ({host.compute(flops, t)})")
    print(ratio_line("nexus/hand", nexus, hand, " (target <= 1.00)"))
    print(f"\n{'precision':<12}{'s/step':>10}   (the nexus loop, the same rounds)")
    for name, times in (("fp32", fp32), ("bf16", bf16)):
        t = statistics.median(times)
        print(f"{name:<12}{t:>10.4f}   ({host.compute(flops, t, name)})")
    print(ratio_line("bf16/fp32", bf16, fp32, ""))
    print(f"\nactivation checkpointing: TinyLM {BIG}, batch {BIG_BATCH} x {BIG_CONTEXT}, one "
          "forward + backward")
    figures = checkpointing_figures()
    for name, (peak, seconds) in figures.items():
        print(f"{name:<20}peak {peak / 2**20:>8.1f} MiB   {seconds:.3f} s")
    plain, checked = figures["plain"][0], figures["checkpoint = true"][0]
    print(f"peak checkpointed/plain: {checked / plain:.3f}; seconds bf16/fp32: "
          f"{figures['plain, bf16'][1] / figures['plain'][1]:.3f}")


if __name__ == "__main__":
    main()
