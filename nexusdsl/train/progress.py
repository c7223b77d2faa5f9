"""The progress display of `nexus train`: on a terminal, a rich bar with loss, throughput,
model FLOPs utilisation (MFU: the share of the machine's measured matmul peak) and ETA, and
log lines above it (held-out metrics, checkpoints); elsewhere (output redirected to a file or
a pipe, where a bar would show nothing until the end) one plain line per reported step, every
`log_every` steps. Silent when `enabled` is false (the Python API's default in
tests, and every rank but 0)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def format_seconds(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 60}:{seconds % 60:02d}"


def format_share(share: float) -> str:
    return f"{100 * share:.1f}%"


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


class Display:
    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=False, highlight=False)
        self._progress: Progress | None = None
        self._task = None
        self._total, self._unit = 0, ""

    def log(self, message: str) -> None:
        if self.enabled:
            target = self._progress.console if self._progress else self.console
            target.print(message, markup=False, highlight=False)

    def start(self, total: int, completed: int, unit: str) -> None:
        self._total, self._unit = total, unit
        if not self.enabled or not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} " + unit + "/s"),
            TextColumn("MFU {task.fields[mfu]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console, refresh_per_second=4)
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=completed,
                                             loss="-", rate="-", mfu="-", lr="-", eta="-")

    def update(self, step: int, loss: float, rate: float, lr: float, eta: float,
               mfu: float = 0.0) -> None:
        """`rate` in units per second, `mfu` a fraction of the matmul peak."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}",
                                  rate=f"{rate:,.0f}", mfu=format_share(mfu), lr=f"{lr:.2e}",
                                  eta=format_seconds(eta))
        elif self.enabled:
            self.log(f"step {step}/{self._total}  loss {loss:.4f}  lr {lr:.2e}  "
                     f"{rate:,.0f} {self._unit}/s  MFU {format_share(mfu)}  "
                     f"ETA {format_seconds(eta)}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
