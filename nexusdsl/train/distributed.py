"""Several processes, one model: `torchrun --nproc_per_node N -m nexusdsl.cli train FILE`.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them everything here is a no-op. The
backend is gloo on CPU and nccl on GPU. By default the model is replicated with DDP; `--shard`
uses FSDP2 (torch's `fully_shard`) in units (`fsdp_units`):

- one unit per repeat step: the op modules of `blocks.{i}.` grouped by one `fully_shard([...])`
  call (the generated fx code calls op modules directly, never a step's container module, so
  the group's hooks sit on the op modules and its all-gather runs before the first of them);
- the frozen op modules of a step (a frozen `bind`, `freeze = [...]`) in a unit of their own,
  so that the step's gradient reduce-scatter carries none of their parameters;
- every other op module that owns its parameters alone (the embedding, the head) a unit of
  its own; what remains (tied parameters, a prompt-tuning prefix, a module of `repeat N shared`
  called by every step) belongs to the root unit.

With `precision` bf16 or fp16 each unit all-gathers its weights in that dtype and reduces
gradients in float32 (`MixedPrecisionPolicy`); the sharded weights, the gradients the optimizer
reads and its state stay float32. The optimizer is built after `wrap` (loop.prepare_optimizer):
its parameters must be the sharded ones.

Checkpoints of a sharded run are distributed (torch.distributed.checkpoint, through its
safetensors storage: checkpoint.save_sharded): each process writes its own shards, nothing is
gathered to one process; a checkpoint loads in one process or in any number (checkpoint.load).
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nexusdsl.train.device import group_backend, process_device
from nexusdsl.train.device import use as use_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    sharded: bool = False
    owner: bool = False  # this code created the process group (and so destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(shard: bool = False, device: str = "cpu") -> Dist:
    """Join the process group torchrun prepared (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        use_device(device)
        return Dist(device=device, sharded=False)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = process_device(device, local)  # each process its own GPU, whatever index was given
    use_device(device)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(group_backend(device))
    return Dist(rank, world, local, device, shard, owner)


def wrap(trainee: nn.Module, d: Dist, precision: str = "fp32") -> nn.Module:
    """The module the training step calls: the trainee itself, DDP around it, or (sharded)
    the trainee turned into FSDP units in place. Build the optimizer after this."""
    if not d.active:
        return trainee
    if d.sharded:
        _fully_shard(trainee, d, precision)
        return trainee
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.local_rank] if d.device.startswith("cuda") else None
    # Ops with nested graphs (routed experts) may leave parameters unused in a step; DDP must
    # then look for them after every backward pass, which costs time, so only then.
    routed = any(node.regions for node in trainee.model.graph.nodes())
    return DDP(trainee, device_ids=ids, find_unused_parameters=routed)


@dataclass
class Unit:
    """One FSDP unit: its name (`blocks.0`, `blocks.0 (frozen)`, `tok`), the op modules it
    groups, and whether every parameter of it is frozen."""

    name: str
    modules: list[nn.Module]
    frozen: bool


# The step scope of a module name: `blocks.3` of `blocks.3.attention.qkv` (the outermost
# repeat: `blocks`, `blocks_1`, ... then the step's number; docs/language.md, "Blocks and calls").
STEP = re.compile(r"^((?:[^.]+\.)*?blocks(?:_\d+)?\.\d+)\.")


def fsdp_units(trainee: nn.Module) -> list[Unit]:
    """The units `--shard` makes, in the order the model runs them (the root unit, which
    takes every parameter left over, not listed)."""
    model = trainee.model
    calls = Counter(n.target for n in model.fx.graph.nodes if n.op == "call_module")
    owners = Counter(id(p) for _, p in trainee.named_parameters(remove_duplicate=False))
    groups: dict[tuple[str, bool], list[nn.Module]] = {}
    for target, count in calls.items():
        module = model.get_submodule(target)
        params = list(module.parameters())
        # a module called by several steps (`repeat N shared`) or holding a tied parameter
        # stays in the root unit: a unit's parameters are gathered for one place in the model
        if not params or count > 1 or any(owners[id(p)] > 1 for p in params):
            continue
        frozen = not any(p.requires_grad for p in params)
        step = STEP.match(target)
        key = (step.group(1) if step else target, frozen)
        groups.setdefault(key, []).append(module)
    return [Unit(name + (" (frozen)" if frozen else ""), modules, frozen)
            for (name, frozen), modules in groups.items()]


def _mixed_precision(precision: str):
    """All-gather weights in the training precision, reduce gradients in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def _fully_shard(trainee: nn.Module, d: Dist, precision: str = "fp32") -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # The generated code applies ops out of place, so FSDP's caution about views returned by
    # a unit (in-place ops on them would skip its hooks) does not apply here.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(d.device.split(":")[0], (d.world,))
    policy = _mixed_precision(precision)
    for unit in fsdp_units(trainee):
        fully_shard(unit.modules if len(unit.modules) > 1 else unit.modules[0], mesh=mesh,
                    mp_policy=policy)
    fully_shard(trainee, mesh=mesh, mp_policy=policy)


def _options():
    """Each process's own tensors, on their device: shards when sharded, nothing gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, cpu_offload=False)


def model_state(trainee: nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """The trainee's weights keyed by its parameter names: full tensors, or in a sharded run
    this process's shards (DTensors, for checkpoint.save_sharded; nothing is gathered)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(trainee, options=_options())


def optimizer_state(trainee: nn.Module, optimizer, d: Dist) -> dict:
    """The optimizer's state keyed by parameter names (sharded like the weights)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(trainee, optimizer, options=_options())


def load_optimizer_state(trainee: nn.Module, optimizer, state: dict, d: Dist) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: a parameter that never had a gradient (a head another objective trains)
    # has no optimizer state yet, in the checkpoint as in the run that wrote it
    set_optimizer_state_dict(trainee, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: a DTensor's local shard, any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def finite(tensors) -> bool:
    """Whether this process's part of every floating-point tensor is finite (no collective:
    `all_true` combines the answers)."""
    return all(bool(torch.isfinite(local(t)).all()) for t in tensors if t.is_floating_point())


def broadcast_text(text: str, d: Dist) -> str:
    """Process 0's `text` on every process (a path it chose): bytes in a tensor, no pickle."""
    if not d.active:
        return text
    data = text.encode("utf-8")
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size), dtype=torch.uint8)
    if d.main:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return bytes(buffer.tolist()).decode("utf-8")


def sum_all(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Sum numbers over processes (held-out sums, token counts)."""
    if not d.active:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_true(flag: bool, d: Dist) -> bool:
    """Whether `flag` holds on every process (so that all of them take the same branch)."""
    if not d.active:
        return flag
    return sum_all({"false": float(not flag)}, d)["false"] == 0


def gather_bytes(data: bytes, d: Dist) -> list[bytes]:
    """Every process's byte string (same length on all), e.g. their RNG states."""
    if not d.active:
        return [data]
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    out = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(out, t)
    return [bytes(o.tolist()) for o in out]


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown(d: Dist, clean: bool = True) -> None:
    """Leave the process group. After a failure (`clean` false) no barrier: the other
    processes may never reach it."""
    if d.active and d.owner and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
