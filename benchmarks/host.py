"""The host a benchmark ran on, measured before it runs, so that its figures compare across
hosts: fp32 and bf16 matmul throughput and memory bandwidth, and each result as a fraction of
the limit that bounds it.

    from benchmarks.host import calibrate
    host = calibrate()                  # measures once per process, prints one line
    host.compute(flops, seconds)        # "3.1% of fp32 matmul": FLOP/s over the fp32 peak
    host.memory(nbytes, seconds)        # "41% of bandwidth": bytes/s over the copy rate

    python benchmarks/host.py           # the calibration alone

A matmul's throughput is the best of a few square products (a 1024 x 1024 fp32 product is
2.1 GFLOP), the bandwidth the best of a few copies of a 64 MB tensor (read + write counted).
Both are what PyTorch reaches on this host with its current threads, not data-sheet peaks, so
"x% of fp32 matmul" says how far a layer is from the best this host does with the same
library. On a shared machine the figures move with the load: compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

MATMUL = 1024  # side of the square matrices timed
COPY = 1 << 24  # fp32 elements copied (64 MB)


@dataclass(frozen=True)
class Host:
    threads: int
    fp32: float  # FLOP/s of a square fp32 matmul
    bf16: float  # FLOP/s of the same in bf16
    bandwidth: float  # bytes/s of a large copy
    device: str = "cpu"

    def line(self) -> str:
        return (f"host ({self.device}, {self.threads} threads): fp32 matmul "
                f"{self.fp32 / 1e9:,.1f} GFLOP/s, bf16 matmul {self.bf16 / 1e9:,.1f} GFLOP/s, "
                f"memory {self.bandwidth / 1e9:,.1f} GB/s")

    def peak(self, dtype: str = "fp32") -> float:
        return {"fp32": self.fp32, "bf16": self.bf16}[dtype]

    def compute(self, flops: float, seconds: float, dtype: str = "fp32") -> str:
        """The FLOP rate of a result as a share of this host's matmul rate in `dtype`."""
        return f"{percent(flops / seconds / self.peak(dtype))} of {dtype} matmul"

    def memory(self, nbytes: float, seconds: float) -> str:
        """The byte rate of a result as a share of this host's copy bandwidth."""
        return f"{percent(nbytes / seconds / self.bandwidth)} of bandwidth"


def percent(share: float) -> str:
    return f"{100 * share:.2g}%" if share < 0.1 else f"{100 * share:.0f}%"


def _best_seconds(runs: dict, repeats: int, wait) -> dict[str, float]:
    """The best time of each run, the runs taken in turn (a load that comes and goes on a
    shared machine then touches each alike)."""
    for run in runs.values():
        run()  # warm-up: first-touch allocation, kernel selection
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            wait()
            start = time.perf_counter()
            run()
            wait()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(device: str = "cpu", repeats: int = 4) -> Host:
    import torch

    wait = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    f32 = [torch.randn(MATMUL, MATMUL, device=device) for _ in range(2)]
    b16 = [t.bfloat16() for t in f32]
    src = torch.randn(COPY, device=device)
    dst = torch.empty_like(src)
    best = _best_seconds({"fp32": lambda: f32[0] @ f32[1], "bf16": lambda: b16[0] @ b16[1],
                          "copy": lambda: dst.copy_(src)}, repeats, wait)
    matmul = 2.0 * MATMUL**3
    return Host(torch.get_num_threads(), matmul / best["fp32"], matmul / best["bf16"],
                2.0 * 4 * COPY / best["copy"], device)


_MEASURED: dict[str, Host] = {}


def calibrate(device: str = "cpu", quiet: bool = False) -> Host:
    """This host's limits (measured once per process and device), printed unless `quiet`."""
    if device not in _MEASURED:
        _MEASURED[device] = measure(device)
    if not quiet:
        print(_MEASURED[device].line(), flush=True)
    return _MEASURED[device]


def training_flops(graph, context: int, batch: int = 1) -> float:
    """FLOPs of one forward + backward pass: the cost model's forward (compiler/passes/cost.py,
    batch 1 at `context` positions) times the batch, times 3 (backward is about twice the
    forward's matrix products)."""
    from nexusdsl.compiler.summary import total_flops

    return 3.0 * batch * total_flops(graph, context)[0]


def forward_flops(graph, context: int, batch: int = 1) -> float:
    from nexusdsl.compiler.summary import total_flops

    return float(batch * total_flops(graph, context)[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    calibrate(parser.parse_args().device)
