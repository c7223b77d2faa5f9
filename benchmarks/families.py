"""A Llama-style model written in `.nx` (stdlib/families/llama.nx) against transformers'
LlamaForCausalLM with the same weights (SDPA attention), forward + backward, in one run.

    python benchmarks/families.py [--threads N] [--batch 4] [--context 256] [--rounds 6]

Model: dim 256, 4 layers, 8 query / 2 key-value heads of 32 channels, rotary positions,
SwiGLU 688 wide, vocabulary 8192, float32. Each round times a few steps of one model then the
other, alternating which goes first, so both see the same machine state; the ratio printed is
the median of the rounds' ratios (ours / transformers'), with their range. Target: <= 1.0.
Each time is also a FLOP rate (3x the cost model's forward FLOPs) as a share of the host's fp32
matmul rate (benchmarks/host.py, printed first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch  # noqa: E402
import transformers  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate, training_flops  # noqa: E402
from tests.families.test_decoders import decoder_weights  # noqa: E402

HYPER = dict(vocab=8192, dim=256, depth=4, heads=8, kv_heads=2, head_dim=32, hidden=688,
             eps=1e-5)


def models():
    config = transformers.LlamaConfig(
        vocab_size=HYPER["vocab"], hidden_size=HYPER["dim"], intermediate_size=HYPER["hidden"],
        num_hidden_layers=HYPER["depth"], num_attention_heads=HYPER["heads"],
        num_key_value_heads=HYPER["kv_heads"], head_dim=HYPER["head_dim"],
        rms_norm_eps=HYPER["eps"], tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(config).train()
    ours = nexusdsl.compile(ROOT / "stdlib/families/llama.nx", **HYPER, factor=1.0).train()
    with torch.no_grad():
        state = dict(ours.named_parameters())
        for key, value in decoder_weights(theirs).items():
            state[key].copy_(value)
    return ours, theirs


def step(model, tokens, hf: bool) -> None:
    logits = model(tokens).logits if hf else model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(model, tokens, hf: bool, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(model, tokens, hf)
    return (time.perf_counter() - start) / steps


def main(batch: int, context: int, rounds: int, steps: int) -> None:
    host = calibrate()
    ours, theirs = models()
    flops = training_flops(ours.graph, context, batch)
    tokens = torch.randint(0, HYPER["vocab"], (batch, context))
    with torch.no_grad():  # the same function, so the timing compares like with like
        error = ((ours.eval()(tokens) - theirs.eval()(tokens).logits).abs().max()).item()
    ours.train(), theirs.train()
    for model, hf in ((ours, False), (theirs, True)):  # warm-up
        timed(model, tokens, hf, 2)
    ratios, a_times, b_times = [], [], []
    for r in range(rounds):
        order = [(ours, False), (theirs, True)] if r % 2 == 0 else [(theirs, True), (ours, False)]
        times = {hf: timed(model, tokens, hf, steps) for model, hf in order}
        a_times.append(times[False])
        b_times.append(times[True])
        ratios.append(times[False] / times[True])
    print(f"Llama-style dim 256, 4 layers, 8/2 heads, rope; batch {batch} x {context} tokens, "
          f"forward+backward, float32, {torch.get_num_threads()} threads; logits differ by "
          f"{error:.1e}")
    a, b = statistics.median(a_times), statistics.median(b_times)
    print(f"  .nx (stdlib/families/llama.nx)   {a * 1e3:8.1f} ms  ({host.compute(flops, a)})")
    print(f"  transformers LlamaForCausalLM    {b * 1e3:8.1f} ms  ({host.compute(flops, b)})")
    print(f"  ratio (median of {rounds} rounds)      {statistics.median(ratios):8.3f}   "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.0)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    main(args.batch, args.context, args.rounds, args.steps)
