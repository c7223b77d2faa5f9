"""What the optimizer trains: the compiled model, with `freeze = [...]` applied, and for
`prefix = N` (prompt tuning: the paper's "model identity") a learned prefix.

Prompt tuning needs the prefix to enter after the embedding, which the `.nx` file does not
say; so it is added here, without touching the graph: a forward hook on the first `embed`
node's module prepends N learned vectors to its output ([B, T, d] -> [B, N+T, d]), and the
trainee drops the first N positions of every output that keeps the token axis. Every model
weight is frozen; only the prefix trains.
"""

from __future__ import annotations

import torch
from torch import nn

from nexusdsl.lang.diagnostics import NexusError, Span


class Trainee(nn.Module):
    """`model` (a NexusModule) and, for prompt tuning, `prefix` [N, d]."""

    def __init__(self, model: nn.Module, prefix: int = 0, span: Span | None = None, seed: int = 0):
        super().__init__()
        self.model = model
        self.n_prefix = prefix
        self.trim: list[str] = []
        if prefix:
            self._add_prefix(prefix, span, seed)

    def forward(self, *inputs):
        out = self.model(*inputs)
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
    """`freeze = [tok, blocks.0]`: every parameter of these nodes (and of nodes under them)
    gets no gradient. A tied parameter is one tensor: freezing either name freezes both."""
    params = dict(model.named_parameters(remove_duplicate=False))
    graph = model.graph
    for name in names:
        hits = [p for key, p in params.items() if key == name or key.startswith(name + ".")]
        if not hits:
            if graph.by_name(name) is not None:
                raise NexusError.at(span, f"freeze: node `{name}` has no parameters")
            tops = sorted({key.split(".")[0] for key in params})
            raise NexusError.at(span, f"freeze: {graph.name} has no node `{name}` (nodes with "
                                f"parameters: {', '.join(tops)})")
        for p in hits:
            p.requires_grad_(False)
