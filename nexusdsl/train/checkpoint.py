"""Checkpoints: safetensors for tensors, a small JSON for everything else. No pickle.

    runs/TinyLM/
      latest                      # "step-00001000": the newest complete checkpoint
      step-00001000/
        model.safetensors         # weights, each tensor once (tied names listed in state.json)
        optimizer.safetensors     # optimizer tensors: "<param>/<slot>", e.g. "tok.weight/exp_avg"
        state.json                # step, RNG states, config, .nx source hash, IR content hash

A checkpoint directory is written aside and renamed into place (`fsutil.atomic_directory`),
then `latest` is replaced atomically. A kill at any moment leaves `latest` naming a complete
checkpoint. Tensor names are the model's IR names; the prompt-tuning prefix is `@prefix`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.fsutil import atomic_directory, atomic_write_text
from nexusdsl.lang.diagnostics import Diagnostic, NexusError

FORMAT = "nexusdsl-checkpoint/1"
MODEL, OPTIMIZER, STATE, POINTER = "model.safetensors", "optimizer.safetensors", "state.json", "latest"
KEEP = 2  # complete checkpoints kept; older ones are removed after a save


class CheckpointError(NexusError):
    """A checkpoint that cannot be used (missing, damaged, or from another model)."""

    def __init__(self, message: str):
        super().__init__(Diagnostic(NO_SPAN, message))


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- names


def file_name(trainee_name: str) -> str:
    """Trainee parameter name -> checkpoint tensor name (`model.tok.weight` -> `tok.weight`)."""
    if trainee_name == "prefix":
        return "@prefix"
    assert trainee_name.startswith("model."), trainee_name
    return trainee_name[len("model."):]


def trainee_name(file_key: str) -> str:
    return "prefix" if file_key == "@prefix" else f"model.{file_key}"


def aliases(module: torch.nn.Module) -> dict[str, str]:
    """Tied names -> the name saved: the same Parameter reached under several names
    (`unembed.weight` is `tok.weight`). safetensors refuses shared storage, so each tensor
    is saved once and its other names are restored on load."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[file_name(name)] = file_name(first[id(p)])
        else:
            first[id(p)] = name
    return tied


# ----------------------------------------------------------------------------- saving


def pack_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An FQN-keyed optimizer state dict -> (tensors, JSON part)."""
    tensors, scalars = {}, {}
    for pname, slots in osd["state"].items():
        for slot, value in slots.items():
            key = f"{file_name(pname)}/{slot}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    groups = [{**g, "params": [file_name(p) for p in g["params"]]} for g in osd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pname, _, slot = key.rpartition("/")
        state.setdefault(trainee_name(pname), {})[slot] = value
    groups = [{**g, "params": [trainee_name(p) for p in g["params"]]} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save(out: Path, step: int, model: dict[str, torch.Tensor], tied: dict[str, str],
         optim: dict, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` under `out` atomically and point `latest` at it."""
    out = Path(out)
    name = f"step-{step:08d}"
    if latest_name(out) == name:
        return out / name  # this exact state is already saved
    for leftover in out.glob(".step-*.tmp-*"):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    if (out / name).exists():  # a stale directory `latest` does not name
        shutil.rmtree(out / name)
    weights = {file_name(k): v.detach().cpu().contiguous() for k, v in model.items()
               if file_name(k) not in tied}
    optim_tensors, optim_meta = pack_optimizer(optim)
    meta = {"format": FORMAT, **state, "step": step, "aliases": tied, "optimizer": optim_meta}
    try:
        with atomic_directory(out / name) as tmp:
            save_file(weights, str(tmp / MODEL), metadata={"format": FORMAT})
            save_file(optim_tensors, str(tmp / OPTIMIZER), metadata={"format": FORMAT})
            (tmp / STATE).write_text(json.dumps(meta, indent=1) + "\n")
        atomic_write_text(out / POINTER, name + "\n")
    except OSError as err:  # disk full, no permission: the previous checkpoint is intact
        raise CheckpointError(f"cannot write checkpoint {out / name}: "
                              f"{err.strerror or err}") from None
    _prune(out, keep=name)
    return out / name


def _prune(out: Path, keep: str) -> None:
    steps = sorted(p for p in out.glob("step-*") if p.is_dir() and p.name != keep)
    for old in steps[: max(len(steps) - (KEEP - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def latest_name(out: Path) -> str | None:
    try:
        return (Path(out) / POINTER).read_text().strip() or None
    except OSError:
        return None


def find(path: Path) -> Path | None:
    """The checkpoint directory `path` names: a run directory (through `latest`) or a step
    directory itself. None if there is none."""
    path = Path(path)
    name = latest_name(path)
    if name is not None:
        return path / name
    return path if (path / STATE).is_file() else None


def load(path: Path) -> Checkpoint:
    where = find(path)
    if where is None:
        reason = "does not exist" if not Path(path).exists() else "holds no checkpoint"
        raise CheckpointError(f"checkpoint {path} {reason}")
    try:
        state = json.loads((where / STATE).read_text())
        model = load_file(str(where / MODEL))
        optimizer = load_file(str(where / OPTIMIZER))
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"checkpoint {where} cannot be read: {err}") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a nexusdsl checkpoint ({FORMAT})")
    for alias, canonical in state["aliases"].items():
        model[alias] = model[canonical]
    return Checkpoint(where, state, model, optimizer)


def check_compatible(ckpt: Checkpoint, model_name: str, graph_hash: str, file: str) -> None:
    """A checkpoint loads only into the graph it was saved from (same IR content hash)."""
    saved = ckpt.state
    if saved["model"] != model_name or saved["graph_hash"] != graph_hash:
        hyper = ", ".join(f"{k}={v}" for k, v in saved.get("hyper", {}).items()) or "defaults"
        raise CheckpointError(
            f"checkpoint {ckpt.path} was saved from model {saved['model']} of "
            f"{saved['source']['file']} ({hyper}; graph {saved['graph_hash']}), which differs "
            f"from model {model_name} of {file} here (graph {graph_hash})")


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checkpoint tensors into a trainee (`model.*` and `prefix`), every name required."""
    named = {trainee_name(k): v for k, v in tensors.items()}
    expected = dict(module.state_dict())
    missing = sorted(set(expected) - set(named))
    extra = sorted(set(named) - set(expected))
    if missing or extra:
        raise CheckpointError(f"checkpoint tensors do not match the model: missing "
                              f"{[file_name(m) for m in missing][:5]}, unexpected "
                              f"{[file_name(e) for e in extra][:5]}")
    with torch.no_grad():
        for name, tensor in expected.items():
            if tensor.shape != named[name].shape:
                raise CheckpointError(f"checkpoint tensor {file_name(name)} has shape "
                                      f"{tuple(named[name].shape)}, the model {tuple(tensor.shape)}")
            tensor.copy_(named[name])
