"""`nexus plot RUN... -o curves.png`: the training loss and held-out curves of runs, read from
their metrics.jsonl, drawn with matplotlib (imported only here, without a display).

Two panels share the step axis: the loss, training (a line, each point the mean over the
steps since the previous logged one) and held-out (dots, every evaluation), in the objective's
units, so the gap between them shows; and the held-out metric the runs report (bits per byte
for byte models, else accuracy or reward). One colour per run, named by its folder.
"""

from __future__ import annotations

from pathlib import Path

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train import metrics

FORMATS = (".png", ".svg", ".pdf")
HELDOUT = ("bpb", "bits_per_token", "accuracy", "retrieval_accuracy", "reward", "loss")
LABELS = {"bpb": "held-out bits per byte", "bits_per_token": "held-out bits per token",
          "loss": "held-out loss"}


def series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in the records of `split` that have it as a number."""
    rows = [(r["step"], r[key]) for r in records
            if r.get("split") == split and isinstance(r.get(key), (int, float))]
    return [s for s, _ in rows], [v for _, v in rows]


def heldout_key(runs: dict[str, list[dict]]) -> str | None:
    """The held-out metric every run that has held-out rows reports, the most telling first."""
    present = [r for records in runs.values() for r in records if r.get("split") == "heldout"]
    for key in HELDOUT:
        if present and all(key in r for r in present):
            return key
    return None


def read_runs(paths: list[Path]) -> dict[str, list[dict]]:
    """{label: records} of each run folder; a folder without metrics.jsonl is one error."""
    runs = {}
    for path in paths:
        file = path / metrics.FILE if path.is_dir() else path
        if not file.is_file():
            raise NexusError.at(NO_SPAN, f"{path} has no {metrics.FILE}: is it a run folder "
                                "(the --out of nexus train)?")
        try:
            records = metrics.read(file)
        except OSError as err:
            raise NexusError.at(NO_SPAN, f"cannot read {file}: {err.strerror or err}") from None
        label = path.name if path.is_dir() else path.parent.name
        while label in runs:  # two folders of the same name: keep both
            label += "'"
        runs[label] = records
    return runs


def figure(runs: dict[str, list[dict]]):
    """The matplotlib figure of these runs (loss above, held-out below when any run has it)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, no display needed
    import matplotlib.pyplot as plt

    key = heldout_key(runs)
    rows = 2 if key and key != "loss" else 1
    fig, axes = plt.subplots(rows, 1, figsize=(7, 3.2 * rows), sharex=True, squeeze=False)
    loss_ax = axes[0][0]
    for i, (label, records) in enumerate(runs.items()):
        steps, losses = series(records, "train", "loss")
        loss_ax.plot(steps, losses, label=f"{label}: training", color=f"C{i}", linewidth=1.2,
                     marker="o" if len(steps) == 1 else None)  # one point draws no line
        loss_ax.plot(*series(records, "heldout", "loss"), label=f"{label}: held-out",
                     color=f"C{i}", linestyle="none", marker="o", markersize=4)
    loss_ax.set_ylabel("loss")
    if rows == 2:
        held_ax = axes[1][0]
        for i, (label, records) in enumerate(runs.items()):
            held_ax.plot(*series(records, "heldout", key), marker="o", markersize=3,
                         color=f"C{i}", label=label)
        held_ax.set_ylabel(LABELS.get(key, f"held-out {key.replace('_', ' ')}"))
    axes[-1][0].set_xlabel("step")
    for (ax,) in axes:
        ax.grid(True, alpha=0.3)
    loss_ax.legend(fontsize="small")
    if len(runs) == 1:
        loss_ax.set_title(next(iter(runs)))
    fig.tight_layout()
    return fig


def plot(paths: list[Path], output: Path) -> None:
    """Write the curves of the runs at `paths` to `output` (.png, .svg or .pdf)."""
    if output.suffix.lower() not in FORMATS:
        raise NexusError.at(NO_SPAN, f"cannot write {output}: choose a .png, .svg or .pdf file")
    runs = read_runs(paths)
    if not any(series(records, "train", "loss")[0] for records in runs.values()):
        raise NexusError.at(NO_SPAN, "no training steps logged yet in "
                            + ", ".join(str(p) for p in paths))
    import io

    import matplotlib.pyplot as plt

    from nexusdsl.fsutil import atomic_write_bytes

    fig = figure(runs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=output.suffix.lower().lstrip("."), dpi=120)
    plt.close(fig)
    atomic_write_bytes(output, buffer.getvalue())
