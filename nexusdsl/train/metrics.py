"""A run's history, `OUT/metrics.jsonl`: one JSON object per line, flushed as it is written.

    {"split": "train", "step": 10, "loss": 5.21, "lr": 0.0006, "tok_per_s": 12480.0, "mfu": 0.0421,
     "seconds": 3.1}
    {"split": "heldout", "step": 500, "loss": 1.83, "bpb": 2.64, "seconds": 41.0}

A `train` line every `log_every` steps (the step's training loss, the learning rate it used,
the throughput since the run started in the objective's unit, `tok` or `ex`, the model FLOPs
utilisation `mfu` (see `Throughput`), and for MoE models `experts`: each `moe` node's share of
routing choices per expert); a `heldout` line at every evaluation. `seconds` is training time
since step 0, resumed runs included.

A fresh run starts the file over; a resumed run keeps the lines up to the step it resumes from
and appends, so the file always describes the checkpoint's own history (lines a crashed run
wrote past its last checkpoint are dropped). A line cut short by a kill is skipped on reading.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusdsl.fsutil import atomic_write_text

FILE = "metrics.jsonl"
BACKWARD = 3  # a training step's FLOPs: the forward pass and a backward pass of about twice it


@dataclass(frozen=True)
class Throughput:
    """Model FLOPs utilisation: the FLOPs a step's units need (the summary's forward FLOPs per
    token, or per example for objectives that count examples, times 3 for forward and
    backward) per second, over the matmul peak every process measured (train/precision.py)."""

    flops_per_unit: float
    peak: float  # FLOP/s of all processes together

    @classmethod
    def of(cls, graph, context: int, unit: str, peak: float, processes: int) -> Throughput:
        from nexusdsl.compiler.summary import total_flops

        flops, tokens = total_flops(graph, context)
        per_unit = flops / max(tokens, 1) if unit == "tok" else flops
        return cls(BACKWARD * per_unit, peak * processes)

    def mfu(self, units_per_second: float) -> float:
        return units_per_second * self.flops_per_unit / self.peak if self.peak > 0 else 0.0


def read(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's metrics.jsonl (or of that file itself), in order; lines
    that are not whole JSON objects (a write cut short) are skipped."""
    path = Path(run)
    path = path / FILE if path.is_dir() else path
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


class MetricsLog:
    """Writes a run's metrics.jsonl (nothing when `out` is None or on processes other than 0)."""

    def __init__(self, out: Path | None, enabled: bool = True):
        self.path = Path(out) / FILE if out is not None and enabled else None
        self._file = None
        self._evaluated: set[int] = set()  # steps with a heldout line already

    def begin(self, resumed_step: int | None) -> None:
        """Start the file over (a fresh run) or keep what led to `resumed_step`."""
        if self.path is None:
            return
        kept = []
        if resumed_step is not None and self.path.exists():
            kept = [r for r in read(self.path) if r["step"] <= resumed_step]
        atomic_write_text(self.path, "".join(_line(r) for r in kept))
        self._evaluated = {r["step"] for r in kept if r.get("split") == "heldout"}
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())

    def train(self, step: int, values: dict[str, Any]) -> None:
        self._write({"split": "train", "step": step, **values})

    def heldout(self, step: int, metrics: dict[str, float], seconds: float) -> None:
        """An evaluation's metrics, once per step (a resumed run's first evaluation repeats
        the last one of the run it resumes)."""
        if step not in self._evaluated:
            self._evaluated.add(step)
            self._write({"split": "heldout", "step": step, **metrics, "seconds": seconds})

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(_line(record))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _line(record: dict[str, Any]) -> str:
    return json.dumps(_plain(record), separators=(", ", ": ")) + "\n"


def _plain(value):
    """JSON has no NaN or infinity: such a number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
