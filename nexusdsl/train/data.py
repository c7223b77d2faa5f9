"""Training data: byte streams (text files, folders, the built-in English corpus), scikit-learn's
bundled digits, and labelled folders; each split into a training part and a held-out part.

Files are memory-mapped, never read whole, so a file larger than memory trains: a batch
touches only the pages of its windows. Every random choice takes an explicit
`torch.Generator`, so a batch is a function of (seed, step) and resuming needs no data state.

A batch is a dict of tensors: `bytes` [n, L] int64, `image` [n, 1, 8, 8] float, `label` [n]
int64, `caption` [n, L] int64 (the digit's name, for two-modality models), `audio` [n, 512]
float (the digit's DTMF telephone tone, generated: train/waves.py). For a model whose caption
input names a tokenizer (contrastive), `caption` is instead the tokenizer's ids of a sentence,
"a handwritten seven", padded to the longest of the ten, with `caption_mask` [n, T] bool (true
for its real tokens) and `caption_share` [n, T] float (each token's share of a mean over T:
T / real tokens for a real one, 0 for padding), which feed model inputs of those names.

A text corpus read through a model's tokenizer (`token_dataset`: next_token on a model whose
token input is `ids(..., tokenizer = "dir")`) gives `tokens` [n, L] int64 instead, and for
held-out batches `token_bytes` [n, L] int64, the bytes of text each id stands for, so that
bits per byte stay bits per byte of the text. Each file is encoded once, when a batch is first
asked for, and its ids kept in memory (int32 ids and byte counts: 8 bytes per token) for the
rest of the process; the held-out part is the last 10% of the ids.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from nexusdsl.elaborate.train_config import Call
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.train.waves import dtmf
from nexusdsl.weights.tokenizer import TextTokenizer

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

    field = "bytes"  # the batch field its windows fill

    def __init__(self, stream: ByteStream, lo: int, hi: int):
        self.stream, self.lo, self.hi = stream, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def windows(self, starts, length: int) -> torch.Tensor:
        rows = [self.stream.read(self.lo + int(s), length) for s in starts]
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # (n, length)

    def sample(self, n: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, len(self) - length + 1, (n,), generator=gen)
        return {self.field: self.windows(starts.tolist(), length)}

    def eval_batches(self, n: int, length: int, limit: int) -> Iterator[dict[str, torch.Tensor]]:
        """Non-overlapping windows covering the split (up to `limit` batches). Consecutive
        windows share one byte so that, for next-token prediction, every byte is a target once."""
        stride = max(length - 1, 1)
        count = min(n * limit, (len(self) - length) // stride + 1)
        starts = [i * stride for i in range(max(count, 0))]
        for i in range(0, len(starts), n):
            yield self.eval_batch(starts[i: i + n], length)

    def eval_batch(self, starts: list[int], length: int) -> dict[str, torch.Tensor]:
        return {self.field: self.windows(starts, length)}


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


def text_dataset(path: Path, span: Span, tokenizer: TextTokenizer | None = None) -> Dataset:
    if not path.exists():
        raise NexusError.at(span, f"data path {path} does not exist")
    files = [path]
    if path.is_dir():
        files = [f for f in _files_under(path, span) if f.stat().st_size > 0]
        if not files:
            raise NexusError.at(span, f"every file in data folder {path} is empty")
    parts = [_memmap(f, span) for f in files]
    name = f"{path} ({len(files)} files)" if path.is_dir() else str(path)
    if tokenizer is None:
        return byte_dataset(parts, name)
    return token_dataset([(_file_key(f), f, p) for f, p in zip(files, parts)], name, tokenizer,
                         span)


def _file_key(path: Path) -> tuple:
    info = path.stat()
    return str(path.resolve()), info.st_size, info.st_mtime_ns


# ----------------------------------------------------------------------------- tokens


_ENCODED: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
KEEP_ENCODED = 8  # files whose ids stay in memory for the rest of the process


def _encoded(key: tuple, what, data, tokenizer: TextTokenizer, span: Span):
    """(ids, bytes per id) of one file, encoded once per process (per file and tokenizer
    state: a changed file or tokenizer.json is encoded again)."""
    from nexusdsl.weights.tokenizer import TokenizerError

    key = (key, tokenizer.key)
    if key not in _ENCODED:
        try:
            _ENCODED[key] = tokenizer.encode_corpus(data)
        except TokenizerError as err:
            raise NexusError.at(span, f"data file {what} {err}") from None
        while len(_ENCODED) > KEEP_ENCODED:
            _ENCODED.popitem(last=False)
    _ENCODED.move_to_end(key)
    return _ENCODED[key]


class TokenStream:
    """The ids of a corpus's files through a tokenizer, concatenated, with the bytes of text
    each id stands for. Encoded on first use: a session that never draws a batch (`nexus
    generate`) never encodes the corpus."""

    def __init__(self, parts: list[tuple], tokenizer: TextTokenizer, span: Span):
        self.parts, self.tokenizer, self.span = parts, tokenizer, span  # (key, name, data)

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        encoded = [_encoded(key, what, data, self.tokenizer, self.span)
                   for key, what, data in self.parts]
        return (np.concatenate([ids for ids, _ in encoded]),
                np.concatenate([counts for _, counts in encoded]))

    def __len__(self) -> int:
        return len(self._arrays[0])

    def read(self, start: int, length: int) -> np.ndarray:
        return self._arrays[0][start: start + length]

    def read_bytes(self, start: int, length: int) -> np.ndarray:
        return self._arrays[1][start: start + length]


class TokenSplit(ByteSplit):
    """Ids [lo, hi) of a token stream, sampled and tiled as bytes are: the training part or
    the held-out last 10% (bounds known once the stream is encoded)."""

    field = "tokens"

    def __init__(self, stream: TokenStream, heldout: bool, name: str, span: Span):
        self.stream, self.heldout, self.name, self.span = stream, heldout, name, span

    @property
    def lo(self) -> int:
        return _cut_at(len(self.stream)) if self.heldout else 0

    @property
    def hi(self) -> int:
        return len(self.stream) if self.heldout else _cut_at(len(self.stream))

    def _check_length(self, length: int) -> None:
        if len(self) < length:
            what = "held-out" if self.heldout else "training"
            raise NexusError.at(self.span, f"{self.name}: its {what} part has {len(self)} "
                                f"tokens, fewer than context + 1 = {length}; use a larger file "
                                "or a smaller --context")

    def sample(self, n: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        self._check_length(length)
        return super().sample(n, length, gen)

    def eval_batches(self, n: int, length: int, limit: int) -> Iterator[dict[str, torch.Tensor]]:
        self._check_length(length)
        return super().eval_batches(n, length, limit)

    def eval_batch(self, starts: list[int], length: int) -> dict[str, torch.Tensor]:
        counts = [self.stream.read_bytes(self.lo + int(s), length) for s in starts]
        return {**super().eval_batch(starts, length),
                "token_bytes": torch.from_numpy(np.stack(counts).astype(np.int64))}


def _cut_at(total: int) -> int:
    return total - max(int(total * HELDOUT), 1)


def token_dataset(parts: list[tuple], name: str, tokenizer: TextTokenizer,
                  span: Span) -> Dataset:
    """A text corpus as the ids of `tokenizer`: `parts` are (cache key, file name, bytes)."""
    stream = TokenStream(parts, tokenizer, span)
    name = f"{name} through the tokenizer of {tokenizer.directory}"
    return Dataset(name, ("tokens",), TokenSplit(stream, False, name, span),
                   TokenSplit(stream, True, name, span))


# ----------------------------------------------------------------------------- labelled


class Labelled:
    """Examples with class labels: images (digits) or byte documents (folders). `captions`,
    if given, maps batch fields to one row per class (the digits' names: their bytes, or their
    ids with a padding mask)."""

    def __init__(self, examples: list, labels: np.ndarray, make, captions=None):
        self.examples, self.labels, self._make, self.captions = examples, labels, make, captions

    def __len__(self) -> int:
        return len(self.examples)

    def take(self, index, length: int) -> dict[str, torch.Tensor]:
        index = [int(i) for i in index]
        batch = self._make([self.examples[i] for i in index], length)
        labels = self.labels[index]
        batch["label"] = torch.from_numpy(labels.astype(np.int64))
        for field, rows in (self.captions or {}).items():
            batch[field] = torch.from_numpy(rows[labels])
        return batch

    def sample(self, n: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return self.take(torch.randint(0, len(self), (n,), generator=gen).tolist(), length)

    def eval_batches(self, n: int, length: int, limit: int) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(0, min(len(self), n * limit), n):
            yield self.take(range(i, min(i + n, len(self))), length)


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_SENTENCE = "a handwritten {}"  # a digit's caption through a tokenizer: a sentence


def caption_ids(texts: list[str], tokenizer: TextTokenizer) -> dict[str, np.ndarray]:
    """`texts` through `tokenizer`, padded to the longest: the `caption`, `caption_mask` and
    `caption_share` rows. The padding id is 0, which any vocabulary has; masked, it never
    counts."""
    encoded = [tokenizer.encode(text) for text in texts]
    width = max(len(ids) for ids in encoded)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=bool)
    for i, row in enumerate(encoded):
        ids[i, : len(row)], mask[i, : len(row)] = row, True
    share = (mask * (width / mask.sum(1, keepdims=True))).astype(np.float32)
    return {"caption": ids, "caption_mask": mask, "caption_share": share}


def _digit_images(examples: list[tuple[np.ndarray, np.ndarray]],
                  length: int) -> dict[str, torch.Tensor]:
    images, waves = zip(*examples)
    pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 16.0)  # 0..16 -> 0..1
    return {"image": pixels.unsqueeze(1),  # (n, 1, 8, 8)
            "audio": torch.from_numpy(np.stack(waves))}  # (n, 512): the digit's DTMF tone


def digits_dataset(tokenizer: TextTokenizer | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 real scans), shuffled once with a fixed seed so
    the held-out tenth has every class; captions are the digits' English names (bytes), or
    with a `tokenizer`, the ids of "a handwritten seven" and so on."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images, labels = digits.images[order], digits.target[order]
    cut = len(labels) - int(len(labels) * HELDOUT)
    captions = _name_bytes() if tokenizer is None else caption_ids(
        [DIGIT_SENTENCE.format(n) for n in DIGIT_NAMES], tokenizer)
    waves = dtmf(labels)  # a third modality: the digit's telephone tone (train/waves.py)
    splits = [Labelled(list(zip(images[a:b], waves[a:b])), labels[a:b], _digit_images, captions)
              for a, b in ((0, cut), (cut, None))]
    return Dataset("digits (scikit-learn, 1797 images)", ("image", "label", *captions, "audio"),
                   *splits, classes=10)


def _name_bytes() -> dict[str, np.ndarray]:
    width = max(len(n) for n in DIGIT_NAMES)
    names = [np.frombuffer(n.ljust(width).encode(), np.uint8) for n in DIGIT_NAMES]
    return {"caption": np.array(names).astype(np.int64)}


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


def open_data(call: Call, tokenizer: TextTokenizer | None = None) -> Dataset:
    """The dataset a `data = ...` setting names. With a `tokenizer`, a text corpus (a file, a
    folder, the default corpus) is read as its ids, and the digits' captions are sentences
    through it; a folder of labelled files stays as it is."""
    if call.fn == "default":
        name = "pydoc_data.topics (CPython documentation)"
        if tokenizer is not None:
            key = ("pydoc_data.topics", sys.version)
            return token_dataset([(key, name, default_corpus())], name, tokenizer, call.span)
        return byte_dataset([default_corpus()], name)
    if call.fn == "digits":
        return digits_dataset(tokenizer)
    if not call.kwargs["path"].strip():  # Path("") is the working directory: never meant
        raise NexusError.at(call.span, f"the data path is empty: name a file or folder, e.g. "
                            f"{call.fn}(\"corpus.txt\")")
    path = Path(call.kwargs["path"]).expanduser()
    if call.fn == "folder":
        return folder_dataset(path, call.span)
    return text_dataset(path, call.span, tokenizer)


def slice_batch(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This process's share of a global batch (data parallel: equal, contiguous slices)."""
    if world == 1:
        return batch
    n = next(iter(batch.values())).shape[0] // world
    return {k: v[rank * n: (rank + 1) * n] for k, v in batch.items()}


