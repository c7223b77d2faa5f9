"""Keep freed memory in the process instead of handing it back to the kernel.

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MiB) straight from
mmap and unmaps them when freed, and it trims the top of its heap back to the kernel once more
than a threshold is free there. A training step on long sequences allocates and frees dozens
of tensors of tens of megabytes each (a 16k-token `hyena` layer: about forty of 8-32 MiB), so
every step the kernel maps those pages again, zeroes them, and takes a page fault on each
4 KiB page at first write. On this machine that is about a tenth of a 16k-token hyena layer's
forward and backward pass (`benchmarks/hyena.py --plain-malloc` shows the difference).

`keep_freed_memory()` raises both thresholds so that freed blocks stay in the heap and are
reused: the process keeps its peak footprint instead of returning memory between steps, the
usual trade of a caching allocator (PyTorch's CUDA allocator makes the same one). The `nexus`
command calls it at start; library users can call it themselves. Only glibc has `mallopt`;
elsewhere this does nothing and says so by returning False.

`wait_passively()` is the other setting the command makes at start, before torch loads: it
asks PyTorch's OpenMP runtime (GNU libgomp) to put idle worker threads to sleep at once
instead of spinning for a while first. Every parallel kernel ends at a barrier; on a machine
whose cores are shared (other processes, a load above the core count), a spinning worker holds
a core another process wants and a descheduled one delays the barrier, and a model made of
many short memory-bound kernels pays that at each one: on the shared 2-core CI machine a
16k-token `hyena` layer's forward and backward took 1.6-1.8 s with two threads under libgomp's
default and 0.54-0.59 s with passive waiting (0.52-0.62 s on one thread), tiny_lm's 0.7-1.9 s
against 0.12-0.15 s, while attention's long compute-bound kernels changed little (measured
with benchmarks/hyena.py's layers, processes alternated). An `OMP_WAIT_POLICY` the user set
is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_UP_TO = 1 << 30  # blocks up to 1 GiB come from the heap; up to 2 GiB of free top is kept
INT_MAX = (1 << 31) - 1  # mallopt takes a C int


def keep_freed_memory(limit: int = KEEP_UP_TO) -> bool:
    """Serve blocks up to `limit` bytes from the heap and keep up to twice that free at its top.
    True if the C library took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = min(2 * limit, INT_MAX)
    return bool(mallopt(M_MMAP_THRESHOLD, min(limit, INT_MAX))) and bool(
        mallopt(M_TRIM_THRESHOLD, trim))


def wait_passively() -> bool:
    """Idle OpenMP workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless the user
    set a policy). Read once, when torch loads its OpenMP runtime: True if torch is not loaded
    yet, so that the setting takes effect."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
