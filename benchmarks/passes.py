"""The optimizer, measured in one run.

    python benchmarks/passes.py          # --quick: a smoke run; --threads N (default 1)

1. Forward+backward time at `--opt 0` against `--opt 2` (same weights, same inputs): the MNN
   byte model of examples/mnn.nx, and two MLP-Mixer-style models: one written the way this
   language writes token mixing (patches laid out as an 8 x 8 grid, token MLPs as axial
   mixes along the grid's axes, sMLP/ViP style), and the original MLP-Mixer (token MLPs as
   dense mixes along the 64 patches). Target: 1.3x or better.
2. A `random(density = 0.1)` wiring over a [32, 32] and a [64, 64] grid: the dense masked
   mix (`--opt 0`) against the compacted one (`--opt 2`): forward+backward time. Target: 4x
   faster. Also printed: trainable parameters, counted on the built modules (the compacted
   mix keeps one value per connection, so "10x fewer" is the density, by construction), and
   the bytes each keeps (dense: weight + its bool mask; compacted: values + the int64 index
   tensors of its CSR structure and of its transpose's).
3. A TinyLM trained briefly on the default corpus (its train section's sizes), then pruned
   by magnitude: structured (half the MLP units and heads) and unstructured (half of each
   projection's weights): held-out bits per byte before and after, and inference time of
   the unpruned and the two pruned models, timed in interleaved rounds.

Times are the minimum over interleaved rounds (the machine is shared); the optimised model
loads the unoptimised one's weights, and outputs are checked to agree before timing. The
host's calibration (benchmarks/host.py) is printed first, and each time also as a FLOP rate
(the cost model's FLOPs of that module's own graph, 3x for forward+backward) over the host's
fp32 matmul rate.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate, forward_flops  # noqa: E402

QUICK = "--quick" in sys.argv
torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1])
                      if "--threads" in sys.argv else 1)
ROUNDS = 2 if QUICK else 8

GRID_MIXER = """nexus 0.1
import std.nn

model GridMixer(dim = 128, depth = 4, classes = 10) {
  input x: float[B, P=64, pixels=48]
  g = layout(linear(x, dim), "b (h w) d -> b h w d", h = 8)
  repeat depth {
    t = mix(layernorm(g), axes = [h, w], order = sequential, to = [16, 16], bias = true) |> gelu
    g = g + mix(t, axes = [h, w], order = sequential, to = [8, 8], bias = true)
    g = g + mlp(layernorm(g), mult = 4)
  }
  output logits = linear(mean(layout(layernorm(g), "b h w d -> b (h w) d")), classes)
}
"""

MIXER = """nexus 0.1
import std.nn

