"""Training data: byte streams (text files, folders, the built-in English corpus), scikit-learn's
bundled digits, and labelled folders; each split into a training part and a held-out part.

Files are memory-mapped, never read whole, so a file larger than memory trains: a batch
touches only the pages of its windows. Every random choice takes an explicit
`torch.Generator`, so a batch is a function of (seed, step) and resuming needs no data state.

A batch is a dict of tensors: `bytes` [n, L] int64, `image` [n, 1, 8, 8] float, `label` [n]
int64, `caption` [n, L] int64 (the digit's name, for two-modality models), `audio` [n, 512]
float (the digit's DTMF telephone tone, generated: train/waves.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nexusdsl.elaborate.train_config import Call
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.train.waves import dtmf

HELDOUT = 0.1  # the last 10% of a corpus (or of each class) is held out


@dataclass
class Dataset:
    """What `open_data` returns: a description, the fields its batches carry, two splits."""

    name: str
    fields: tuple[str, ...]
    train: object
    heldout: object
    classes: int = 0  # labelled data: the number of classes


# ----------------------------------------------------------------------------- bytes


class ByteStream:
    """A logical concatenation of byte arrays (memory maps), addressed by global offset."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        out, pos = [], start
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while length > 0:
            offset = pos - int(self.starts[i])
            chunk = self.parts[i][offset: offset + length]
            out.append(chunk)
            pos, length, i = pos + len(chunk), length - len(chunk), i + 1
        return out[0] if len(out) == 1 else np.concatenate(out)


