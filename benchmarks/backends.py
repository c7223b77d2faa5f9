"""Forward time of each backend as a ratio to eager PyTorch, and what each compilation costs.

    python benchmarks/backends.py            # tiny_lm and an MLP-heavy block
    python benchmarks/backends.py --quick    # fewer timed calls
    python benchmarks/backends.py --threads 1  # one thread each (steadier on a busy machine)

For each model: eager, torch.compile (Inductor, default mode) and IREE llvm-cpu (torch-dialect
MLIR, compiled for this CPU), timed interleaved in one run on the same inputs (inference,
no_grad). "vs eager" is the backend's forward time divided by eager's: below 1 is faster.
Compile time: torch.compile's first call minus an eager call; IREE's export to MLIR plus
iree-compile. Each backend's output is also compared with eager's. Every forward time is also
given as a FLOP rate (the cost model's forward FLOPs) over the host's fp32 matmul rate
(benchmarks/host.py, printed first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)
# Cold compilations: Inductor's on-disk caches would make a second run's compile time ~0.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate, forward_flops  # noqa: E402
from nexusdsl.compiler.lower.compile import compile_module  # noqa: E402
from nexusdsl.compiler.lower.targets import IreeModule  # noqa: E402

MLP_HEAVY = """nexus 0.1
import std.nn
# Position-wise feed-forward layers only: matmuls and GELU, no attention.
model MLPStack(dim = 256, depth = 4) {
  input x: float[B, T, dim]
  repeat depth {
    x = x + mlp(layernorm(x), mult = 4)
  }
  output y = x
}
"""


def models():
    """(label, eager module, inputs)"""
    gen = torch.Generator().manual_seed(0)
    tiny = nexusdsl.compile(ROOT / "examples" / "tiny_lm.nx").eval()
    mlp = nexusdsl.compile(nexusdsl.loads(MLP_HEAVY, "mlp_stack.nx")).eval()
    return [("tiny_lm (d128, 4 layers), 8x128 tokens", tiny,
             (torch.randint(0, 256, (8, 128), generator=gen),)),
            ("MLP stack (d256, 4 layers), 8x128 tokens", mlp,
             (torch.randn(8, 128, 256, generator=gen),))]


def timed(fn, inputs, calls: int) -> list[float]:
    times = []
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - start)
    return times


def first_call(fn, inputs) -> tuple[float, object]:
    with torch.no_grad():
        start = time.perf_counter()
        out = fn(*inputs)
    return time.perf_counter() - start, out


def relative_error(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


def bench(host, label, eager, inputs, rounds: int, calls: int) -> None:
    eager_first, want = first_call(eager, inputs)
    compiled = compile_module(_copy(eager))  # Inductor, default mode
    compile_first, got_compiled = first_call(compiled, inputs)
    iree = IreeModule(_copy(eager), "iree-cpu")
    iree_first, got_iree = first_call(iree, inputs)
    artifact = iree.artifacts[0]
    runs = {"eager": [], "torch.compile": [], "IREE llvm-cpu": []}
    fns = {"eager": eager, "torch.compile": compiled, "IREE llvm-cpu": iree}
    for _ in range(rounds):  # interleaved, so every backend sees the same machine state
        for name, fn in fns.items():
            runs[name] += timed(fn, inputs, calls)
    base = statistics.median(runs["eager"])
    compile_s = {"eager": 0.0, "torch.compile": compile_first - eager_first,
                 "IREE llvm-cpu": artifact.seconds["export"] + artifact.seconds["iree"]}
    errors = {"eager": 0.0, "torch.compile": relative_error(got_compiled, want),
              "IREE llvm-cpu": relative_error(got_iree, want)}
    print(f"\n{label}")
    print(f"  {'backend':<15} {'forward ms':>11} {'vs eager':>9} {'compile s':>10} "
          f"{'max diff':>9}  of host peak")
    batch, context = inputs[0].shape[:2]
    flops = forward_flops(eager.graph, context, batch)
    for name, times in runs.items():
        t = statistics.median(times)
        print(f"  {name:<15} {t * 1e3:11.2f} {t / base:9.2f} {compile_s[name]:10.1f} "
              f"{errors[name]:9.1e}  {host.compute(flops, t)}")
    print(f"  (IREE: export to MLIR {artifact.seconds['export']:.1f} s, iree-compile "
          f"{artifact.seconds['iree']:.1f} s; loading and first call "
          f"{iree_first - compile_s['IREE llvm-cpu']:.2f} s)")


def _copy(module):
    """A second module with the same weights (torch.compile compiles in place)."""
    from nexusdsl.compiler.lower.fx import lower

    twin = lower(module.graph, seed=None).eval()
    twin.load_state_dict(module.state_dict())
    return twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed calls")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for PyTorch and IREE alike (default: all)")
    args = parser.parse_args()
    rounds, calls = (3, 3) if args.quick else (5, 10)
    if args.threads:
        import iree.runtime

        torch.set_num_threads(args.threads)
        iree.runtime.flags.parse_flags(f"--task_topology_max_group_count={args.threads}")
    host = calibrate()
    print(f"backends on {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          f"forward medians of {rounds * calls} calls")
    for label, eager, inputs in models():
        bench(host, label, eager, inputs, rounds, calls)


if __name__ == "__main__":
    main()
