"""Compile time of `nexusdsl.compile` for 12-, 48- and 192-layer tiny_lm models, against
building the same model by hand in PyTorch, measured in the same run.

    python benchmarks/compile_speed.py [--rounds 5] [--first 3]

Both sides do the work a user waits for, and both end with a torch.fx GraphModule whose
weights are initialised on the CPU:
  - nexus: `nexusdsl.compile(nexusdsl.loads(text))`: parse, elaborate and verify (`loads`
    checks the program; `compile` reuses its graph), the default passes (`--opt 1`),
    lowering to torch.fx and weight initialisation;
  - by hand: `TinyLM(depth)` of tests/reference_models.py (weight initialisation), then
    `torch.fx.symbolic_trace` of it.
Warm: median of `--rounds` rounds in this process, the two sides interleaved, after one
untimed round, each build after a garbage collection. First call: each side's first build of the 48-layer model in a fresh
interpreter (torch and nexusdsl imported, nothing built yet), the two sides alternated,
median of `--first` runs. The stage columns split nexus's warm time (medians of the same rounds).

Target: a 48-layer model compiles in under 0.5 s, and time grows linearly with depth.
The host's calibration (benchmarks/host.py) is printed first; no result is a fraction of it:
compiling is bound by the Python interpreter, not by matmul throughput or memory bandwidth.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch.fx  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate  # noqa: E402
from tests.reference_models import TinyLM  # noqa: E402

SOURCE = (ROOT / "examples/tiny_lm.nx").read_text()
DEPTHS = (12, 48, 192)
FIRST_DEPTH = 48


def text_for(depth: int) -> str:
    return SOURCE.replace("depth = 4", f"depth = {depth}", 1)


def nexus_build(depth: int):
    return nexusdsl.compile(nexusdsl.loads(text_for(depth), "examples/tiny_lm.nx"))


def hand_build(depth: int):
    return torch.fx.symbolic_trace(TinyLM(depth=depth))


SIDES = {"nexus": nexus_build, "hand": hand_build}


def seconds(fn, *args) -> float:
    gc.collect()  # not inside the timing: another build's garbage is not this one's cost
    start = time.perf_counter()
    built = fn(*args)
    elapsed = time.perf_counter() - start
    del built  # freed outside the timing
    return elapsed


def stage_times(depth: int) -> dict[str, float]:
    """nexusdsl.compile's steps one by one (compiler/lower/program.py does the same)."""
    from nexusdsl.compiler.lower.fx import lower
    from nexusdsl.compiler.pipeline import optimize, options_for

    gc.collect()
    times, start = {}, time.perf_counter()
    graph = nexusdsl.loads(text_for(depth), "examples/tiny_lm.nx").elaborate()  # cached
    times["load"], start = time.perf_counter() - start, time.perf_counter()
    graph = optimize(graph, 1, options=options_for("torch", None))
    times["passes"], start = time.perf_counter() - start, time.perf_counter()
    module = lower(graph, device="cpu", seed=0)
    times["lower"] = time.perf_counter() - start
    del module  # freed outside the timing
    return times


def warm(depth: int, rounds: int) -> dict[str, float]:
    runs = {name: [] for name in (*SIDES, "stages")}
    for _ in range(rounds + 1):
        for name, build in SIDES.items():
            runs[name].append(seconds(build, depth))
        runs["stages"].append(stage_times(depth))
    median = {name: statistics.median(runs[name][1:]) for name in SIDES}
    for stage in runs["stages"][0]:
        median[stage] = statistics.median(s[stage] for s in runs["stages"][1:])
    return median


def first_call(side: str) -> float:
    """One fresh interpreter: import, then time the first build (the child prints it)."""
    out = subprocess.run([sys.executable, __file__, "--child", side], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--first", type=int, default=3)
    parser.add_argument("--child", choices=SIDES)
    a = parser.parse_args()
    if a.child:
        print(seconds(SIDES[a.child], FIRST_DEPTH))
        return
    calibrate()
    print(f"tiny_lm (dim 128, 4 heads), {torch.get_num_threads()} threads; warm: median of "
          f"{a.rounds} interleaved rounds, ms")
    print(f"{'layers':>6} {'load':>7} {'passes':>7} {'lower':>7} {'nexus':>8} "
          f"{'by hand':>8} {'ratio':>6} {'ms/layer':>9}")
    for depth in DEPTHS:
        t = warm(depth, a.rounds)
        print(f"{depth:>6} " + " ".join(f"{t[k] * 1e3:>7.1f}" for k in
                                         ("load", "passes", "lower"))
              + f" {t['nexus'] * 1e3:>8.1f} {t['hand'] * 1e3:>8.1f} "
              f"{t['nexus'] / t['hand']:>6.2f} {t['nexus'] * 1e3 / depth:>9.2f}")
    firsts = {name: [] for name in SIDES}
    for _ in range(a.first):
        for name in SIDES:
            firsts[name].append(first_call(name))
    f = {name: statistics.median(v) for name, v in firsts.items()}
    print(f"first call, {FIRST_DEPTH} layers, fresh interpreter (median of {a.first}): nexus "
          f"{f['nexus'] * 1e3:.0f} ms, by hand {f['hand'] * 1e3:.0f} ms, ratio "
          f"{f['nexus'] / f['hand']:.2f}   (target: 48 layers < 500 ms)")
    print("nexus = nexusdsl.compile: load (parse, elaborate, verify), --opt 1 passes, lower "
          "(CPU weights); by hand = TinyLM(depth) + torch.fx.symbolic_trace; interpreter-bound "
          "(no share of the host's matmul or bandwidth limits applies)")


if __name__ == "__main__":
    main()