model Mixer(dim = 128, tokens = 256, depth = 4, classes = 10) {
  input x: float[B, P=64, pixels=48]
  h = linear(x, dim)
  repeat depth {
    t = mix(layernorm(h), axis = P, to = tokens, bias = true) |> gelu
    h = h + mix(t, axis = P, to = 64, bias = true)
    h = h + mlp(layernorm(h), mult = 4)
  }
  output logits = linear(mean(layernorm(h)), classes)
}
"""

SPARSE = """nexus 0.1
model Sparse(d = 16) {
  input x: float[B, i=SIDE, j=SIDE, d]
  output y = mix(x, axes = [i, j], wiring = random(density = 0.1, seed = 0))
}
"""


def step_time(model, inputs) -> float:
    start = time.perf_counter()
    out = model(*inputs)
    out.float().square().mean().backward()
    return time.perf_counter() - start


def inference_time(model, inputs) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        model(*inputs)
        return time.perf_counter() - start


def race(models: dict, inputs, rounds: int = ROUNDS, step=step_time) -> dict[str, float]:
    """Minimum seconds of `step` (default: forward+backward) of each model, rounds
    interleaved."""
    best = dict.fromkeys(models, float("inf"))
    for model in models.values():
        step(model, inputs)  # warm up allocator and kernels
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], step(model, inputs))
    return best


def opt_pair(program, inputs, **hyper):
    slow = nexusdsl.compile(program, opt=0, **hyper)
    fast = nexusdsl.compile(program, opt=2, **hyper)
    fast.load_state_dict(slow.state_dict())
    with torch.no_grad():
        a, b = slow(*inputs), fast(*inputs)
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4), "opt 2 differs"
    return slow, fast


# ---------------------------------------------------------------------------- 1. opt levels


def rate(host, module, inputs, seconds: float, passes: int = 3) -> str:
    """A module's FLOP rate over the host's fp32 matmul: its graph's FLOPs at the inputs'
    batch and length, times `passes` (3: forward and backward; 1: forward)."""
    x = inputs[0]
    flops = forward_flops(module.graph, x.shape[1] if x.dim() > 1 else 1, x.shape[0])
    return host.compute(passes * flops, seconds)


def levels(host) -> None:
    gen = torch.Generator().manual_seed(0)
    cases = [
        (f"examples/mnn.nx (B={1 if QUICK else 2}, T=4096)", nexusdsl.load(ROOT / "examples/mnn.nx"),
         [torch.randint(0, 256, (1 if QUICK else 2, 4096), generator=gen)],
         {"depth": 1} if QUICK else {}),
        ("GridMixer (8x8 patches, axial)", nexusdsl.loads(GRID_MIXER, "grid_mixer.nx"),
         [torch.randn(8 if QUICK else 32, 64, 48, generator=gen)], {}),
        ("Mixer (64 patches, dense)", nexusdsl.loads(MIXER, "mixer.nx"),
         [torch.randn(8 if QUICK else 32, 64, 48, generator=gen)], {}),
    ]
    print("1. forward+backward, --opt 0 vs --opt 2 (target >= 1.3x)")
    print(f"   {'model':<32} {'opt 0 ms':>9} {'opt 2 ms':>9} {'speed-up':>9}   of host peak "
          "(opt 0, opt 2)")
    for name, program, inputs, hyper in cases:
        slow, fast = opt_pair(program, inputs, **hyper)
        t = race({"0": slow, "2": fast}, inputs)
        print(f"   {name:<32} {t['0'] * 1e3:9.1f} {t['2'] * 1e3:9.1f} {t['0'] / t['2']:8.2f}x   "
              f"{rate(host, slow, inputs, t['0'])}, {rate(host, fast, inputs, t['2'])}")


# ---------------------------------------------------------------------------- 2. sparsity


def sparsity(host) -> None:
    print("\n2. random(density = 0.1) wiring, dense masked (opt 0) vs pruned (opt 2) "
          "(target 4x faster; 10x fewer parameters holds by construction at density 0.1)")
    for side, batch in ((32, 8), (64, 2)):
        program = nexusdsl.loads(SPARSE.replace("SIDE", str(side)), "sparse.nx")
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch // 2 if QUICK else batch, side, side, 16, generator=gen)
        dense, pruned = opt_pair(program, [x])
        t = race({"dense": dense, "pruned": pruned}, [x], rounds=min(ROUNDS, 4))
        p_dense, p_pruned = (sum(p.numel() for p in m.parameters()) for m in (dense, pruned))
        b_dense, b_pruned = kept_bytes(dense, side * side), kept_bytes(pruned, side * side)
        kernel = next(n.attrs["kernel"] for n in pruned.graph.nodes() if n.op == "sparse_mix")
        print(f"   [{side}, {side}] grid, batch {x.shape[0]}, 16 channels: forward+backward "
              f"{t['dense'] * 1e3:.1f} ms -> {t['pruned'] * 1e3:.1f} ms "
              f"({t['dense'] / t['pruned']:.2f}x faster, {kernel} kernel); parameters "
              f"{p_dense:,} -> {p_pruned:,} (the density); bytes kept {b_dense / 1e6:.2f} MB "
              f"-> {b_pruned / 1e6:.2f} MB ({b_dense / b_pruned:.2f}x less); "
              f"{rate(host, dense, [x], t['dense'])} -> {rate(host, pruned, [x], t['pruned'])}")


def kept_bytes(module, cells: int) -> int:
    """What a mix keeps besides activations: its parameters, plus the dense mix's bool mask
    or the compacted mix's index tensors (the tensors ops/axis_torch.py and
    ops/fused_torch.py build from the seed and hold)."""
    from nexusdsl.ops.axis_torch import random_mask
    from nexusdsl.ops.fused_torch import sparse_structure

    total = sum(p.numel() * p.element_size() for p in module.parameters())
    node = next(n for n in module.graph.nodes() if n.op in ("mix", "sparse_mix"))
    if node.op == "mix":
        wiring = node.attrs["wiring"]
        mask = random_mask(cells, wiring["density"], wiring["seed"], node.attrs["causal"])
        return total + mask.nbytes
    structure = sparse_structure(cells, node.attrs["density"], node.attrs["seed"],
                                 node.attrs["causal"])
    return total + sum(t.nbytes for t in structure)


# ---------------------------------------------------------------------------- 3. pruning


def pruning(host) -> None:
    from nexusdsl.train.prune import prune_checkpoint
    from nexusdsl.train.session import from_checkpoint

    program = nexusdsl.load(ROOT / "examples/tiny_lm.nx")
    steps = 20 if QUICK else 400
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "tiny"
        trained = nexusdsl.train(program, steps=steps, out=run, time=None)
        print(f"\n3. TinyLM ({trained.steps} steps on the default corpus: held-out "
              f"{trained.before['bpb']:.3f} -> {trained.after['bpb']:.3f} bits per byte), "
              "pruned by magnitude")
        tokens = torch.randint(0, 256, (64, 32), generator=torch.Generator().manual_seed(2))
        modules, results = {"unpruned": from_checkpoint(program, None, run).module}, {}
        for kind, structured in (("structured", True), ("unstructured", False)):
            out = Path(tmp) / kind
            results[kind] = prune_checkpoint(program, run, 0.5, structured, out)
            modules[kind] = from_checkpoint(program, None, out).module
        for module in modules.values():
            module.eval()
        t = race(modules, [tokens], step=inference_time)
        for kind, r in results.items():
            kept = ", ".join(f"{w} {k}/{n}" for w, (k, n) in r.removed.items())
            print(f"   {kind + ' 50%':<16} bpb {r.before['bpb']:.3f} -> {r.after['bpb']:.3f} "
                  f"({r.after['bpb'] - r.before['bpb']:+.3f}); params {r.params[0]:,} -> "
                  f"{r.params[1]:,}; inference {t['unpruned'] * 1e3:.1f} -> "
                  f"{t[kind] * 1e3:.1f} ms ({t['unpruned'] / t[kind]:.2f}x; "
                  f"{rate(host, modules[kind], [tokens], t[kind], passes=1)}); kept {kept}")


if __name__ == "__main__":
    host = calibrate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{'quick' if QUICK else 'full'} run\n")
    levels(host)
    sparsity(host)
    pruning(host)
