"""Per-expert routing statistics of MoE models, for metrics.jsonl.

At the steps the loop logs, a forward pre-hook on every `moe` node's module runs that node's
router on the tokens it is about to route, with the weights of that moment, and counts the
routing choices each expert receives (the first k choices of every token, counted before
capacity drops, as the balance loss counts them). The share per expert is what a collapsing
router shows first: one expert taking most of the tokens.

The router is run in evaluation mode, so a noisy top-k router's noise is left out and the
global RNG is not touched (training stays bit-for-bit the same with statistics on or off).
A `repeat N shared` layer calls one module N times: its counts add up over the calls. Under
FSDP, where a module's weights are shards outside its own forward pass, no statistics are
kept; under DDP each process counts its slice and the counts are summed.
"""

from __future__ import annotations

import torch

from nexusdsl.ops.base import attrs_of
from nexusdsl.ops.moe_torch import route_tokens
from nexusdsl.train import distributed


class ExpertLoad:
    """Counts per expert of every `moe` node of a compiled model, while `armed`."""

    def __init__(self, module: torch.nn.Module, enabled: bool = True):
        self.armed = False
        self.counts: dict[str, torch.Tensor] = {}
        self._hooks = []
        if not enabled:
            return
        for node in module.graph.nodes():
            if node.op != "moe":
                continue
            owner = node.shares or node.name
            layer = module.get_submodule(owner)
            self._hooks.append(layer.register_forward_pre_hook(self._counter(owner, node)))

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def _counter(self, name: str, node):
        attrs = attrs_of(node)

        def count(layer, args):
            if not self.armed:
                return
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1])
            seq = x.shape[-2] if x.dim() >= 2 else flat.shape[0]
            training, layer.training = layer.training, False  # no router noise, no RNG
            try:
                with torch.no_grad():
                    r = route_tokens(layer, attrs, flat, seq)
            finally:
                layer.training = training
            chosen = r.expert[: r.chosen].to("cpu")
            counts = torch.bincount(chosen, minlength=attrs.experts).double()
            self.counts[name] = self.counts.get(name, 0) + counts

        return count

    def shares(self, d: distributed.Dist) -> dict[str, list[float]]:
        """{moe node: [share of each expert]} of the armed passes (summed over processes),
        then forgets them."""
        shares = {}
        for name, counts in sorted(self.counts.items()):
            total = distributed.sum_all({str(i): float(c) for i, c in enumerate(counts)}, d)
            values = [total[str(i)] for i in range(len(counts))]
            whole = sum(values) or 1.0
            shares[name] = [round(v / whole, 6) for v in values]
        self.counts = {}
        return shares

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
