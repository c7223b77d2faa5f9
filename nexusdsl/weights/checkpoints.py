"""Checkpoints a `bind` section reads: a local Hugging Face directory (config.json and
safetensors files, sharded or not) or a hub id found in the local Hugging Face cache.

Nothing is downloaded and nothing shipped with a model runs: a config that asks for remote
code and a checkpoint with only pickled weights (`*.bin`, `*.pt`) are refused. Opening a source
reads only the safetensors headers (names, dtypes, shapes, byte ranges), checked against the
files; the bytes are read when parameters are filled (`read_into`), one tensor at a time,
straight into their destination where no transform stands between.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nexusdsl.weights.pretrained import PretrainedError, _read_header, weight_files

# safetensors dtype -> the name the IR and torch use
DTYPES = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16", "I64": "i64", "I32": "i32",
          "I16": "i16", "I8": "i8", "U8": "u8", "BOOL": "bool"}
PICKLES = ("pytorch_model.bin", "model.pt", "pytorch_model.bin.index.json", "model.ckpt")


class CheckpointError(PretrainedError):
    """A checkpoint that cannot be bound; the elaborator locates it at the bind section."""


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: Path
    dtype: str  # f32, bf16, ...
    shape: tuple[int, ...]
    start: int  # byte offset of the data in the file
    end: int


@dataclass(frozen=True)
class Source:
    """An opened checkpoint: where it is, its config, and the tensors it holds."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]


def resolve(source: str, nx_file: str | None) -> Path:
    """A directory (relative to the .nx file) or a hub id (`org/name`) in the local cache."""
    if not source:
        raise CheckpointError("bind: give a checkpoint directory or a hub id")
    path = Path(os.path.expanduser(source))
    if not path.is_absolute() and nx_file and not str(nx_file).startswith("<"):
        path = Path(nx_file).resolve().parent / path
    if path.is_dir():
        return path.resolve()
    cached = hub_snapshot(source)
    if cached is not None:
        return cached
    where = "a hub id in the local Hugging Face cache" if _looks_like_hub_id(source) else "a directory"
    raise CheckpointError(f"bind: {source} is neither a directory nor {where} (nothing is "
                          f"downloaded: put the checkpoint in a folder, or in the cache of "
                          f"{hub_cache()})")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def hub_snapshot(source: str) -> Path | None:
    """The local snapshot of hub id `org/name`: the revision refs/main names, else the only
    one there is; None when the cache does not hold it."""
    if not _looks_like_hub_id(source):
        return None
    repo = hub_cache() / ("models--" + source.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text(encoding="utf-8").strip()
        if chosen.is_dir():
            return chosen
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    return found[0] if len(found) == 1 else None


def open_source(path: Path) -> Source:
    return _open(path, _stamp(path))


def _stamp(path: Path) -> tuple:
    """What the cache of opened sources is keyed by: the files and their modification times."""
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                        for p in path.iterdir() if p.is_file()))


@lru_cache(maxsize=16)
def _open(path: Path, stamp: tuple) -> Source:
    config = _config(path)
    files = _weight_files(path)
    tensors = {}
    for file in sorted(set(files.values())):
        header, start = _read_header(file)
        for key, entry in header.items():
            if files.get(key, file) != file:
                continue
            first, last = entry["data_offsets"]
            tensors[key] = TensorInfo(key, file, DTYPES.get(entry["dtype"], entry["dtype"]),
                                      tuple(entry["shape"]), start + first, start + last)
    missing = sorted(set(files) - set(tensors))
    if missing:
        raise CheckpointError(f"bind: {path}'s index names {missing[0]}, which its file "
                              f"{files[missing[0]].name} does not hold")
    return Source(path, config, tensors)


def _config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"bind: {file} is not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"bind: {file} is not a JSON object")
    if config.get("auto_map"):
        raise CheckpointError(f"bind: {file} asks for code shipped with the model (auto_map); "
                              "no code from a checkpoint is run")
    return config


def _weight_files(path: Path) -> dict[str, Path]:
    if not any(path.glob("*.safetensors")):
        pickled = [name for name in PICKLES if (path / name).exists()]
        if pickled:
            raise CheckpointError(f"bind: {path} holds only pickled weights ({pickled[0]}); "
                                  "nothing pickled is loaded: convert it to safetensors")
        raise CheckpointError(f"bind: {path} has no *.safetensors file")
    return weight_files(path)


# ---------------------------------------------------------------------------- reading


def read_into(info: TensorInfo, target) -> None:
    """The tensor's bytes read straight into `target` (a contiguous CPU tensor of its dtype
    and size): no intermediate copy."""
    import torch

    view = target.view(torch.uint8) if target.dtype != torch.uint8 else target
    buffer = view.reshape(-1).numpy()
    with open(info.file, "rb") as f:
        f.seek(info.start)
        done = f.readinto(buffer)
    if done != info.end - info.start:
        raise CheckpointError(f"bind: {info.file} ended inside tensor {info.key}")


def read(info: TensorInfo):
    """The tensor as a new CPU tensor."""
    import torch

    out = torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    read_into(info, out)
    return out


def torch_dtype(name: str):
    import torch

    return {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16,
            "bf16": torch.bfloat16, "i64": torch.int64, "i32": torch.int32, "i16": torch.int16,
            "i8": torch.int8, "u8": torch.uint8, "bool": torch.bool}[name]
