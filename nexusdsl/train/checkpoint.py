"""Checkpoints: safetensors for tensors, a small JSON for everything else. No pickle.

    runs/TinyLM/
      latest                      # "step-00001000": the newest complete checkpoint
      step-00001000/
        model.safetensors         # weights, each tensor once (tied names listed in state.json)
        optimizer.safetensors     # optimizer tensors: "<param>/<slot>", e.g. "tok.weight/exp_avg"
        state.json                # step, RNG states, config, .nx source hash, IR content hash

A sharded run (`--shard`, FSDP2) writes a distributed checkpoint instead, through
torch.distributed.checkpoint (DCP) and its safetensors storage: no tensor is gathered to one
process, each process writes the shards it holds, and DCP records in each file's metadata
where its pieces lie in the whole tensors:

      step-00001000/
        shard-00001-model-00001-of-00001.safetensors   # process 0's shards
        shard-00002-model-00001-of-00001.safetensors   # process 1's shards
        state.json                # as above, with "storage": "dcp" and the files' names

Its tensors are "model/<name>" and "optimizer/<name>/<slot>". `load` reads one in a single
process as whole tensors (DCP's load into full tensors, resharded from any number of files),
so evaluation, generation and a resume on any number of processes read it like the other.

A checkpoint directory is written aside and renamed into place (`fsutil.atomic_directory`),
then `latest` is replaced atomically. A kill at any moment leaves `latest` naming a complete
checkpoint. Tensor names are the model's IR names; the prompt-tuning prefix is `@prefix`.

Nothing is lost: a save never removes a checkpoint newer than itself nor a directory that is
not a complete checkpoint, and keeps the newest `KEEP`. Nothing read is trusted: `latest`,
`state.json` (checked against `StateFile` before use) and the safetensors files may be damaged
or edited, and every such mistake is one `CheckpointError`, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nexusdsl.elaborate.train_config import NO_SPAN
from nexusdsl.fsutil import atomic_directory, atomic_write_text, os_reason
from nexusdsl.lang.diagnostics import Diagnostic, NexusError
from nexusdsl.train import distributed

FORMAT = "nexusdsl-checkpoint/1"
MODEL, OPTIMIZER, STATE, POINTER = "model.safetensors", "optimizer.safetensors", "state.json", "latest"
KEEP = 2  # complete checkpoints kept; older ones are removed after a save
STEP_NAME = re.compile(r"step-\d{8,}")  # what `latest` may name: step-00001000
MAX_STEP = 10**12  # a step count beyond this is damage (it would overflow the step's seed)


class CheckpointError(NexusError):
    """A checkpoint that cannot be used (missing, damaged, or from another model)."""

    def __init__(self, message: str):
        super().__init__(Diagnostic(NO_SPAN, message))


# ----------------------------------------------------------------------------- state.json

def _scalars(values: dict[str, Any], lists: bool = False) -> dict[str, Any]:
    """Values of a settings dict: numbers, strings, booleans, null (and lists of them)."""
    for key, value in values.items():
        items = value if lists and isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
            raise ValueError(f"{key} must be a number, a string, true, false or null")
    return values


class _Record(BaseModel):
    """A JSON object of a checkpoint: exact types (no "3" for 3), other keys allowed."""

    model_config = ConfigDict(strict=True, extra="allow")


class SourceRecord(_Record):
    file: StrictStr
    sha256: StrictStr


class RngRecord(_Record):
    """Each process's generator states (train/rng.py): the CPU's, and its GPU's if it had one."""

    torch: list[list[StrictInt]] = Field(min_length=1)
    cuda: list[list[StrictInt]] | None = None

    @field_validator("torch", "cuda")
    @classmethod
    def _bytes(cls, states: list[list[int]] | None) -> list[list[int]] | None:
        if states is not None and any(not 0 <= b <= 255 for state in states for b in state):
            raise ValueError("an RNG state holds bytes (0 to 255)")
        return states


class GroupRecord(_Record):
    params: list[StrictStr]


