"""Generation speed: a Llama-style model (stdlib/families/llama.nx: dim 256, 4 layers, 8 query
and 2 key/value heads, rotary positions) continuing a 1,024-token prompt by 256 tokens, greedy.

    python benchmarks/generate.py [--prompt 1024] [--new 256] [--rounds 5]
                                  [--recompute-rounds 1] [--threads N] [--compile]

Three ways, with the same weights, interleaved round by round (medians reported; the
recomputing loop, slow, joins only the first --recompute-rounds rounds):
  - cached: `NexusModule.generate` decoding step by step (compiler/lower/decode.py: the
    prompt once into a preallocated key/value cache, then one token per step);
  - recomputing: the same call made to run the whole sequence again for every new token
    (what a model whose ops cannot decode does). Target: cached >= 10x its tokens per second;
  - transformers: `LlamaForCausalLM.generate` (greedy, its cache on, exactly as many new
    tokens). Target: cached >= 1.0x its tokens per second.
Tokens per second counts the new tokens over the whole call (the prompt's forward included).
Before timing, the two models' logits over the prompt are compared, and afterwards the three
greedy continuations; the cache's bytes are read from the decoder's state and compared with
2 x layers x kv_heads x head_dim x length x bytes per element (length: the tokens the
cache holds, prompt + new - 1, since the last token drawn is never fed).
The host's calibration (benchmarks/host.py) is printed first, and each rate also as a share of
its memory bandwidth: a one-token step reads every weight once, so a new token costs at least
the parameters' bytes (the bound of decoding at batch 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate  # noqa: E402
from nexusdsl.compiler.lower import generate as generation  # noqa: E402
from nexusdsl.compiler.lower.decode import Decoder  # noqa: E402
from tests.families.test_decoders import decoder_weights  # noqa: E402

CONFIG = dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
              tie_word_embeddings=False, max_position_embeddings=4096)


def models():
    """transformers' Llama with random weights, and the .nx Llama holding the same ones (its
    llama3 rope scaling with factor 1: plain rotary positions)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG)
    config._attn_implementation = "sdpa"
    config.eos_token_id = config.bos_token_id = config.pad_token_id = None
    reference = transformers.LlamaForCausalLM(config).eval()
    ours = nexusdsl.compile(ROOT / "stdlib" / "families" / "llama.nx", vocab=config.vocab_size,
                            dim=config.hidden_size, depth=config.num_hidden_layers,
                            heads=config.num_attention_heads,
                            kv_heads=config.num_key_value_heads, head_dim=config.head_dim,
                            hidden=config.intermediate_size, eps=config.rms_norm_eps,
                            theta=10000.0, factor=1.0).eval()
    weights = decoder_weights(reference)
    state = dict(ours.named_parameters())
    assert set(weights) == set(state), set(weights) ^ set(state)
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(value)
    return ours, reference


def cache_bytes(ours, prompt: list[int], new: int) -> tuple[int, int]:
    """(bytes of the keys and values the decoder preallocates for one row, bytes of all its
    decoding state), read from the state itself."""
    with Decoder(ours, batch=1, capacity=len(prompt) + new - 1) as decoder:
        kv = every = 0
        for op_module in decoder._installed:
            for state in op_module.__dict__["_decoding"][1].states:
                for key, value in (state or {}).items():
                    if isinstance(value, torch.Tensor):
                        every += value.nbytes
                        kv += value.nbytes if key in ("k", "v") else 0
    return kv, every


def timed(run) -> tuple[float, list[int]]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    parser.add_argument("--new", type=int, default=256, help="tokens to generate")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recompute-rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the cached step under torch.compile")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    host = calibrate()
    ours, reference = models()
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    prompt = torch.randint(0, CONFIG["vocab_size"], (a.prompt,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        mine = ours(torch.tensor([prompt]))[0]
        theirs = reference(torch.tensor([prompt])).logits[0]
    error = ((mine - theirs).abs().max() / theirs.abs().max()).item()
    print(f"Llama dim {CONFIG['hidden_size']}, {CONFIG['num_hidden_layers']} layers, "
          f"{CONFIG['num_attention_heads']}/{CONFIG['num_key_value_heads']} heads, vocab "
          f"{CONFIG['vocab_size']}; {a.new} tokens after {a.prompt}, greedy, "
          f"{torch.get_num_threads()} threads")
    print(f"prompt logits, .nx vs transformers: max relative difference {error:.1e}")
    assert error < 1e-4, "the two models do not hold the same weights"

    ways = {
        "cached": lambda: ours.generate([prompt], a.new)[0],
        "recomputing": lambda: generation.generate(ours, [prompt], a.new,
                                                   recompute="timed recomputing")[0],
        "transformers": lambda: reference.generate(
            torch.tensor([prompt]), max_new_tokens=a.new, min_new_tokens=a.new,
            do_sample=False, use_cache=True)[0, a.prompt:].tolist(),
    }
    if a.compile:
        ours.generate([prompt], 2, compile=True)  # compiled once before timing
        ways["cached, compiled"] = lambda: ours.generate([prompt], a.new, compile=True)[0]
    times: dict[str, list[float]] = {name: [] for name in ways}
    outs: dict[str, list[int]] = {}
    ways["cached"]()  # warm up once
    for round_ in range(a.rounds):
        for name, run in ways.items():
            if name == "recomputing" and round_ >= a.recompute_rounds:
                continue
            seconds, outs[name] = timed(run)
            times[name].append(seconds)
    rate = {name: a.new / statistics.median(t) for name, t in times.items()}
    for name in ways:
        print(f"  {name:<17} {rate[name]:8.1f} tokens/s   (median of "
              f"{', '.join(f'{t:.2f}' for t in times[name])} s; "
              f"{host.memory(weight_bytes * rate[name], 1.0)} reading the weights)")
    print(f"cached / recomputing:  {rate['cached'] / rate['recomputing']:.1f}x (target >= 10x)")
    paired = sorted(t / c for c, t in zip(times["cached"], times["transformers"]))
    print(f"cached / transformers: {rate['cached'] / rate['transformers']:.2f}x "
          f"(target >= 1.0x; round by round {', '.join(f'{r:.2f}' for r in paired)})")
    if a.compile:
        print(f"compiled / transformers: {rate['cached, compiled'] / rate['transformers']:.2f}x")
    same = sum(x == y for x, y in zip(outs["cached"], outs["transformers"]))
    print(f"greedy tokens: cached == recomputing: {outs['cached'] == outs['recomputing']}; "
          f"equal to transformers' at {same} of {a.new} positions")

    length = a.prompt + a.new - 1
    kv, every = cache_bytes(ours, prompt, a.new)
    element = next(ours.parameters()).element_size()
    formula = (2 * CONFIG["num_hidden_layers"] * CONFIG["num_key_value_heads"]
               * CONFIG["head_dim"] * length * element)
    print(f"cache: {kv:,} bytes of keys and values; 2 x {CONFIG['num_hidden_layers']} layers x "
          f"{CONFIG['num_key_value_heads']} kv heads x {CONFIG['head_dim']} x {length} tokens x "
          f"{element} bytes = {formula:,}: {'equal' if kv == formula else 'DIFFERENT'} "
          f"({every:,} bytes of decoding state in all)")


if __name__ == "__main__":
    main()