class ByteSplit:
    """Bytes [lo, hi) of a stream: random windows for training, tiled windows for evaluation."""

    def __init__(self, stream: ByteStream, lo: int, hi: int):
        self.stream, self.lo, self.hi = stream, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def windows(self, starts, length: int) -> torch.Tensor:
        rows = [self.stream.read(self.lo + int(s), length) for s in starts]
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # (n, length)

    def sample(self, n: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, len(self) - length + 1, (n,), generator=gen)
        return {"bytes": self.windows(starts.tolist(), length)}

    def eval_batches(self, n: int, length: int, limit: int) -> Iterator[dict[str, torch.Tensor]]:
        """Non-overlapping windows covering the split (up to `limit` batches). Consecutive
        windows share one byte so that, for next-token prediction, every byte is a target once."""
        stride = max(length - 1, 1)
        count = min(n * limit, (len(self) - length) // stride + 1)
        starts = [i * stride for i in range(max(count, 0))]
        for i in range(0, len(starts), n):
            yield {"bytes": self.windows(starts[i: i + n], length)}


def byte_dataset(parts: list[np.ndarray], name: str) -> Dataset:
    stream = ByteStream(parts)
    cut = len(stream) - max(int(len(stream) * HELDOUT), 1)
    return Dataset(name, ("bytes",), ByteSplit(stream, 0, cut), ByteSplit(stream, cut, len(stream)))


def default_corpus() -> np.ndarray:
    """The English documentation text every CPython ships (`pydoc_data.topics`), joined in a
    fixed order: about 466 KB of real prose and code examples."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _memmap(path: Path, span: Span) -> np.ndarray:
    try:
        size = path.stat().st_size
        if size == 0:
            raise NexusError.at(span, f"data file {path} is empty")
        return np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as err:
        raise NexusError.at(span, f"cannot read data file {path}: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def _files_under(folder: Path, span: Span) -> list[Path]:
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    except OSError as err:
        raise NexusError.at(span, f"cannot read data folder {folder}: {_reason(err)}") from None
    if not files:
        raise NexusError.at(span, f"data folder {folder} holds no files")
    return files


def text_dataset(path: Path, span: Span) -> Dataset:
    if not path.exists():
        raise NexusError.at(span, f"data path {path} does not exist")
    if path.is_dir():
        files = [f for f in _files_under(path, span) if f.stat().st_size > 0]
        if not files:
            raise NexusError.at(span, f"every file in data folder {path} is empty")
        return byte_dataset([_memmap(f, span) for f in files], f"{path} ({len(files)} files)")
    return byte_dataset([_memmap(path, span)], str(path))


# ----------------------------------------------------------------------------- labelled


class Labelled:
    """Examples with class labels: images (digits) or byte documents (folders). `captions`,
    if given, holds one byte string per class (the digits' names)."""

    def __init__(self, examples: list, labels: np.ndarray, make, captions=None):
        self.examples, self.labels, self._make, self.captions = examples, labels, make, captions

    def __len__(self) -> int:
        return len(self.examples)

    def take(self, index, length: int) -> dict[str, torch.Tensor]:
        index = [int(i) for i in index]
        batch = self._make([self.examples[i] for i in index], length)
        labels = self.labels[index]
        batch["label"] = torch.from_numpy(labels.astype(np.int64))
        if self.captions is not None:
            batch["caption"] = torch.from_numpy(self.captions[labels].astype(np.int64))
        return batch

    def sample(self, n: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return self.take(torch.randint(0, len(self), (n,), generator=gen).tolist(), length)

    def eval_batches(self, n: int, length: int, limit: int) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(0, min(len(self), n * limit), n):
            yield self.take(range(i, min(i + n, len(self))), length)


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digit_images(examples: list[tuple[np.ndarray, np.ndarray]],
                  length: int) -> dict[str, torch.Tensor]:
    images, waves = zip(*examples)
    pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 16.0)  # 0..16 -> 0..1
    return {"image": pixels.unsqueeze(1),  # (n, 1, 8, 8)
            "audio": torch.from_numpy(np.stack(waves))}  # (n, 512): the digit's DTMF tone


def digits_dataset() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 real scans), shuffled once with a fixed seed so
    the held-out tenth has every class; captions are the digits' English names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images, labels = digits.images[order], digits.target[order]
    cut = len(labels) - int(len(labels) * HELDOUT)
    width = max(len(n) for n in DIGIT_NAMES)
    captions = np.array([np.frombuffer(n.ljust(width).encode(), np.uint8) for n in DIGIT_NAMES])
    waves = dtmf(labels)  # a third modality: the digit's telephone tone (train/waves.py)
    splits = [Labelled(list(zip(images[a:b], waves[a:b])), labels[a:b], _digit_images, captions)
              for a, b in ((0, cut), (cut, None))]
    return Dataset("digits (scikit-learn, 1797 images)", ("image", "label", "caption", "audio"),
                   *splits, classes=10)


def _crop(docs: list[np.ndarray], length: int) -> dict[str, torch.Tensor]:
    """The first `length` bytes of each document, padded with NUL bytes."""
    rows = np.zeros((len(docs), length), dtype=np.int64)
    for i, doc in enumerate(docs):
        head = np.asarray(doc[:length])
        rows[i, : len(head)] = head
    return {"bytes": torch.from_numpy(rows)}


def folder_dataset(path: Path, span: Span) -> Dataset:
    """`folder("reviews")`: one subfolder per class, each file one example (its bytes)."""
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise NexusError.at(span, f"data folder {path} {what}")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise NexusError.at(span, f"folder({str(path)!r}) needs one subfolder per class, at least "
                            f"two; found {len(classes)}")
    train, held = ([], []), ([], [])
    for label, folder in enumerate(classes):
        files = [f for f in _files_under(folder, span) if f.stat().st_size > 0]
        if not files:
            raise NexusError.at(span, f"class folder {folder} holds no non-empty files")
        cut = len(files) - (max(int(len(files) * HELDOUT), 1) if len(files) > 1 else 0)
        for i, f in enumerate(files):
            part = train if i < cut else held
            part[0].append(_memmap(f, span))
            part[1].append(label)
    if not held[0]:
        raise NexusError.at(span, f"folder({str(path)!r}): every class has one file; held-out "
                            "evaluation needs at least two files in some class")
    splits = [Labelled(docs, np.array(labels), _crop) for docs, labels in (train, held)]
    names = ", ".join(c.name for c in classes)
    return Dataset(f"{path} ({len(classes)} classes: {names})", ("bytes", "label"), *splits,
                   classes=len(classes))


# ----------------------------------------------------------------------------- entry


def open_data(call: Call) -> Dataset:
    """The dataset a `data = ...` setting names."""
    if call.fn == "default":
        return byte_dataset([default_corpus()], "pydoc_data.topics (CPython documentation)")
    if call.fn == "digits":
        return digits_dataset()
    if not call.kwargs["path"].strip():  # Path("") is the working directory: never meant
        raise NexusError.at(call.span, f"the data path is empty: name a file or folder, e.g. "
                            f"{call.fn}(\"corpus.txt\")")
    path = Path(call.kwargs["path"]).expanduser()
    if call.fn == "folder":
        return folder_dataset(path, call.span)
    return text_dataset(path, call.span)


def slice_batch(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This process's share of a global batch (data parallel: equal, contiguous slices)."""
    if world == 1:
        return batch
    n = next(iter(batch.values())).shape[0] // world
    return {k: v[rank * n: (rank + 1) * n] for k, v in batch.items()}
