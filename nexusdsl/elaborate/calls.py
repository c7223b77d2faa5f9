"""Applying a value to arguments: partial application (`act = gelu(approx = tanh)` then
`act(x)`), then an op call, a block call, a pretrained module (`x |> pretrained("dir", module =
"encoder.layer.0")`), or a configuration function (`topk(k = 2)`)."""

from __future__ import annotations

from nexusdsl.elaborate.block_calls import BlockCalls
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import OptionFunction, suggest, suggest_local
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.observer import Observer
from nexusdsl.elaborate.op_calls import OpCalls, is_tensorish
from nexusdsl.elaborate.pretrained_calls import NAME, PretrainedCalls, is_pretrained
from nexusdsl.elaborate.values import Arg, Partial, Symbol, describe
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.ops.base import Op


class Calls:
    def __init__(self, ops: OpCalls, blocks: BlockCalls, nodes: NodeWriter,
                 observer: Observer | None):
        self.ops = ops
        self.blocks = blocks
        self.nodes = nodes
        self.observer = observer
        self.pretrained = PretrainedCalls(nodes)

    def apply(self, func, args: list[Arg], kwargs, span: Span, alias: str | None, frame: Frame):
        if self.observer is None:
            return self._apply(func, args, kwargs, span, alias, frame)
        mark = self.nodes.mark()
        value = self._apply(func, args, kwargs, span, alias, frame)
        self.observer.on_call(span, self.nodes.made_since(mark))
        return value

    def _apply(self, func, args: list[Arg], kwargs, span: Span, alias: str | None, frame: Frame):
        if isinstance(func, Partial):
            self._check_first_argument(func, args, frame)
            args = [*args[:1], *func.args, *args[1:]] if args and is_tensorish(args[0].value) else [*func.args, *args]
            merged = dict(func.kwargs)
            merged.update(kwargs)
            if isinstance(func.target, Op):
                return self.ops.call(func.target, args, list(merged.items()), span, alias, frame)
            return self.blocks.call(func.target, args, list(merged.items()), span, alias, frame)
        if is_pretrained(func):  # a module of an open-weight model, a block like any other
            return self.pretrained.apply(func, args, kwargs, span, alias, frame)
        if isinstance(func, OptionFunction) and func.name == NAME:
            return self.pretrained.call(args, kwargs, span, alias, frame)
        if callable(func) and hasattr(func, "name"):  # a configuration function
            return func(args, kwargs, span)
        if isinstance(func, Symbol):
            raise NexusError.at(span, f"unknown function `{func.name}`" + suggest(func.name, frame))
        raise NexusError.at(span, f"{describe(func)} cannot be called")

    @staticmethod
    def _check_first_argument(func: Partial, args: list[Arg], frame: Frame) -> None:
        """`linear(xx, 4)` with `xx` a typo: a bare name where the tensor input goes names
        nothing (it would otherwise read as an option value and make a partial call)."""
        if func.args or not args or not isinstance(args[0].value, Symbol):
            return
        target = func.target
        wants_tensor = (bool(target.inputs) if isinstance(target, Op) else
                        any(p.type is not None for p in target.block.params))
        if wants_tensor:
            name = args[0].value.name
            raise NexusError.at(args[0].span, f"unknown name `{name}`" + suggest_local(name, frame))