# ---------------------------------------------------------------------------- prefetching


class Prefetch:
    """Training batches built ahead in one background thread: while step s runs, the batches
    of steps s+1 .. s+ahead are read, sampled and prepared by `make(step)` on the host. A
    batch is a function of its step (its generator is the step's own), so building it early
    gives the very batch that building it in turn would.

    For a CUDA device the host batch is also made cheap to ship there: integer fields whose
    values are bytes travel as uint8 (an eighth of int64's copy) and are widened back on the
    device, and every field is pinned, so the copy does not block the host. On the CPU the
    batch is handed over as built."""

    def __init__(self, make, device, ahead: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.make, self.device, self.ahead = make, torch.device(device), ahead
        self.shipping = self.device.type == "cuda"
        self.pending: dict = {}  # step -> Future of its host batch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="nexus-batches") if ahead else None

    def take(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of `step` on the device; the next `ahead` steps' start building."""
        for old in [k for k in self.pending if k < step]:  # skipped (not asked for)
            self.pending.pop(old).cancel()
        future = self.pending.pop(step, None)
        host, narrowed = future.result() if future is not None else self.host_batch(step)
        if self.pool is not None:
            for later in range(step + 1, step + 1 + self.ahead):
                if later not in self.pending:
                    self.pending[later] = self.pool.submit(self.host_batch, later)
        return {k: self._arrive(v, k in narrowed) for k, v in host.items()}

    def host_batch(self, step: int) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
        """(the batch ready to ship, the fields narrowed to uint8)."""
        batch = self.make(step)
        if not self.shipping:
            return batch, frozenset()
        narrowed = frozenset(k for k, v in batch.items() if _bytes_valued(v))
        return {k: (v.to(torch.uint8) if k in narrowed else v).pin_memory()
                for k, v in batch.items()}, narrowed

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def _arrive(self, v: torch.Tensor, narrowed: bool) -> torch.Tensor:
        moved = v.to(self.device, non_blocking=self.shipping)
        return moved.long() if narrowed else moved


def _bytes_valued(v: torch.Tensor) -> bool:
    """An int64 tensor whose values all fit a byte (read on the host, in the builder's
    thread)."""
    return v.dtype == torch.int64 and v.numel() > 0 and 0 <= int(v.min()) and int(v.max()) < 256
