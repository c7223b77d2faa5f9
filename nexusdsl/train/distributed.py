"""Several processes, one model: `torchrun --nproc_per_node N -m nexusdsl.cli train FILE`.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them everything here is a no-op. The
backend is gloo on CPU and nccl on GPU. By default the model is replicated with DDP; `--shard`
uses FSDP (torch's `fully_shard`): every op module whose parameters it owns alone becomes one
FSDP unit (the generated fx code calls op modules directly, so only they run FSDP's hooks);
parameters shared between ops (tied embeddings) stay in the root unit. Checkpoints always hold
full, unsharded tensors gathered to rank 0, so a sharded run's checkpoint loads in one process.
"""

from __future__ import annotations

import os
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


def wrap(trainee: nn.Module, d: Dist) -> nn.Module:
    """The module the training step calls: the trainee itself, DDP around it, or (sharded)
    the trainee turned into FSDP units in place."""
    if not d.active:
        return trainee
    if d.sharded:
        _fully_shard(trainee, d)
        return trainee
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.local_rank] if d.device.startswith("cuda") else None
    # Ops with nested graphs (routed experts) may leave parameters unused in a step; DDP must
    # then look for them after every backward pass, which costs time, so only then.
    routed = any(node.regions for node in trainee.model.graph.nodes())
    return DDP(trainee, device_ids=ids, find_unused_parameters=routed)


def _fully_shard(trainee: nn.Module, d: Dist) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from nexusdsl.compiler.lower.fx import OpModule

    # The generated code applies ops out of place, so FSDP's caution about views returned by
    # a unit (in-place ops on them would skip its hooks) does not apply here.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(d.device.split(":")[0], (d.world,))
    owners = Counter(id(p) for _, p in trainee.named_parameters(remove_duplicate=False))
    for module in trainee.modules():
        params = list(module.parameters())
        if isinstance(module, OpModule) and params and all(owners[id(p)] == 1 for p in params):
            fully_shard(module, mesh=mesh)
    fully_shard(trainee, mesh=mesh)


def _options(d: Dist):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=d.sharded, cpu_offload=d.sharded)


def model_state(trainee: nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """Full tensors (on rank 0 when sharded), keyed by the trainee's parameter names."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(trainee, options=_options(d))


def optimizer_state(trainee: nn.Module, optimizer, d: Dist) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(trainee, optimizer, options=_options(d))


def load_optimizer_state(trainee: nn.Module, optimizer, state: dict, d: Dist) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: a parameter that never had a gradient (a head another objective trains)
    # has no optimizer state yet, in the checkpoint as in the run that wrote it
    set_optimizer_state_dict(trainee, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


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
