"""Tokenizers that ship with a model: `modality text = ids(vocab = 32000, tokenizer = "dir")`.

The directory holds the model's `tokenizer.json`, read with the `tokenizers` library
(`Tokenizer.from_file`) and nothing else: no `AutoTokenizer`, no Python code shipped with a
model, no download. `tokenizer_config.json` and `special_tokens_map.json`, when present, name
the beginning- and end-of-text tokens. A hub id (`"org/name"`) that is not a directory next to
the `.nx` file is looked up in the local Hugging Face cache only (`HF_HUB_CACHE`, else
`HF_HOME/hub`, else `~/.cache/huggingface/hub`).

Padding and truncation settings in tokenizer.json are the model's batch settings (MiniLM's pads
every text to 128 ids and cuts it there); they are switched off, so a text encodes whole.
`encode` gives what `Tokenizer.encode(text).ids` gives then, special tokens included, as
transformers encodes a prompt. `encode_corpus` encodes a training file: its text in pieces of
about a MiB cut after a line end (so that a file of any size encodes in bounded memory), framed
once by the special tokens `encode` puts around a text, with the number of bytes of the text
each id stands for (what bits per byte divide by).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
NOT_READ = ("tokenizer.model", "vocab.json", "vocab.txt", "merges.txt")  # other formats
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CHUNK_BYTES = 1 << 20  # a corpus file is encoded a MiB or so at a time
PIECES_AT_ONCE = 8  # pieces given to the library together: its threads encode them in parallel
MAX_CONFIG_BYTES = 16 << 20  # tokenizer_config.json with a chat template is tens of KB
PROBE = "a"  # a text every tokenizer encodes to something: shows what encode adds around it


class TokenizerError(Exception):
    """A tokenizer that cannot be read or used; the caller says where it was named."""


@dataclass(frozen=True)
class TextTokenizer:
    """A model's tokenizer.json, ready to encode and decode text."""

    directory: Path
    tokenizer: Any = field(repr=False)  # tokenizers.Tokenizer, padding and truncation off
    size: int  # one more than the largest id it gives: the vocabulary it needs
    bos: int | None  # beginning-of-text id, if the tokenizer's configuration names one
    eos: int | None  # end-of-text id, likewise
    prefix: tuple[int, ...]  # the special ids `encode` puts before a text ([CLS], <s>)
    suffix: tuple[int, ...]  # and after it ([SEP])
    key: tuple = ()  # the directory and its files' sizes and times: changes with them

    def encode(self, text: str) -> list[int]:
        """The ids of `text` with the tokenizer's special tokens: Tokenizer.encode(text).ids."""
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens left out (ids the tokenizer lacks give nothing)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def start(self) -> list[int]:
        """What an empty prompt starts from: the beginning-of-text id, else the end of a
        previous text, else a line break."""
        for token in (self.bos, self.eos):
            if token is not None:
                return [token]
        return self.tokenizer.encode("\n", add_special_tokens=False).ids or [0]

    def encode_corpus(self, data) -> tuple[np.ndarray, np.ndarray]:
        """(ids, bytes per id) of a UTF-8 file's bytes (`data`: bytes or a uint8 array, a
        memory map). Every byte of the text counts towards exactly one id (whitespace a
        tokenizer drops counts towards the id after it), so the bytes per id add up to the
        file's size; the framing special ids stand for no bytes."""
        ids, counts = [np.asarray(self.prefix, np.int32)], [np.zeros(len(self.prefix), np.int32)]
        carry = 0  # bytes of pieces that gave no ids, counted towards the next id
        for texts in _batches(_texts(data), PIECES_AT_ONCE):
            encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
            for text, encoding in zip(texts, encodings):
                nbytes = len(text.encode("utf-8"))
                if not encoding.ids:
                    carry += nbytes
                    continue
                piece_counts = _bytes_per_token(text, [a for a, _ in encoding.offsets], nbytes)
                piece_counts[0] += carry
                carry = 0
                ids.append(np.asarray(encoding.ids, np.int32))
                counts.append(piece_counts)
        counts.append(np.zeros(len(self.suffix), np.int32))
        ids.append(np.asarray(self.suffix, np.int32))
        ids, counts = np.concatenate(ids), np.concatenate(counts)
        if carry and len(counts):
            counts[-1] += carry
        return ids, counts


