"""A model too big for memory: refused before anything is allocated with one located error
("needs N GiB", at the node with the most parameters), instead of a traceback from torch's
allocator or a process the kernel kills. The meta device allocates nothing and is exempt;
`nexus check` warns. The estimate is the parameter count times the dtype's size."""

import json
import re
import time
from pathlib import Path

import pytest

import nexusdsl
from nexusdsl.compiler.lower import fx
from tests.conftest import ROOT, Run

LOCATED = re.compile(r"^(\S+):(\d+):(\d+): (error|warning): (.*)$", re.M)
UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}
TINY_LM = ROOT / "examples" / "tiny_lm.nx"


def tiny_lm_params(d: int, depth: int = 4, vocab: int = 256) -> int:
    """examples/tiny_lm.nx counted by hand: embedding, then per block two rmsnorms, attention
    (qkv and out with biases) and mlp(mult = 4), then the final rmsnorm (the head is tied)."""
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab * d + depth * per_block + d


def attention_params(d: int) -> int:
    return 3 * d * d + 3 * d + d * d + d


def to_bytes(amount: str, unit: str) -> float:
    return float(amount) * UNITS[unit]


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, read here independently of nexusdsl.memory."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/meminfo has no MemAvailable")


def one_located(run: Run, severity: str = "error") -> tuple[str, str, str, str]:
    """No traceback, exactly one located diagnostic of this severity: (file, line, col, text)."""
    assert "Traceback" not in run.err, run.err
    found = [f for f in LOCATED.findall(run.err) if f[3] == severity]
    assert len(found) == 1, run.err
    file, line, col, _, message = found[0]
    return file, line, col, message


def test_a_model_too_big_for_memory_is_refused_before_allocating(nexus):
    d = 2**20  # 5.3e13 parameters: every tensor exists for torch, the whole cannot fit
    start = time.monotonic()
    run = nexus("compile", TINY_LM, "--set", f"dim={d}")
    assert run.code == 1, run.out + run.err
    assert time.monotonic() - start < 60  # refused, not allocating towards the OOM killer
    file, line, col, message = one_located(run)
    assert (file, line, col) == (str(TINY_LM), "10", "13")  # blocks.0.attention, the largest
    found = re.search(r"needs ([\d.]+) (\w+) for its ([\d,]+) parameters \(f32\), more than "
                      r"the ([\d.]+) (\w+) this machine has available; `blocks.0.attention` "
                      r"alone takes ([\d.]+) (\w+)", message)
    assert found, message
    assert int(found.group(3).replace(",", "")) == tiny_lm_params(d)
    need, have = to_bytes(*found.group(1, 2)), to_bytes(*found.group(4, 5))
    assert need == pytest.approx(4 * tiny_lm_params(d), rel=1e-3)
    assert 0.5 * mem_available() < have < 2 * mem_available()
    assert to_bytes(*found.group(6, 7)) == pytest.approx(4 * attention_params(d), rel=1e-3)


def test_the_meta_device_builds_it_without_weights(nexus):
    d = 2**20
    run = nexus("compile", TINY_LM, "--set", f"dim={d}", "--device", "meta", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["params"]["total"] == tiny_lm_params(d)


def test_check_warns_and_passes(nexus, tmp_path):
    path = tmp_path / "wide.nx"
    path.write_text(TINY_LM.read_text().replace("dim = 128", "dim = 1_048_576"))
    run = nexus("check", path)
    assert run.code == 0 and run.out.strip() == f"{path}: ok", run.out + run.err
    file, line, col, message = one_located(run, "warning")
    assert (file, line) == (str(path), "10") and "needs" in message


def test_a_tensor_larger_than_torch_can_hold_even_on_meta(nexus):
    d = 2**31  # the qkv weight: 3 * 2^62 elements, more bytes than a 64-bit count holds
    for device in ("cpu", "meta"):
        run = nexus("compile", TINY_LM, "--set", f"dim={d}", "--device", device)
        assert run.code == 1, run.out + run.err
        file, line, col, message = one_located(run)
        assert (file, line) == (str(TINY_LM), "10")
        assert message == (f"blocks.0.attention.qkv.weight would have {3 * d * d:,} elements "
                           f"([{3 * d}, {d}]), more than a torch tensor can hold")


@pytest.mark.parametrize("dtype,size", [("f32", 4), ("bf16", 2)])
def test_the_estimate_is_parameters_times_the_dtype_size(monkeypatch, dtype, size):
    program = nexusdsl.loads("model W {\n  input x: float[B, 64]\n  output y = linear(x, 64)\n}\n",
                             "w.nx")
    need = (64 * 64 + 64) * size
    monkeypatch.setattr(fx, "available_bytes", lambda: need - 1)
    with pytest.raises(nexusdsl.NexusError, match="needs .* for its 4,160 parameters"):
        nexusdsl.compile(program, dtype=dtype)
    monkeypatch.setattr(fx, "available_bytes", lambda: need)
    model = nexusdsl.compile(program, dtype=dtype)
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == need
