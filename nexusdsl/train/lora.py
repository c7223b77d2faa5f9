"""LoRA adapters (docs/language.md, "Train sections"): `lora = lora(rank = 8, alpha = 16,
dropout = 0.05, targets = ["*.q", "*.v"])` trains a low-rank update of the projections the
targets name (elaborate/selectors.py: `blocks.0.attention.q` is the query rows of a fused qkv
weight, `moe.experts.3.swiglu.linear` one expert's) with every weight of the model frozen.

How, without touching any op: each adapted weight W gets a parametrization
(torch.nn.utils.parametrize), so the module that reads it reads W + (alpha / rank) B A, B A
placed in the rows of the adapted block. Attention's fused projection, an expert's linear and a
fused linear_act read their weight like any module and are adapted alike. A [rank, in] starts
as PEFT initialises it (kaiming-uniform, a = sqrt(5)) and B [rows, rank] at zeros, so step 0
is the base model exactly. The pairs live once, under `lora.` of the model:
`lora.blocks.0.attention.q.A` and `.B`.

Dropout: PEFT drops elements of the layer's input on the LoRA path only, B A dropout(x). A
weight never sees its input, so here training drops whole input features of A instead (one
mask per forward pass, kept features scaled by 1 / (1 - p)): B (A diag(m)) x. At evaluation
there is no dropout and the two are W x + (alpha / rank) B A x alike (that is what a PEFT
export reproduces); during training this is a coarser regulariser than PEFT's.

A LoRA run's checkpoint holds the adapters (and their optimizer state) only: the base comes
from the `.nx` file's bind sections or its seed. So the checkpoint records a hash of the base
weights (`base_record`), and resuming, evaluating or loading it refuses a base that changed
(`check_base`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nexusdsl.elaborate.selectors import DEFAULT_TARGETS, Projection, lora_targets, projections
from nexusdsl.elaborate.train_config import Call
from nexusdsl.lang.diagnostics import Span

ROOT = "lora"  # the model's child that holds the adapters
RECORD = "lora"  # state.json: {"base_sha256": ...}
SEED_OFFSET = 104_729  # the adapters' initial values: from the run's seed, apart from the model's


class Settings:
    """A `lora(...)` call's values with their defaults."""

    def __init__(self, call: Call):
        self.rank = int(call.kwargs.get("rank", 8))
        self.alpha = call.kwargs.get("alpha", self.rank)  # as written: PEFT's lora_alpha
        self.dropout = float(call.kwargs.get("dropout", 0.0))
        self.targets = list(call.kwargs.get("targets", DEFAULT_TARGETS))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class Delta(nn.Module):
    """The parametrization of one weight: W plus scale * B A in each adapted block's rows.
    `blocks` holds (start, end, adapter) with the adapter a module whose parameters A and B
    are registered under `lora.` (a plain list here, so that each is named once)."""

    def __init__(self, blocks: list[tuple[int, int, nn.Module]], scale: float, dropout: float):
        super().__init__()
        self.blocks = blocks
        self.scale = scale
        self.dropout = dropout

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        for start, end, adapter in self.blocks:
            delta = (self.scale * (adapter.B @ self._a(adapter.A))).to(weight.dtype)
            weight = torch.cat([weight[:start], weight[start:end] + delta, weight[end:]])
        return weight

    def _a(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.dropout:
            return a
        keep = torch.rand(a.shape[1], device=a.device) >= self.dropout  # input features kept
        return a * keep.to(a.dtype) / (1 - self.dropout)


def attach(model: nn.Module, call: Call, span: Span, seed: int = 0) -> list[Projection]:
    """Freeze every weight of `model` (a NexusModule) and adapt the projections the call's
    targets name. Returns them, in the model's order. Mistakes are located at `span`."""
    settings = Settings(call)
    chosen = lora_targets(settings.targets, projections(model.graph), model.graph.name, span)
    for p in model.parameters():
        p.requires_grad_(False)
    root = nn.Module()
    model.add_module(ROOT, root)
    gen = torch.Generator().manual_seed(seed + SEED_OFFSET)
    by_weight: dict[str, list[tuple[int, int, nn.Module]]] = {}
    for proj in chosen:
        weight = model.get_parameter(proj.param)
        adapter = _place(root, proj.name)
        a = torch.empty(settings.rank, proj.columns)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)  # as PEFT's lora_A
        adapter.A = nn.Parameter(a.to(weight.device))
        adapter.B = nn.Parameter(torch.zeros(proj.rows[1] - proj.rows[0], settings.rank,
                                             device=weight.device))
        by_weight.setdefault(proj.param, []).append((*proj.rows, adapter))
    for param, blocks in by_weight.items():
        module_name, _, attr = param.rpartition(".")
        delta = Delta(sorted(blocks, key=lambda b: b[0]), settings.scale, settings.dropout)
        parametrize.register_parametrization(model.get_submodule(module_name), attr, delta)
    return chosen


def _place(root: nn.Module, path: str) -> nn.Module:
    """The module at dotted `path` under `root`, made (empty) where missing."""
    node = root
    for part in path.split("."):
        if part not in node._modules:
            node.add_module(part, nn.Module())
        node = node._modules[part]
    return node


def adapters(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{projection name: (A, B)} of a model with LoRA attached (empty without)."""
    root = model._modules.get(ROOT)
    if root is None:
        return {}
    return {name: (m.A, m.B) for name, m in root.named_modules()
            if isinstance(m._parameters.get("A"), torch.Tensor)}


def merge(model: nn.Module) -> None:
    """Fold the adapters into the weights they adapt (W <- W + scale B A, as evaluation sees
    it) and remove them: the model becomes a plain one with its own parameter names."""
    model.eval()
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                with torch.no_grad():
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    if ROOT in model._modules:
        del model._modules[ROOT]


def base_hash(model: nn.Module) -> str:
    """sha256 of the model's weights and buffers (names, dtypes, shapes, bytes) before any
    adapter is attached: what a LoRA checkpoint was trained on."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def base_record(base_sha256: str | None) -> dict[str, Any]:
    """What a checkpoint's state.json records of a LoRA run (nothing for other runs)."""
    return {RECORD: {"base_sha256": base_sha256}} if base_sha256 else {}


def check_base(base_sha256: str | None, checkpoint) -> None:
    """A LoRA checkpoint loads only onto the base weights it was trained on."""
    from nexusdsl.train.checkpoint import CheckpointError

    if not base_sha256:
        return
    saved = checkpoint.state.get(RECORD)
    recorded = saved.get("base_sha256") if isinstance(saved, dict) else None
    if not isinstance(recorded, str):
        raise CheckpointError(f"checkpoint {checkpoint.path} holds no record of the base "
                              "weights its LoRA adapters were trained on (damaged, or not a "
                              "LoRA run)")
    if recorded != base_sha256:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} holds LoRA adapters trained on other base weights "
            f"(sha256 {recorded[:12]}..., these are {base_sha256[:12]}...): the checkpoint "
            "a bind section reads, or the seed, changed since; bind the weights it was "
            "trained on")
