"""Writing the graph: the one place that adds IR nodes, names them and knows the modalities in
use. Every other part of the elaborator hands it an op, typed inputs and attributes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nexusdsl.elaborate.frame import Frame, Namer, taken_by_torch
from nexusdsl.elaborate.values import Arg, Modality, Tensor
from nexusdsl.ir.graph import Graph, Node, ParamSpec
from nexusdsl.ir.types import ModalitySpec, TensorType
from nexusdsl.lang.diagnostics import NexusError, Note, Span
from nexusdsl.ops.base import InferContext, Op, OpError

MAX_NODES = 200_000


class NodeWriter:
    """The graph being built (a nested graph while a region is built), its namer, and the
    modalities registered so far."""

    def __init__(self, sources: dict[str, str]):
        self.sources = sources
        self.graph = Graph()
        self.namer = Namer()
        self.modalities: dict[str, ModalitySpec] = {}

    # ------------------------------------------------------------------ graphs
    def start(self, name: str) -> Graph:
        self.graph = Graph(name)
        return self.graph

    @contextmanager
    def region(self, label: str) -> Iterator[Graph]:
        """Write into a fresh nested graph (an expert, an agent, a loop body) with its own
        names, then go back to the enclosing one."""
        saved = self.graph, self.namer
        self.graph, self.namer = Graph(label), Namer()
        try:
            yield self.graph
        finally:
            self.graph, self.namer = saved

    def mark(self) -> tuple[Graph, int]:
        """Where the graph stands now; `made_since` lists the nodes added after it."""
        return self.graph, self.graph.fresh_id()

    @staticmethod
    def made_since(mark: tuple[Graph, int]) -> list[Node]:
        graph, first = mark
        return [graph.node(i) for i in range(first, graph.fresh_id()) if i in graph]

    # ------------------------------------------------------------------ inputs
    def add_input(self, name: str, ttype: TensorType, span: Span, **attrs: Any) -> Tensor:
        """An input node named `name` (already claimed from the namer)."""
        node = self.graph.add("input", name, attrs={"name": name, **attrs}, outputs=[ttype], span=span)
        return Tensor(node.ref(), ttype, span, node.name)

    def region_input(self, ttype: TensorType, index: int, count: int, span: Span) -> Arg:
        """Input `index` of `count` of a nested graph: `x`, or `x0`, `x1`, ..."""
        name = "x" if count == 1 else f"x{index}"
        self.namer.claim(name)
        return Arg(self.add_input(name, ttype, span), None, span)

    # ------------------------------------------------------------------ op nodes
    def add_op(self, op: Op, tensors: list[Tensor], attrs, hints, span: Span, alias, frame: Frame,
               labels: list[str | None] | None = None, at: Span | None = None, regions=None,
               base: str | None = None):
        """Add one node. `labels` name the inputs as written (for notes); `at` is where a
        mistake is pointed at (an operator), when not the whole call; `base` names an unnamed
        node instead of the op's name (`pretrained` for a `pretrained_module`)."""
        types = [t.type for t in tensors]
        ctx = InferContext(hints=hints, modalities=self.modalities, lookup=self.graph.by_name,
                           regions=regions or [])
        try:
            attrs = op.resolve(ctx, types, attrs)
            outputs = op.infer(ctx, types, attrs)
            params = op.params(ctx, types, attrs)
        except OpError as err:
            raise self._op_error(op, err, tensors, labels or [], at or span, span) from None
        name = self.node_name(base or op.name, alias, span, frame)
        shares = self.namer.owner_of(name) if params else None
        specs = _param_specs(params)
        if shares is not None:
            self._check_shared(op.name, name, specs, regions or [], shares, span)
        node = self.graph.add(op.name, name, attrs=attrs.model_dump(mode="json"),
                              inputs=[t.ref for t in tensors], outputs=list(outputs),
                              params=specs, shares=shares, span=span,
                              regions=regions or [])
        self._check_size(span)
        results = tuple(Tensor(node.ref(i), t, span, name) for i, t in enumerate(outputs))
        if alias:
            frame.env[alias] = results[0] if len(results) == 1 else results
        return results[0] if len(results) == 1 else results

    def _op_error(self, op: Op, err: OpError, tensors: list[Tensor], labels, at: Span,
                  whole: Span) -> NexusError:
        notes = []
        for i in err.about:
            if i < len(tensors) and tensors[i].span.line:
                label = labels[i] if i < len(labels) and labels[i] else self.source_text(tensors[i].span)
                notes.append(Note(f"{label} was made", tensors[i].span))
        message = err.message
        if message.startswith("shape mismatch") and op.name in ("add", "sub", "mul"):
            message = message.replace("shape mismatch", f"shape mismatch in `{self.source_text(whole)}`", 1)
        return NexusError.at(at, message, *notes)

    def _check_shared(self, op: str, name: str, specs: dict[str, ParamSpec], regions: list[Graph],
                      owner_name: str, span: Span) -> None:
        """In `repeat N shared`, step i runs with the parameters step 0 made for the node of the
        same name: that node must exist and hold the same parameters (a step that takes another
        branch of an `if`, or sees other sizes, cannot share them)."""
        owner = self.graph.by_name(owner_name)
        why = "`repeat ... shared` runs every step with the parameters of the first"
        if owner is None or owner.op != op:
            raise NexusError.at(span, f"{why}, but `{name}` would use those of `{owner_name}`, "
                                "which the first step did not make; drop `shared`, or make the "
                                "same parameters at every step")
        if owner.params != specs:
            differ = f"needs {_shapes(specs)} where `{owner_name}` has {_shapes(owner.params)}"
        elif _layout(owner.regions) != _layout(regions):
            differ = f"holds other parameters in its nested graphs than `{owner_name}`"
        else:
            return
        notes = [Note(f"{owner_name} was made", owner.span)] if owner.span != span else []
        raise NexusError.at(span, f"{why}, but `{name}` {differ}; drop `shared`, or keep the "
                            "shapes the same at every step", *notes)

    def _check_size(self, span: Span) -> None:
        if len(self.graph) > MAX_NODES:
            raise NexusError.at(span, f"the model has more than {MAX_NODES} nodes")

    # ------------------------------------------------------------------ names
    def node_name(self, base: str, alias: str | None, span: Span, frame: Frame) -> str:
        """The next free name after `base` in the frame's scope, or the `as` name as written."""
        if alias is None:
            return self.namer.fresh(frame, base)
        name = frame.qualify(alias)
        if taken_by_torch(alias, frame.prefix):
            raise NexusError.at(span, f"`{alias}` cannot name a node: the compiled model is a "
                                "torch module, which uses that name itself; choose another")
        if not self.namer.claim(name):
            raise NexusError.at(span, f"the name `{alias}` is already used in this scope")
        return name

    def source_text(self, span: Span) -> str:
        """The text of a one-line span, as written (for messages that quote the code)."""
        lines = self.sources.get(span.file, "").splitlines()
        if span.line and span.line == span.end_line and span.line <= len(lines):
            return lines[span.line - 1][span.col - 1: span.end_col - 1]
        return "expression"

    # ------------------------------------------------------------------ modalities
    def register_modality(self, value: Modality) -> None:
        """Modal codes tell tokens apart after `concat`: two modalities may not share one."""
        for other in self.modalities.values():
            if other.code == value.spec.code and other.name != value.name:
                raise NexusError.at(value.span, f"modalities {other.name} and {value.name} both have "
                                    f"code {other.code}; modal codes must be unique")
        self.modalities[value.name] = value.spec


def _layout(regions: list[Graph]) -> list:
    """The parameters of nested graphs (experts, bodies), node by node."""
    return [[(n.name, n.params, _layout(n.regions)) for n in g.nodes()] for g in regions]


def _shapes(specs: dict[str, ParamSpec]) -> str:
    """`weight [16, 8], bias [16]`"""
    return ", ".join(f"{k} {list(v.shape)}" for k, v in specs.items()) or "no parameters"


def _param_specs(params) -> dict[str, ParamSpec]:
    return {k: v if isinstance(v, ParamSpec) else ParamSpec(**v) for k, v in params.items()}
