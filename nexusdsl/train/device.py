"""Where a command's tensors live: the device a process uses, the process group's backends
for it, and the settings a GPU needs to run fast (docs/gpu.md).

Under torchrun every process uses its own GPU: `cuda`, `cuda:0` or any `cuda:N` become
`cuda:LOCAL_RANK` (the index counts the GPUs CUDA_VISIBLE_DEVICES shows), and the process
makes it the current device, so that nothing of it lands on GPU 0 by default.
"""

from __future__ import annotations

import torch


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def process_device(device: str, local_rank: int) -> str:
    """The device of the process of `local_rank` on its machine when `device` was asked for
    (the CPU stays the CPU)."""
    return f"cuda:{local_rank}" if is_cuda(device) else device


def group_backend(device: str) -> str:
    """The backends of the process group: on a GPU, NCCL for CUDA tensors (gradients,
    shards) and gloo for the CPU tensors of the small collectives (held-out sums, RNG states,
    a checkpoint's path), which NCCL refuses."""
    return "cuda:nccl,cpu:gloo" if is_cuda(device) else "gloo"


def use(device: str) -> None:
    """Make `device` this process's current device, with TF32 matmuls and convolutions (a
    float32 matmul on Ampere and later runs on tensor cores, about 8x faster, rounding its
    inputs to 10 bits of mantissa; bf16 and fp16 training is unaffected)."""
    if not is_cuda(device):
        return
    index = torch.device(device).index
    if index is not None:
        torch.cuda.set_device(index)
    torch.set_float32_matmul_precision("high")  # TF32 (cuDNN's convolutions use it already)


def problem(device: str) -> str | None:
    """Why `--device` cannot be used here (one line), or None: cpu, cuda or cuda:N of a
    visible GPU."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda") or (parsed.type == "cpu"
                                                                 and parsed.index):
        return f"--device {device}: choose cpu, cuda or cuda:N"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device} was asked for, but no CUDA device is available"
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        return (f"--device {device}: there is no GPU {parsed.index} (this machine shows "
                f"{torch.cuda.device_count()})")
    return None