def _texts(data):
    """The text of each piece of a file's bytes; bytes that are not UTF-8 are an error."""
    for start, piece in _pieces(data):
        try:
            yield bytes(piece).decode("utf-8")
        except UnicodeDecodeError as err:
            raise TokenizerError(f"is not UTF-8 text (byte {start + err.start} is "
                                 f"{piece[err.start]:#04x}); a tokenizer reads text") from None


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pieces(data):
    """(offset, bytes) pieces of about CHUNK_BYTES, each cut right after a line break between
    two characters that are not spaces: a place where the pre-tokenizers of BPE and WordPiece
    models (GPT-2's and Llama 3's patterns, BERT's) split anyway, so the pieces encode as the
    whole text does. (A SentencePiece model that marks the start of a text with a space marks
    each piece's start: one id in a MiB may differ.)"""
    view = memoryview(data).cast("B")
    start, total = 0, len(view)
    while start < total:
        end = total if total - start <= CHUNK_BYTES else _cut(view, start + CHUNK_BYTES)
        yield start, view[start:end]
        start = end


def _cut(view: memoryview, at: int) -> int:
    """The first place after `at` to cut at (the end if there is none)."""
    total, step = len(view), 1 << 16
    while at < total:
        window = bytes(view[at - 1: at + step + 1])  # a byte either side, for the lookarounds
        match = re.search(rb"(?<=[^\s])\n(?=[^\s])", window)
        if match:
            return at - 1 + match.end()
        at += step
    return total


def _bytes_per_token(text: str, starts: list[int], nbytes: int) -> np.ndarray:
    """Each id's share of the text's bytes: from where it starts to where the next one does
    (character offsets, as the tokenizers library gives them, turned into byte offsets)."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    at_char = np.concatenate([[0], np.cumsum(widths)])  # byte offset of every character
    first = np.clip(np.asarray(starts, np.int64), 0, len(code_points))
    first = np.maximum.accumulate(at_char[first])  # special or merged tokens never go back
    first[0] = 0
    return np.diff(np.append(first, nbytes)).astype(np.int32)


# ----------------------------------------------------------------------------- finding one


def open_tokenizer(source: str, nx_file: str | None = None) -> TextTokenizer:
    """The tokenizer `source` names: a directory (relative to the `.nx` file's folder, or
    absolute) or a hub id found in the local Hugging Face cache."""
    return load_tokenizer(find_directory(source, nx_file))


def find_directory(source: str, nx_file: str | None = None) -> Path:
    if not source.strip():
        raise TokenizerError('the tokenizer is empty: name the model\'s directory, '
                             'tokenizer = "path/to/model"')
    path = Path(os.path.expanduser(source))
    if not path.is_absolute() and nx_file:
        path = Path(nx_file).resolve().parent / path
    if path.exists():
        if not path.is_dir():
            raise TokenizerError(f"tokenizer {path} is a file; name the directory that holds "
                                 "tokenizer.json")
        return path.resolve()
    cached = _hub_snapshot(source) if HUB_ID.fullmatch(source) else None
    if cached is not None:
        return cached
    where = (f" and {source!r} is not in the local Hugging Face cache ({hub_cache()})"
             if HUB_ID.fullmatch(source) else "")
    raise TokenizerError(f"there is no tokenizer directory {path}{where}; nothing is "
                         "downloaded")


def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (read at every call, so a
    changed environment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def _hub_snapshot(repo: str) -> Path | None:
    """The cached snapshot directory of a hub model that holds its tokenizer, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in (TOKENIZER_FILE, *NOT_READ):  # a snapshot without tokenizer.json: say why
        try:
            found = try_to_load_from_cache(repo, name, cache_dir=hub_cache())
        except ValueError:  # not a valid repository id after all
            return None
        if isinstance(found, str):
            return Path(found).parent.resolve()
    return None