class OptimizerRecord(_Record):
    scalars: dict[StrictStr, Any]
    param_groups: list[GroupRecord]

    @field_validator("scalars")
    @classmethod
    def _plain(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _scalars(values)


class CallRecord(_Record):
    """A configuration call, `adamw(lr = 3e-4)`: {"fn", "args", "kwargs"}."""

    model_config = ConfigDict(strict=True, extra="forbid")
    fn: StrictStr
    args: list[Any]
    kwargs: dict[StrictStr, Any]

    @field_validator("args")
    @classmethod
    def _plain_args(cls, values: list[Any]) -> list[Any]:
        return list(_scalars(dict(enumerate(values))).values())

    @field_validator("kwargs")
    @classmethod
    def _plain_kwargs(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _scalars(values)


class ConfigRecord(_Record):
    """The shape of the recorded training configuration; its values are checked as a train
    section's are (`session.saved_config`)."""

    data: CallRecord | None = None
    objective: CallRecord | None = None
    optimizer: CallRecord | None = None
    schedule: CallRecord | None = None
    hyper: dict[StrictStr, Any] = {}

    @field_validator("hyper")
    @classmethod
    def _plain(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _scalars(values, lists=True)


class StateFile(_Record):
    """What `state.json` must hold to be used: checked before any of it is read, so that an
    edited or damaged file is one error (`load`) instead of a KeyError later."""

    format: Literal["nexusdsl-checkpoint/1"]
    step: StrictInt = Field(ge=0, le=MAX_STEP)
    model: StrictStr
    graph_hash: StrictStr
    source: SourceRecord
    hyper: dict[StrictStr, Any]
    config: ConfigRecord
    aliases: dict[StrictStr, StrictStr]
    optimizer: OptimizerRecord
    rng: RngRecord | None = None  # a pruned checkpoint has none
    elapsed: StrictInt | StrictFloat = Field(default=0.0, ge=0)
    metrics: dict[StrictStr, StrictInt | StrictFloat] = {}
    world_size: StrictInt = Field(default=1, ge=1)
    sharded: StrictBool = False
    storage: Literal["safetensors", "dcp"] = "safetensors"  # dcp: a sharded run's shard files
    files: list[StrictStr] = []  # the shard files a dcp checkpoint is made of
    ir: dict[StrictStr, Any] | None = None  # the pruned IR (`nexus prune`)

    @field_validator("hyper")
    @classmethod
    def _plain(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _scalars(values, lists=True)

    @field_validator("elapsed")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def _first_problem(err: ValidationError) -> str:
    """`optimizer.param_groups.0.params: Input should be a valid list` (of the first mistake)."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the top level"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


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
    is saved once and its other names are restored on load. Only names the module's state
    is saved under count (a LoRA run saves its adapters alone: train/lora.py)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    saved = module.state_dict(keep_vars=True)
    for name, p in module.named_parameters(remove_duplicate=False):
        if name not in saved:
            continue
        if id(p) in first:
            tied[file_name(name)] = file_name(first[id(p)])
        else:
            first[id(p)] = name
    return tied


# ----------------------------------------------------------------------------- saving


def pack_optimizer(osd: dict, sharded: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An FQN-keyed optimizer state dict -> (tensors, JSON part). `sharded`: its tensors are
    DTensors, kept as they are for DCP."""
    tensors, scalars = {}, {}
    for pname, slots in osd["state"].items():
        for slot, value in slots.items():
            key = f"{file_name(pname)}/{slot}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach() if sharded else value.detach().cpu().contiguous()
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


def optimizer_state(ckpt: Checkpoint, fresh: list[dict[str, Any]]) -> dict:
    """The FQN-keyed optimizer state to resume with, for an optimizer whose groups are `fresh`
    (each its settings and `params`, checkpoint names). The saved groups must hold the same
    parameters and every saved tensor must fit its parameter; the groups' settings (lr, betas)
    come from this run's configuration, not from the file."""
    meta = ckpt.state["optimizer"]
    saved = [g["params"] for g in meta["param_groups"]]
    if [sorted(p) for p in saved] != [sorted(g["params"]) for g in fresh]:
        raise CheckpointError(f"checkpoint {ckpt.path}: its optimizer state groups other "
                              "parameters than this model's optimizer (damaged, or another "
                              "freeze or prefix setting)")
    for key, tensor in ckpt.optimizer.items():
        _check_slot(ckpt, key, tensor)
    return unpack_optimizer(ckpt.optimizer, {"scalars": meta["scalars"], "param_groups": fresh})


def _check_slot(ckpt: Checkpoint, key: str, tensor: torch.Tensor) -> None:
    """An optimizer tensor (`tok.weight/exp_avg`) names a weight and has its shape (a step
    count: one number), in floating point."""
    pname, _, slot = key.rpartition("/")
    weight = ckpt.model.get(pname)
    shape = () if slot == "step" else (weight.shape if weight is not None else None)
    if weight is None or tensor.numel() != math.prod(shape) or not tensor.is_floating_point() \
            or (slot != "step" and tensor.shape != shape):
        raise CheckpointError(f"checkpoint {ckpt.path} is damaged: {OPTIMIZER} holds {key} "
                              f"{tuple(tensor.shape)} {tensor.dtype}, which fits no weight")


def save(out: Path, step: int, model: dict[str, torch.Tensor], tied: dict[str, str],
         optim: dict, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` under `out` atomically and point `latest` at it. Callers that
    may race hold `out`'s lock (`fsutil.locked_directory`, taken by `nexusdsl.train`)."""
    out = Path(out)
    name = f"step-{step:08d}"
    if latest_name(out) == name:
        return out / name  # this exact state is already saved
    for leftover in out.glob(".step-*.tmp-*"):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    if (out / name).exists():  # never replaced: it may be the only copy of another run's work
        raise CheckpointError(f"cannot write checkpoint {out / name}: it already exists and "
                              f"{out / POINTER} does not name it; move it away")
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
    _prune(out, step)
    return out / name


def save_sharded(out: Path, step: int, model: dict[str, torch.Tensor], tied: dict[str, str],
                 optim: dict, state: dict[str, Any], d: distributed.Dist) -> Path:
    """`save` for a sharded run, called by every process with its shards (DTensors): a DCP
    checkpoint written aside by all of them, then renamed into place and pointed at by process
    0, as `save` does. Every process raises the same CheckpointError when any of them fails."""
    out = Path(out)
    name = f"step-{step:08d}"
    problem, done = None, False
    if d.main:
        try:
            done = _ready_for(out, name)
        except CheckpointError as err:
            problem = err.diagnostics[0].message
    if not distributed.all_true(problem is None, d):
        raise CheckpointError(problem or f"cannot write checkpoint {out / name} (see process 0)")
    if not distributed.all_true(not done, d):  # this exact state is already saved
        return out / name
    tensors = {f"model/{file_name(k)}": v.detach() for k, v in model.items()
               if file_name(k) not in tied}
    optim_tensors, optim_meta = pack_optimizer(optim, sharded=True)
    tensors |= {f"optimizer/{k}": v for k, v in optim_tensors.items()}
    meta = {"format": FORMAT, **state, "step": step, "aliases": tied, "optimizer": optim_meta,
            "storage": "dcp"}
    try:
        _write_shards(out / name, tensors, meta, d)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {out / name}: "
                              f"{err.strerror or err}") from None
    if d.main:
        _prune(out, step)
    return out / name


def _ready_for(out: Path, name: str) -> bool:
    """Checks before writing checkpoint `name` (the same as `save`'s): True if that exact
    state is already saved; leftovers of a killed save are removed."""
    if latest_name(out) == name:
        return True
    for leftover in out.glob(".step-*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if (out / name).exists():
        raise CheckpointError(f"cannot write checkpoint {out / name}: it already exists and "
                              f"{out / POINTER} does not name it; move it away")
    return False


def _write_shards(final: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                  d: distributed.Dist) -> None:
    """DCP's save of `tensors` into a directory process 0 made aside (each process its own
    file), then state.json, the rename into place and `latest`, by process 0 once all wrote."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    with contextlib.ExitStack() as stack:
        tmp, problem = "", None
        if d.main:
            try:
                tmp = str(stack.enter_context(atomic_directory(final)))
            except OSError as err:
                problem = f"cannot write checkpoint {final}: {err.strerror or err}"
        if not distributed.all_true(problem is None, d):
            raise CheckpointError(problem or f"cannot write checkpoint {final} (see process 0)")
        tmp = distributed.broadcast_text(tmp, d)
        try:
            dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(tmp, save_distributed=True))
            wrote = True
        except Exception as err:  # noqa: BLE001 - DCP gathers every process's failure into one
            wrote, problem = False, _first_line(err)
        if not distributed.all_true(wrote, d):
            raise CheckpointError(f"cannot write checkpoint {final}: "
                                  f"{problem or 'another process failed to write its shards'}")
        if d.main:
            files = sorted(p.name for p in Path(tmp).glob("*.safetensors"))
            (Path(tmp) / STATE).write_text(json.dumps({**meta, "files": files}, indent=1) + "\n")
    if d.main:  # renamed into place when the with block closed
        atomic_write_text(final.parent / POINTER, final.name + "\n")
    distributed.barrier(d)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def step_of(directory: Path) -> int:
    return int(directory.name.removeprefix("step-"))


def complete_steps(out: Path) -> list[Path]:
    """The complete checkpoints directly under `out` (a `step-N` directory with its
    state.json), oldest first."""
    try:
        found = [p for p in Path(out).iterdir()
                 if STEP_NAME.fullmatch(p.name) and (p / STATE).is_file()]
    except OSError:
        return []
    return sorted(found, key=step_of)


def _prune(out: Path, saved: int) -> None:
    """Keep the newest KEEP complete checkpoints up to `saved`; never touch a newer one or
    a directory that is not a complete checkpoint."""
    older = [p for p in complete_steps(out) if step_of(p) < saved]
    for old in older[: max(len(older) - (KEEP - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def latest_name(out: Path) -> str | None:
    """The step directory `out/latest` names; None without a pointer (or with an empty one).
    A pointer that names no step directory is damage: CheckpointError."""
    pointer = Path(out) / POINTER
    try:
        raw = pointer.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise CheckpointError(f"cannot read {pointer}: {os_reason(err)}") from None
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{pointer} is damaged: it is not UTF-8 text") from None
    if name and not STEP_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer} is damaged: it should name a step directory such as "
                              f"step-00001000, not {name[:60]!r}")
    return name or None


def find(path: Path) -> Path | None:
    """The checkpoint directory `path` names: a run directory (through `latest`, or its newest
    complete checkpoint when `latest` is missing or empty) or a step directory itself. None if
    there is none."""
    path = Path(path)
    name = latest_name(path)
    if name is not None:
        return path / name
    if (path / STATE).is_file():
        return path
    steps = complete_steps(path)
    return steps[-1] if steps else None


def load(path: Path) -> Checkpoint:
    where = find(path)
    if where is None:
        reason = "does not exist" if not Path(path).exists() else "holds no checkpoint"
        raise CheckpointError(f"checkpoint {path} {reason}")
    if not where.is_dir():
        raise CheckpointError(f"checkpoint {where} does not exist (named by {path / POINTER})")
    state = read_state(where)
    if state.get("storage") == "dcp":
        model, optimizer = _read_shards(where, state)
    else:
        model = _read_tensors(where / MODEL)
        optimizer = _read_tensors(where / OPTIMIZER)
    for alias, canonical in state["aliases"].items():
        if canonical not in model:
            raise CheckpointError(f"checkpoint {where} is damaged: {STATE} ties {alias} to "
                                  f"{canonical}, which {MODEL} does not hold")
        model[alias] = model[canonical]
    return Checkpoint(where, state, model, optimizer)


def read_state(where: Path) -> dict[str, Any]:
    """`state.json`, checked against `StateFile`."""
    try:
        state = json.loads((where / STATE).read_bytes().decode("utf-8"))
    except OSError as err:
        raise CheckpointError(f"checkpoint {where} cannot be read: {STATE}: "
                              f"{os_reason(err)}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"checkpoint {where} is damaged: {STATE} is not JSON") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a nexusdsl checkpoint ({FORMAT})")
    try:
        StateFile.model_validate(state)
    except ValidationError as err:
        raise CheckpointError(f"checkpoint {where} is damaged: {STATE}: "
                              f"{_first_problem(err)}") from None
    return state


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except OSError as err:
        raise CheckpointError(f"checkpoint {path.parent} cannot be read: {path.name}: "
                              f"{os_reason(err)}") from None
    except SafetensorError as err:
        raise CheckpointError(f"checkpoint {path.parent} is damaged: {path.name}: "
                              f"{err}") from None


def _read_shards(where: Path, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                              dict[str, torch.Tensor]]:
    """A DCP checkpoint's whole tensors in this process, however many processes wrote it:
    DCP's load (no process group) from the shard files state.json lists, each whole tensor
    checked to be covered by the pieces the files hold (a missing file is damage, not zeros)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    missing = [f for f in state["files"] if not (where / f).is_file()]
    if not state["files"] or missing:
        raise CheckpointError(f"checkpoint {where} is damaged: shard file "
                              f"{(missing or ['(none listed)'])[0]} is missing")
    try:
        entries = HuggingFaceStorageReader(str(where)).read_metadata().state_dict_metadata
        tensors = {key: _empty_for(where, key, entry, state) for key, entry in entries.items()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(where)), no_dist=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file fails anywhere inside DCP
        raise CheckpointError(f"checkpoint {where} is damaged: {_first_line(err)}") from None
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = {k.removeprefix("optimizer/"): v for k, v in tensors.items()
                 if k.startswith("optimizer/")}
    return model, optimizer


def _empty_for(where: Path, key: str, entry, state: dict[str, Any]) -> torch.Tensor:
    """The whole tensor `key` is read into, once its pieces are known to cover it exactly
    (so that no element is left unread) and to be no larger than the files."""
    size = getattr(entry, "size", None)
    if size is None or not key.startswith(("model/", "optimizer/")):
        raise CheckpointError(f"checkpoint {where} is damaged: its shards hold {key}, which "
                              "is not a model or optimizer tensor")
    total = math.prod(size)
    pieces = sum(math.prod(chunk.sizes) for chunk in entry.chunks)
    on_disk = sum((where / f).stat().st_size for f in state["files"])
    itemsize = torch.empty((), dtype=entry.properties.dtype).element_size()
    if pieces != total or total * itemsize > on_disk:
        raise CheckpointError(f"checkpoint {where} is damaged: its shards hold {pieces:,} of "
                              f"the {total:,} elements of {key}")
    return torch.empty(tuple(size), dtype=entry.properties.dtype)


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
