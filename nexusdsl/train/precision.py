"""Mixed precision (`precision = bf16 | fp16 | fp32`) and the machine's matmul peak.

bf16 and fp16 run the forward pass (and the loss) under `torch.autocast` for the model's
device type, so matrix products run in the low precision while the weights the optimizer
updates stay float32 ("master weights"): a trainable parameter of another dtype (a model whose
bound checkpoint is bf16) is made float32 before the optimizer is built, so its state is
float32 too, and checkpoints hold those float32 tensors. Frozen parameters keep their dtype: a
bf16 pretrained part beside float32 trainable ones runs under autocast as it is. fp16 also
scales the loss (`torch.amp.GradScaler`, on CPU too), since fp16 gradients underflow where
bf16's wider exponent does not; a step whose gradients overflow is skipped and the scale
lowered, as the scaler does. fp32 changes nothing: the model runs in the dtype it was built in.

`matmul_peak(dtype)` times a square matrix product once per process and dtype (cached): the
denominator of the model FLOPs utilisation the progress line shows.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SCALER_KEYS = {"scale": float, "growth_factor": float, "backoff_factor": float,
               "growth_interval": int, "_growth_tracker": int}


@dataclass
class Precision:
    """How a training step computes: `autocast()` around the forward pass and the loss,
    `scaler` (fp16 only) around backward and the optimizer step."""

    name: str
    device_type: str
    scaler: Any = None  # torch.amp.GradScaler

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients back to their true size before clipping reads their norm."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state(self) -> dict[str, float | int] | None:
        """What a checkpoint records of the loss scale (so a resumed fp16 run goes on with it)."""
        if self.scaler is None:
            return None
        return {k: SCALER_KEYS[k](v) for k, v in self.scaler.state_dict().items()
                if k in SCALER_KEYS}

    def restore(self, state: Any) -> bool:
        """Load a checkpoint's loss scale; False when it is not one (a damaged state.json)."""
        if self.scaler is None or state is None:
            return True
        ok = (isinstance(state, dict) and set(state) == set(SCALER_KEYS)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in state.values()) and state["scale"] > 0)
        if ok:
            self.scaler.load_state_dict(dict(state))
        return ok


def precision_for(name: str, trainee: nn.Module, device: str) -> Precision:
    """The precision a run trains in; bf16 and fp16 make the trainable weights float32."""
    device_type = torch.device(device).type
    if name != "fp32":
        master_weights(trainee)
    scaler = torch.amp.GradScaler(device_type) if name == "fp16" else None
    return Precision(name, device_type, scaler)


def master_weights(trainee: nn.Module) -> None:
    """Every trainable floating-point parameter in float32 (in place: tied parameters, one
    object, stay tied); frozen ones keep their dtype."""
    with torch.no_grad():
        for p in trainee.parameters():
            if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()


# ----------------------------------------------------------------------------- the peak

_PEAKS: dict[tuple[torch.dtype, str, int], float] = {}
_MIN_SECONDS = 0.02  # one product long enough for the clock to measure it well
_MIN_SIZE, _MAX_SIZE = 512, 2048  # below 512, threads' start-up and any wait dominate
_RUNS = 5


def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """FLOP/s of an n x n matrix product in `dtype` with the threads in use now, the best of
    5 runs (on a shared machine a thread may wait for a busy core: the best run is the
    machine's, the others its neighbours'); n doubles from 512 until one product takes 20 ms
    (a slow dtype, fp16 on most CPUs, stops there). Measured once per process, dtype, device
    and thread count."""
    key = (dtype, str(device), torch.get_num_threads())
    if key not in _PEAKS:
        _PEAKS[key] = _measure(dtype, torch.device(device))
    return _PEAKS[key]


def _measure(dtype: torch.dtype, device: torch.device) -> float:
    gen = torch.Generator().manual_seed(0)
    n, best = _MIN_SIZE, 0.0
    while True:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        _timed(a, b)  # warm-up: the kernel's first call allocates and picks its path
        seconds = min(_timed(a, b) for _ in range(_RUNS))
        best = max(best, 2 * n**3 / seconds)
        if seconds >= _MIN_SECONDS or n >= _MAX_SIZE:
            return best
        n *= 2


def _timed(a: torch.Tensor, b: torch.Tensor) -> float:
    _sync(a.device)
    start = time.perf_counter()
    a @ b
    _sync(a.device)
    return max(time.perf_counter() - start, 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_flops(flops: float) -> str:
    for unit, size in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if flops >= size:
            return f"{flops / size:.1f} {unit}"
    return f"{flops:.0f} FLOP/s"
