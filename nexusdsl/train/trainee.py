"""What the optimizer trains: the compiled model with the train section's selectors applied
(`freeze = [...]`, `train = [...]`: elaborate/selectors.py), with LoRA adapters
(`lora = lora(...)`: train/lora.py), or with a learned prefix for `prefix = N` (prompt tuning:
the paper's "model identity"). `trainee_for(module, config)` builds it from a TrainConfig.

Prompt tuning needs the prefix to enter after the embedding, which the `.nx` file does not
say; so it is added here, without touching the graph: a forward hook on the first `embed`
node's module prepends N learned vectors to its output ([B, T, d] -> [B, N+T, d]), and the
trainee drops the first N positions of every output that keeps the token axis. Every model
weight is frozen; only the prefix trains.
"""

from __future__ import annotations

import torch
from torch import nn

from nexusdsl.elaborate.selectors import select, trainable
from nexusdsl.elaborate.train_config import TrainConfig
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.train import lora


def trainee_for(module: nn.Module, config: TrainConfig) -> Trainee:
    """`module` (a NexusModule) as `config` trains it: selectors, LoRA or a prefix."""
    if config.freeze or config.train:
        select_trainable(module, config)
    trainee = Trainee(module, config.prefix, config.span("prefix"), config.seed)
    if config.lora is not None:
        trainee.add_lora(config.lora, config.span("lora"), config.seed)
    return trainee


class Trainee(nn.Module):
    """`model` (a NexusModule) and, for prompt tuning, `prefix` [N, d]."""

    def __init__(self, model: nn.Module, prefix: int = 0, span: Span | None = None, seed: int = 0):
        super().__init__()
        self.model = model
        self.n_prefix = prefix
        self.trim: list[str] = []
        self.base_sha256: str | None = None  # a LoRA run's base weights (train/lora.py)
        if prefix:
            self._add_prefix(prefix, span, seed)

    def add_lora(self, call, span: Span | None, seed: int = 0) -> None:
        """Freeze the model and adapt the projections `call` (a `lora(...)` Call) targets."""
        self.base_sha256 = lora.base_hash(self.model)
        lora.attach(self.model, call, span, seed)

    def state_dict(self, *args, **kwargs):
        """A LoRA run's state is its adapters: checkpoints save them alone (the base weights
        come from the `.nx` file; `lora.check_base` makes sure they are the same)."""
        state = super().state_dict(*args, **kwargs)
        if self.base_sha256 is None:
            return state
        keep = f"{kwargs.get('prefix', '')}model.{lora.ROOT}."
        for key in [k for k in state if not k.startswith(keep)]:
            del state[key]
        return state

    def forward(self, *inputs, **named):
        out = self.model(*inputs, **named)
        if not self.n_prefix:
            return out
        if isinstance(out, dict):
            return {k: v[:, self.n_prefix:] if k in self.trim else v for k, v in out.items()}
        return out[:, self.n_prefix:]

    def _add_prefix(self, n: int, span: Span | None, seed: int) -> None:
        graph = self.model.graph
        embed = next((node for node in graph.nodes() if node.op == "embed"), None)
        if embed is None or embed.type.rank != 3:
            raise NexusError.at(span, f"prefix = {n}: prompt tuning needs a model that embeds "
                                "a token sequence [B, T] -> [B, T, d]; "
                                f"{graph.name} has no such `embed`")
        token_axis = embed.type.axes[1]
        self.trim = [k for k, ref in graph.outputs.items()
                     if graph.type_of(ref).rank >= 2 and graph.type_of(ref).axes[1] == token_axis]
        if not self.trim:
            raise NexusError.at(span, f"prefix = {n}: no output of {graph.name} keeps the token "
                                f"axis {token_axis} of `{embed.name}`, so the prefix cannot be "
                                "removed from the outputs")
        module = self.model.get_submodule(embed.shares or embed.name)
        weight = getattr(module, "weight", None)
        std = float(weight.detach().std()) if weight is not None else 0.02
        gen = torch.Generator().manual_seed(seed + 7919)
        dim = embed.type.axes[-1].size
        first = next(self.model.parameters())
        init = torch.randn(n, dim, generator=gen) * std
        self.prefix = nn.Parameter(init.to(device=first.device, dtype=first.dtype))
        for p in self.model.parameters():
            p.requires_grad_(False)
        module.register_forward_hook(self._prepend)

    def _prepend(self, module, args, out):
        prefix = self.prefix.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
        return torch.cat([prefix, out], dim=1)  # (B, N + T, d)


def freeze(model: nn.Module, names: list[str], span: Span | None) -> None:
    """`freeze = [tok, "blocks.*.attention"]`: every parameter these select (a node's name
    selects its parameters, a glob matches parameter names or the nodes they lie under) gets no
    gradient. A tied parameter is one tensor: freezing either name freezes both."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in select(names, list(params), "freeze", model.graph.name, span, model.graph):
        params[name].requires_grad_(False)


def select_trainable(model: nn.Module, config: TrainConfig) -> None:
    """`train = [...]` and `freeze = [...]`: only the parameters `train` selects (all when it
    is empty) and `freeze` does not keep training. Parameters frozen already (a frozen bind)
    stay frozen. A tied parameter trains only if every name of it does."""
    params = dict(model.named_parameters(remove_duplicate=False))
    spans = {k: config.span(k) for k in ("train", "freeze")}
    kept = trainable(list(params), config.train, config.freeze, model.graph.name, spans,
                     model.graph)
    for name, p in params.items():
        if name not in kept:
            p.requires_grad_(False)