def load_tokenizer(directory: Path) -> TextTokenizer:
    file = directory / TOKENIZER_FILE
    if not file.exists():
        raise TokenizerError(_missing(directory))
    if not file.is_file():  # a FIFO or a device would block or never end
        raise TokenizerError(f"{file} is not a regular file")
    return _load(str(directory), _stamp(directory))


def _missing(directory: Path) -> str:
    present = [name for name in NOT_READ if (directory / name).exists()]
    if "tokenizer.model" in present:
        return (f"{directory} has tokenizer.model but no tokenizer.json: only tokenizer.json "
                "is read (a tokenizer.model is a SentencePiece, tiktoken or pickled file that "
                "only the model's own Python code loads, and no code of a model is run); "
                "write tokenizer.json once where you trust the model, with transformers' "
                "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)")
    also = f" (it has {', '.join(present)}; only tokenizer.json is read)" if present else ""
    return f"{directory} has no tokenizer.json{also}"


def _stamp(directory: Path) -> tuple:
    """Changes when a file the tokenizer is read from changes (invalidates the cache)."""
    stamp = []
    for name in (TOKENIZER_FILE, *CONFIG_FILES):
        try:
            info = (directory / name).stat()
            stamp.append((name, info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append((name, None, None))
    return tuple(stamp)


@lru_cache(maxsize=16)
def _load(directory: str, stamp: tuple) -> TextTokenizer:
    from tokenizers import Tokenizer

    path = Path(directory)
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    except Exception as err:  # the library raises a bare Exception with serde's message
        raise TokenizerError(f"{path / TOKENIZER_FILE} is not a tokenizer the tokenizers "
                             f"library can read: {err}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    special = _special_tokens(path)
    bos, eos = (_token_id(tokenizer, special.get(key)) for key in ("bos_token", "eos_token"))
    prefix, suffix = _framing(tokenizer)
    return TextTokenizer(path, tokenizer, max(vocab.values(), default=-1) + 1, bos, eos,
                         prefix, suffix, (directory, stamp))


def _special_tokens(directory: Path) -> dict[str, Any]:
    """bos_token and eos_token from tokenizer_config.json, else special_tokens_map.json."""
    found: dict[str, Any] = {}
    for name in reversed(CONFIG_FILES):  # tokenizer_config.json wins
        file = directory / name
        if not file.exists():
            continue
        if not file.is_file() or file.stat().st_size > MAX_CONFIG_BYTES:
            raise TokenizerError(f"{file} is not a regular file of at most 16 MiB")
        try:
            data = json.loads(file.read_bytes())
        except (ValueError, OSError) as err:
            raise TokenizerError(f"{file} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise TokenizerError(f"{file} is not a JSON object")
        found.update({k: data[k] for k in ("bos_token", "eos_token") if data.get(k)})
    return found


def _token_id(tokenizer, token) -> int | None:
    if isinstance(token, dict):  # {"content": "<s>", "lstrip": false, ...}
        token = token.get("content")
    return tokenizer.token_to_id(token) if isinstance(token, str) else None


def _framing(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the post-processor puts before and after a text ([CLS] ... [SEP], <s> ...)."""
    plain = tokenizer.encode(PROBE, add_special_tokens=False).ids
    full = tokenizer.encode(PROBE).ids
    for i in range(len(full) - len(plain) + 1):
        if plain and full[i: i + len(plain)] == plain:
            return tuple(full[:i]), tuple(full[i + len(plain):])
    return (), ()
