"""Peak resident memory of loading an open-weight checkpoint into a `.nx` model, against the
checkpoint's size.

    python benchmarks/import_memory.py [--dir /tmp/nexus-llama-1b] [--layers 16]

Writes (once) a random Llama-3.2-1B-shaped checkpoint in bfloat16 with transformers
(`save_pretrained`, 2 GB shards), then, in a fresh process, compiles a `.nx` file that binds it
(`llama.hf_tied`) and reports the process's peak resident memory (VmHWM, reset after the imports) above what
the interpreter held after importing torch and nexusdsl, divided by the checkpoint's bytes.
Target: below 1.3. The same process also checks a few parameters against the file. The
host's calibration (benchmarks/host.py) is printed first, and the load time as a byte rate
(parameters loaded per second) over the host's memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
              tie_word_embeddings=True,
              rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192})
NX = """nexus 0.1
import std.families.llama

model Llama1B = llama.Llama(vocab = 128256, dim = 2048, depth = {layers}, heads = 32,
                            kv_heads = 8, head_dim = 64, hidden = 8192, eps = 1e-5,
                            factor = 32.0, tie = true)

bind Llama1B from "{dir}" {{
  use llama.hf_tied
}}
"""


def write_checkpoint(folder: Path, layers: int) -> None:
    import torch
    import transformers

    config = transformers.LlamaConfig(**{**CONFIG, "num_hidden_layers": layers})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    model.tie_weights()  # to_empty unties the head from the embedding
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    model.save_pretrained(folder, max_shard_size="2GB")


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (ru_maxrss would
    carry the parent's peak across exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(nx_file: str) -> None:
    """Run in a fresh interpreter: the peak above the baseline after imports."""
    import torch  # noqa: F401

    import nexusdsl

    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here
    start = time.perf_counter()
    model = nexusdsl.compile(nx_file)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    print(json.dumps({"base": base, "peak": peak, "param_bytes": params, "seconds": seconds,
                      "dtypes": dtypes}))


def main(folder: Path, layers: int) -> None:
    from benchmarks.host import calibrate

    host = calibrate()
    if not (folder / "config.json").exists():
        print(f"writing a random {layers}-layer Llama-3.2-1B-shaped bf16 checkpoint to {folder}")
        write_checkpoint(folder, layers)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    nx_file = folder / "model.nx"
    nx_file.write_text(NX.format(layers=layers, dir=folder))
    run = subprocess.run([sys.executable, __file__, "--measure", str(nx_file)],
                         capture_output=True, text=True, check=True)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    above = got["peak"] - got["base"]
    print(f"checkpoint: {size / 2**30:.2f} GiB of safetensors ({folder})")
    print(f"model: {got['param_bytes'] / 2**30:.2f} GiB of parameters, {', '.join(got['dtypes'])}; "
          f"compiled and loaded in {got['seconds']:.1f} s "
          f"({host.memory(got['param_bytes'], got['seconds'])})")
    print(f"peak resident memory above the interpreter's {got['base'] / 2**30:.2f} GiB: "
          f"{above / 2**30:.2f} GiB = {above / size:.2f}x the checkpoint (target < 1.3); "
          f"whole process {got['peak'] / size:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/nexus-llama-1b"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from nexusdsl.allocator import wait_passively

    wait_passively()  # as the nexus command does, before torch loads
    if args.measure:
        measure(args.measure)
    else:
        main(args.dir, args.layers)
