"""Axis wiring and reversible recursion, measured in one run.

    python benchmarks/axes.py            # --quick: a smoke run; --threads N: torch threads

1. Token mixing of 4096 tokens of width 64: `full` (one 4096 x 4096 matrix) against `axial`
   over a [16, 16, 16] and a [64, 64] grid. Parameters and FLOPs come from the IR (the op
   registry's estimates), forward+backward time from the compiled modules; each `.nx` model is
   also timed against the same mixing written by hand in torch (ratio ~1 means no overhead),
   and its FLOP rate (3x the forward FLOPs per pass) given as a share of the host's fp32 matmul.
2. `repeat 256 shared reversible { ... }` against plain autograd through the same body
   (`repeat 256 shared`, unrolled): peak memory of forward+backward (tensor allocations seen by
   the torch profiler, above what existed before) and time. Target: at least 4x less memory.
"""

from __future__ import annotations

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
from benchmarks.host import calibrate  # noqa: E402
from nexusdsl.compiler.summary import count_params, total_flops  # noqa: E402

QUICK = "--quick" in sys.argv
if "--threads" in sys.argv:
    torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
BATCH = 2 if QUICK else 4
ROUNDS = 2 if QUICK else 5

# ---------------------------------------------------------------------------- token mixing

MIXERS = {
    "full 4096x4096": 'y = mix(x, axis = T, wiring = full)',
    "axial [16,16,16]": ('g = layout(x, "b (i j k) d -> b i j k d", i = 16, j = 16)\n'
                         '  y = layout(mix(g, axes = [i, j, k]), "b i j k d -> b (i j k) d")'),
    "axial [64,64]": ('g = layout(x, "b (i j) d -> b i j d", i = 64)\n'
                      '  y = layout(mix(g, axes = [i, j]), "b i j d -> b (i j) d")'),
}


def mixer_program(body: str):
    text = f"model Mix() {{\n  input x: float[B, T=4096, d=64]\n  {body}\n  output y = y\n}}\n"
    return nexusdsl.loads(text, "mix.nx")


def by_hand(name: str, model):
    """The same mixing in plain torch, with the compiled model's weights."""
    w = {k.split(".", 1)[1]: p.detach().requires_grad_() for k, p in model.named_parameters()}
    if name.startswith("full"):
        return lambda x: torch.einsum("btd,st->bsd", x, w["weight"])
    sizes = (16, 16, 16) if "16" in name else (64, 64)
    letters = "ijk"[:len(sizes)]

    def axial(x):
        g = x.reshape(x.shape[0], *sizes, 64)
        y = 0
        for c in letters:
            out = letters.replace(c, "z")
            y = y + torch.einsum(f"b{letters}d,z{c}->b{out}d", g, w[f"{c}.weight"])
        return y.reshape(x.shape)

    return axial


def fwd_bwd_time(fn, x, steps=3) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn(x).square().mean().backward()
        times.append(time.perf_counter() - start)
    return times


def token_mixing(host) -> None:
    x = torch.randn(BATCH, 4096, 64, requires_grad=True)
    print(f"Token mixing, {BATCH} x 4096 tokens of width 64, {torch.get_num_threads()} threads "
          "(FLOPs per sequence, forward)")
    print(f"  {'wiring':18} {'params':>12} {'GFLOPs':>9} {'fwd+bwd ms':>11} {'by hand ms':>11} "
          f"{'ratio':>6}  of host peak")
    rows = []
    for name, body in MIXERS.items():
        program = mixer_program(body)
        graph = program.elaborate()
        model = nexusdsl.compile(program)
        hand = by_hand(name, model)
        for fn in (model, hand):
            fwd_bwd_time(fn, x, 1)  # warm-up
        ours, theirs = [], []
        for _ in range(ROUNDS):
            ours += fwd_bwd_time(model, x)
            theirs += fwd_bwd_time(hand, x)
        a, b = statistics.median(ours), statistics.median(theirs)
        params, flops = count_params(graph)["total"], total_flops(graph)[0]
        rows.append((name, params, flops, a))
        print(f"  {name:18} {params:12,d} {flops / 1e9:9.3f} {a * 1e3:11.1f} {b * 1e3:11.1f} "
              f"{a / b:6.2f}  {host.compute(3 * BATCH * flops, a)}")
    full = rows[0]
    for name, params, flops, t in rows[1:]:
        print(f"  full / {name}: {full[1] / params:,.0f}x params, {full[2] / flops:,.1f}x FLOPs, "
              f"{full[3] / t:,.1f}x time")


# ---------------------------------------------------------------------------- recursion

BODY = ("    g = mix(g, axes = [i, j], order = sequential) |> leaky_relu(alpha = 0.5)\n"
        "    g = linear(g, d, bias = false)\n")


def recursion_program(steps: int, reversible: bool):
    keyword = "reversible " if reversible else ""
    text = (f"model Recur() {{\n  input x: float[B, i=16, j=16, d=32]\n  g = x\n"
            f"  repeat {steps} shared {keyword}{{\n{BODY}  }}\n  output y = g\n}}\n")
    return nexusdsl.loads(text, "recur.nx")


def well_conditioned(model) -> None:
    """Orthogonal weights: the state neither explodes nor vanishes over 256 steps."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.linalg.qr(torch.randn(p.shape, generator=gen))[0])


def peak_bytes(model, x) -> tuple[int, float]:
    """(peak bytes allocated during forward+backward above the starting point, seconds)."""
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        model(x).square().mean().backward()
    seconds = time.perf_counter() - start
    # Allocations and frees as attributed to the innermost op, in time order.
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak, seconds


def timed(model, x) -> float:
    start = time.perf_counter()
    model(x).square().mean().backward()
    return time.perf_counter() - start


def recursion(host, steps: int = 256) -> None:
    batch = 4 if QUICK else 8
    x = torch.randn(batch, 16, 16, 32)
    state_mb = x.numel() * 4 / 2**20
    print(f"\nRecursion, {steps} steps of mix(sequential [i, j]) |> leaky_relu |> linear on a "
          f"[{batch}, 16, 16, 32] state ({state_mb:.2f} MB)")
    results = {}
    for label, reversible in (("plain autograd (repeat shared)", False),
                              ("reversible (checkpoint every 16)", True)):
        program = recursion_program(steps, reversible)
        model = nexusdsl.compile(program)
        flops = 3 * batch * total_flops(program.elaborate())[0]
        well_conditioned(model)
        timed(model, x)  # warm-up
        peak, _ = peak_bytes(model, x)
        seconds = statistics.median(timed(model, x) for _ in range(ROUNDS))
        results[label] = (peak, seconds)
        print(f"  {label:34} peak {peak / 2**20:9.1f} MB   fwd+bwd {seconds * 1e3:8.1f} ms "
              f"({host.compute(flops, seconds)})")
    (plain, t_plain), (rev, t_rev) = results.values()
    print(f"  memory: {plain / rev:.1f}x lower (target >= 4x); time: {t_rev / t_plain:.2f}x of plain")


if __name__ == "__main__":
    host = calibrate()
    torch.manual_seed(0)
    token_mixing(host)
    recursion(host)
