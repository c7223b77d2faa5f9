"""Activation checkpointing per repeat step (`checkpoint = true` or a list of steps).

A compiled model is one torch.fx graph of op-module calls, with no module per layer to wrap.
The nodes of one step of a `repeat` are named under its scope (`blocks.{i}.…`,
`blocks_1.{i}.…` for a second repeat, `encoder.blocks.{i}.…` inside a block), so the graph is
cut where that prefix changes (torch.fx's split_module, on contiguous runs only, which keeps
the original order and so cannot make a cycle): each run of a chosen step becomes one
submodule whose call runs under `torch.utils.checkpoint` (use_reentrant=False). Its
activations are dropped after the forward pass and recomputed, step by step, in the backward
pass; only the step's inputs stay. The recomputation repeats the forward exactly: checkpoint
restores the RNG state, so dropout draws the same masks.

The op modules themselves are not moved: the split graph calls the same module objects, so
parameters, state_dict names, hooks, DDP and FSDP see the model as before; only the
NexusModule's generated forward is replaced (`install`).

Auxiliary losses (MoE balance losses, the `aux_loss` protocol in docs/decisions.md) are set
by a module's forward: the recomputation would set them again after the loop has read them,
and the next step would count them twice, so a recomputation clears what it set.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from nexusdsl.lang.diagnostics import NexusError, Span

# The outermost repeat step in a node's name: `blocks.3` in `blocks.3.mlp.linear`,
# `encoder.blocks_1.0` in `encoder.blocks_1.0.attention` (elaborate/statements.py names them).
_STEP = re.compile(r"(?:^|\.)(blocks(?:_\d+)?\.\d+)(?=\.|$)")


def step_of(name: str) -> str | None:
    """The repeat step a node of this name belongs to (its outermost one), or None."""
    match = _STEP.search(name)
    return name[:match.end(1)] if match else None


def repeat_steps(graph) -> list[str]:
    """Every repeat step of an IR graph, in graph order."""
    steps: dict[str, None] = {}
    for node in graph.nodes():
        step = None if node.is_input else step_of(node.name)
        if step is not None:
            steps.setdefault(step)
    return list(steps)


def chosen_steps(graph, setting: bool | list[str], span: Span) -> list[str]:
    """The steps `checkpoint = ...` names: all for true; for a list, each item a step
    (`"blocks.3"`), a repeat's scope (`blocks`: all its steps), or a glob over steps
    (`"blocks.[0-3]"`). An item that names no step is an error at the setting."""
    steps = repeat_steps(graph)
    if setting is False or setting == []:
        return []
    if not steps:
        raise NexusError.at(span, f"checkpoint: {graph.name} has no `repeat` steps whose "
                            "activations could be recomputed")
    if setting is True:
        return steps
    chosen: set[str] = set()
    for item in setting:
        found = [s for s in steps if fnmatch.fnmatchcase(s, item) or s.startswith(item + ".")]
        if not found:
            raise NexusError.at(span, f"checkpoint: `{item}` names no repeat step of "
                                f"{graph.name} (its steps: {_shown(steps)})")
        chosen.update(found)
    return [s for s in steps if s in chosen]


def _shown(steps: list[str]) -> str:
    """`blocks.0` to `blocks.11`, `blocks_1.0` to `blocks_1.2`: each repeat's range."""
    scopes: dict[str, list[str]] = {}
    for step in steps:
        scopes.setdefault(step.rsplit(".", 1)[0], []).append(step)
    return ", ".join(s[0] if len(s) == 1 else f"{s[0]} to {s[-1]}" for s in scopes.values())


# ----------------------------------------------------------------------------- the split


def install(module: nn.Module, steps: list[str]) -> fx.GraphModule | None:
    """Make `module` (a NexusModule) run the nodes of `steps` under activation checkpointing;
    returns the split graph module now running its forward (None when no step is chosen)."""
    if not steps:
        return None
    split = checkpointed_graph(module, set(steps))
    module.__dict__["_forward"] = lambda _self, *args: split(*args)
    return split


def checkpointed_graph(module: nn.Module, steps: set[str]) -> fx.GraphModule:
    """The module's fx graph cut into contiguous runs of one step (or of no chosen step), the
    runs of chosen steps wrapped in `Checkpointed`."""
    from torch.fx.passes.split_module import split_module

    gm = module.fx
    runs = _runs(gm, _step_keys(module, steps))
    split = split_module(gm, module, lambda node: runs[node][0], keep_original_order=True)
    for number in sorted({k for k, step in runs.values() if step is not None}):
        name = f"submod_{number}"  # split_module's name for the run of that number
        setattr(split, name, Checkpointed(getattr(split, name)))
    return split


def _step_keys(module: nn.Module, steps: set[str]) -> dict[fx.Node, str | None]:
    """Each op call of the fx graph -> the chosen step its IR node belongs to. The lowering
    (compiler/lower/fx.py) makes one call_module per non-input IR node, in graph order."""
    calls = [n for n in module.fx.graph.nodes if n.op == "call_module"]
    ir_nodes = [n for n in module.graph.nodes() if not n.is_input]
    if len(calls) != len(ir_nodes) or any(c.target != (i.shares or i.name)
                                         for c, i in zip(calls, ir_nodes)):
        raise RuntimeError("the fx graph does not follow the IR graph node for node")
    keys = {}
    for call, node in zip(calls, ir_nodes):
        step = step_of(node.name)
        keys[call] = step if step in steps else None
    return keys


def _runs(gm: fx.GraphModule, keys: dict[fx.Node, str | None]
          ) -> dict[fx.Node, tuple[int, str | None]]:
    """Every computing node -> (its run's number, its chosen step or None). A run is a
    maximal stretch of consecutive nodes of one key; the `getitem` taking one output of a
    multi-output call joins the run it stands in (torch.fx places it just before its use)."""
    runs: dict[fx.Node, tuple[int, str | None]] = {}
    number, current = 0, object()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        key = keys[node] if node.op == "call_module" else current  # getitem: where it is
        if key != current:
            number, current = number + 1, key
        runs[node] = (number, key)
    return runs


class Checkpointed(nn.Module):
    """Runs `inner` under torch.utils.checkpoint while training with gradients; as it is
    otherwise (evaluation, no_grad)."""

    def __init__(self, inner: fx.GraphModule):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        if not (self.training and torch.is_grad_enabled()):
            return self.inner(*args)
        from torch.utils.checkpoint import checkpoint

        return checkpoint(_Recompute(self.inner), *args, use_reentrant=False)


class _Recompute:
    """The checkpointed function: its first call is the forward pass; later calls are
    recomputations, which clear the auxiliary losses they set (the loop read the first)."""

    def __init__(self, inner: Callable):
        self.inner, self.calls = inner, 0

    def __call__(self, *args):
        self.calls += 1
        try:
            return self.inner(*args)
        finally:  # also when checkpoint stops a recomputation early, once it has what it needs
            if self.calls > 1:
                for m in self.inner.modules():
                    if getattr(m, "aux_loss", None) is not None:
                        m.aux_loss = None
