"""How much memory this machine can still give, and sizes in words.

Used to refuse, before allocating, a model or a batch that cannot fit: a run that would
otherwise swap for minutes and then be killed by the kernel gets one line instead
("needs 40.0 GiB, this machine has 23.1 GiB available").
"""

from __future__ import annotations

import os
from pathlib import Path

_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo: free memory plus what the page cache would give back."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """What a container's memory limit still allows (cgroup v2, then v1); None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit = _read_int(limit_file)  # "max" (no limit) is not digits: None
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = _read_int(usage_file) or 0
        return max(limit - usage, 0)
    return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes() -> int | None:
    """Bytes this process can still allocate without swapping, or None when the platform does
    not say (then callers check nothing rather than refuse on a guess)."""
    found = [n for n in (_meminfo_available(), _cgroup_headroom()) if n is not None]
    if not found:
        found = [n for n in (_sysconf_available(),) if n is not None]
    return min(found) if found else None


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB', 3 * 2**30 -> '3.0 GiB' (binary units, one decimal)."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
