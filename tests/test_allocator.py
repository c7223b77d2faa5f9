"""nexusdsl.allocator: after keep_freed_memory() a freed 64 MiB tensor's pages are reused by
the next one instead of being faulted in again (counted with getrusage in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, resource, sys
import torch
from nexusdsl.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_a_fresh_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 1024 * 1024)  # 64 MiB, written once, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_tensor()
print(json.dumps({"kept": kept, "faults": min(faults_of_a_fresh_tensor() for _ in range(3))}))
"""


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    pages = 64 * 1024 * 1024 // 4096
    plain, kept = probe("plain"), probe("keep")
    assert plain["faults"] > pages // 2  # glibc maps and unmaps a 64 MiB block every time
    assert kept["kept"] is True
    assert kept["faults"] < pages // 100  # the freed block is reused as it is



WAITS = """
import json, os, sys
if sys.argv[1] == "torch first":
    import torch
import nexusdsl.cli as cli
from nexusdsl.allocator import wait_passively
cli.app = lambda: None  # the command's start-up, without a command
cli.main()
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "in_time": wait_passively()}))
"""


def waits(mode: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", WAITS, mode], capture_output=True, text=True,
                          check=True, env={**environ, **env})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_nexus_command_asks_for_passive_openmp_waits_before_torch_loads():
    assert waits("plain") == {"policy": "PASSIVE", "in_time": True}
    assert waits("plain", OMP_WAIT_POLICY="ACTIVE") == {"policy": "ACTIVE", "in_time": True}
    assert waits("torch first") == {"policy": "PASSIVE", "in_time": False}  # too late: said
