"""Elaboration proper: runs a model's statements, instantiating blocks and ops into IR nodes.

The work is split into parts that see each other only through `core.Core` (evaluate, apply,
run a body) and the few services they are given:

- `nodes.NodeWriter`: the graph being built, node names, modalities;
- `names.Names`: what a name means; suggestions for unknown ones;
- `expressions.Expressions`: expressions, one rule per AST class;
- `statements.Statements`: statements, one rule per AST class, with error recovery;
- `calls.Calls`: applying a value, to `op_calls.OpCalls` or `block_calls.BlockCalls`;
- `experts.Experts`, `agents.Agents`, `routes.Routes`, `recursion`: nested graphs.

`Elaborator` builds and wires them, and implements `Core` by handing each request to its
part. An `observer.Observer` may watch (the language server does).
"""

from __future__ import annotations

from typing import Any

from nexusdsl.elaborate.agents import Agents
from nexusdsl.elaborate.block_calls import BlockCalls, CallStack
from nexusdsl.elaborate.calls import Calls
from nexusdsl.elaborate.evaluate import is_number
from nexusdsl.elaborate.experts import Experts
from nexusdsl.elaborate.expressions import Expressions
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.modules import FileScope
from nexusdsl.elaborate.names import BUILTINS, Names
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.observer import Observer
from nexusdsl.elaborate.op_calls import OpCalls
from nexusdsl.elaborate.routes import Routes
from nexusdsl.elaborate.shapes import AxisBindings
from nexusdsl.elaborate.statements import Statements
from nexusdsl.elaborate.values import Arg, Modality, OptionCall, Symbol
from nexusdsl.ir.graph import Graph
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Span


class Elaborator:
    def __init__(self, scope: FileScope, sink: DiagnosticSink, sources: dict[str, str],
                 observer: Observer | None = None):
        self.root = scope
        self.sink = sink
        self.nodes = NodeWriter(sources)
        self.names = Names(self.eval)
        stack = CallStack()
        experts, agents = Experts(self.nodes, self, scope), Agents(self.nodes, self, scope)
        self.ops = OpCalls(self.nodes, experts, agents)
        self.calls = Calls(self.ops, BlockCalls(self.nodes, self.names, stack, self), self.nodes,
                           observer)
        self.expressions = Expressions(self, self.names, self.ops,
                                       Routes(self.nodes, self.names, self), self.nodes, observer)
        self.statements = Statements(self, self.names, self.nodes, stack, sink, observer)

    # ------------------------------------------------------------------ Core
    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        return self.expressions.eval(expr, frame)

    def apply(self, func, args: list[Arg], kwargs, span: Span, alias: str | None, frame: Frame):
        return self.calls.apply(func, args, kwargs, span, alias, frame)

    def run_body(self, body, frame: Frame) -> bool:
        return self.statements.run_body(body, frame)

    def decide(self, expr: ast.Expr, frame: Frame) -> bool:
        return self.expressions.condition(expr, frame)

    # ------------------------------------------------------------------ models
    def build_model(self, model: ast.Model, overrides: dict[str, Any]) -> Graph:
        graph = self.nodes.start(model.name)
        frame = Frame(self.root, "", is_model=True)
        frame.axes = AxisBindings(lambda n: self.names.known_size(n, frame))
        self._bind_model_hypers(model, frame, overrides)
        graph.hyper = {k: v for k, v in frame.env.items() if is_number(v) or isinstance(v, str)}
        clean = self.run_body(model.body, frame)
        for error in self.statements.untaken.mistakes(BUILTINS):  # `if` branches never taken
            self.sink.add(error)
        if not graph.outputs and clean:
            raise NexusError.at(model.span, f"model {model.name} has no `output`")
        return graph

    def _bind_model_hypers(self, model: ast.Model, frame: Frame, overrides: dict[str, Any]) -> None:
        names = [p.name for p in model.params]
        for key in overrides:
            if key not in names:
                have = ", ".join(names) or "none"
                raise NexusError.at(model.span, f"model {model.name} has no hyperparameter `{key}` "
                                    f"(it has {have})")
        for p in model.params:
            if p.type is not None:
                raise NexusError.at(p.span, "model parameters are hyperparameters; "
                                    "declare tensors with `input`")
            if p.name in overrides:
                frame.env[p.name] = overrides[p.name]
            elif p.default is None:
                raise NexusError.at(p.span, f"hyperparameter `{p.name}` has no default; "
                                    f"give it with --set {p.name}=...")
            else:
                frame.env[p.name] = self.eval(p.default, frame)

    # ------------------------------------------------------------------ file-level values
    def definition_value(self, scope: FileScope, item: ast.Stmt, span: Span):
        """The value of a file's definition: a block, a `let` constant, a modality."""
        return self.names.definition_value(scope, item, span)

    def register_modality(self, value: Modality) -> None:
        self.nodes.register_modality(value)

    # ------------------------------------------------------------------ train sections
    def train_fields(self, train: ast.Train) -> dict[str, tuple[Any, Span]]:
        """A train section's fields as plain values (numbers, strings, lists, and calls such as
        `adamw(lr = 3e-4)` as {"fn", "args", "kwargs"}), each with its source span."""
        frame = Frame(self.root, "")
        fields: dict[str, tuple[Any, Span]] = {}
        for f in train.fields:
            if f.name in fields:
                raise NexusError.at(f.span, f"`{f.name}` is set twice in `train {train.model}`")
            value = self._setting(f.value, frame)
            fields[f.name] = (self.ops.to_plain(Arg(value, f.value, f.span)), f.span)
        return fields

    def _setting(self, expr: ast.Expr, frame: Frame):
        """Evaluate a setting: a call of any name is a configuration call, not an op."""
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
            args = tuple(self._setting(a, frame) for a in expr.args)
            kwargs = {k.name: self._setting(k.value, frame) for k in expr.kwargs}
            return OptionCall(expr.func.id, args, kwargs, expr.span)
        if isinstance(expr, ast.ListExpr):
            return [self._setting(i, frame) for i in expr.items]
        if isinstance(expr, ast.Name):
            value = self.names.lookup(expr.id, expr.span, frame)
            return value if isinstance(value, (int, float, str, list)) else Symbol(expr.id, expr.span)
        return self.eval(expr, frame)
