"""How many threads torch uses while training.

On a machine that other processes keep busy, torch's default (one thread per core) makes its
threads wait for each other at every parallel region: on this project's 2-core machine with a
load average of 6, a training step took 8x longer with 2 threads than with 1. So `threads = 0`
(the default) means: torch's default, unless the load average already reaches the number of
cores, then 1 thread. Under torchrun the launcher's setting (OMP_NUM_THREADS) is kept. Thread
count can change float rounding, so bit-exact resumes need the same count on both sides: set
`threads` explicitly where that matters. The previous count is restored afterwards.
"""

from __future__ import annotations

import contextlib
import os

import torch


def busy_cores() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def choose(requested: int, distributed: bool) -> tuple[int, str]:
    """(threads, reason) for a run."""
    current = torch.get_num_threads()
    if requested:
        return requested, "as set"
    if distributed:
        return current, "as the launcher set"
    cores, load = os.cpu_count() or 1, busy_cores()
    if cores > 1 and load >= cores:
        return 1, f"the machine is busy (load {load:.1f} on {cores} cores)"
    return current, "torch's default"


@contextlib.contextmanager
def threads_for(requested: int, d=None, display=None):
    previous = torch.get_num_threads()
    count, reason = choose(requested, d is not None and d.active)
    torch.set_num_threads(count)
    if display is not None:
        display.log(f"torch threads: {count}, {reason}")
    try:
        yield
    finally:
        torch.set_num_threads(previous)
