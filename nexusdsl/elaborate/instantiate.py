"""Elaboration proper: runs a model's statements, instantiating blocks and ops into IR nodes.

Expressions evaluate to values (`values.py`); calls of ops create nodes whose shapes the op's
rule infers; calls of blocks open a new `Frame`. A statement that fails records its diagnostic
and poisons the names it would have bound, so independent mistakes are all reported once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nexusdsl.elaborate import calls
from nexusdsl.elaborate.evaluate import arithmetic, as_int, is_number, negate
from nexusdsl.elaborate.experts import ExpertsMixin
from nexusdsl.elaborate.frame import Frame, Namer
from nexusdsl.elaborate.modules import MODALITY_KINDS, OPTION_FUNCTIONS, FileScope, lookup_global
from nexusdsl.elaborate.recursion import build_recurrence
from nexusdsl.elaborate.shapes import AxisBindings, declared_type
from nexusdsl.elaborate.values import (
    POISON,
    Arg,
    BlockRef,
    ExpertSet,
    Modality,
    Namespace,
    OptionCall,
    Partial,
    Poison,
    Returned,
    Skip,
    Symbol,
    Tensor,
    describe,
)
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.types import ModalitySpec
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note, Span
from nexusdsl.ops import REGISTRY

MAX_REPEAT = 10_000


class Builder(calls.CallsMixin, ExpertsMixin):
    def __init__(self, scope: FileScope, sink: DiagnosticSink, sources: dict[str, str]):
        self.root = scope
        self.sink = sink
        self.sources = sources
        self.graph = Graph()
        self.namer = Namer()
        self.modalities: dict[str, ModalitySpec] = {}
        self.calls: list[tuple[str, Span]] = []  # the block calls being elaborated
        self._evaluating: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ models
    def build_model(self, model: ast.Model, overrides: dict[str, Any]) -> Graph:
        self.graph = Graph(model.name)
        frame = Frame(self.root, "", is_model=True)
        frame.axes = AxisBindings(lambda n: self.known_size(n, frame))
        self._bind_model_hypers(model, frame, overrides)
        self.graph.hyper = {k: v for k, v in frame.env.items() if is_number(v) or isinstance(v, str)}
        self.run_body(model.body, frame)
        if not self.graph.outputs and not self.sink.diagnostics:
            raise NexusError.at(model.span, f"model {model.name} has no `output`")
        return self.graph

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

    # ------------------------------------------------------------------ statements
    def run_body(self, body, frame: Frame) -> None:
        for stmt in body:
            try:
                self.run(stmt, frame)
            except Skip:  # it uses a name an earlier mistake left without a value
                self._report_unknown_operands(stmt, frame)
                self._poison(stmt, frame)
            except NexusError as err:
                self.sink.add(self._with_call_stack(err))
                self._poison(stmt, frame)
            if frame.returned is not None:
                return

    def _with_call_stack(self, err: NexusError) -> NexusError:
        """Inside a block, say where the block was called from (innermost call first)."""
        if not self.calls:
            return err
        runs: list[list] = []  # a block calling itself: one note with a count, not 64
        for name, span in reversed(self.calls):
            if runs and runs[-1][:2] == [name, span]:
                runs[-1][2] += 1
            else:
                runs.append([name, span, 1])
        notes = tuple(Note(f"in block {name} called" + (f" ({n} times in a row)" if n > 1 else ""),
                           span) for name, span, n in runs)
        return NexusError([replace(d, notes=d.notes + notes) for d in err.diagnostics], err.sources)

    def _report_unknown_operands(self, stmt, frame: Frame) -> None:
        """A statement skipped because of an earlier mistake can hold an independent one: a
        tensor operand (of `+ - *`, a pipe, or a call's first argument) that names nothing.
        Those are reported; anything that needs the missing value is not."""
        values = [getattr(stmt, "value", None), *getattr(stmt, "values", ())]
        for expr in values:
            for name in _tensor_operands(expr):
                try:
                    known = name.id in frame.env or lookup_global(
                        frame.scope, name.id, name.span, _BUILTINS) is not None
                except NexusError:
                    known = True  # an ambiguous import: reported where it is resolved
                if known:
                    continue
                self.sink.add(NexusError.at(name.span, f"unknown name `{name.id}`"
                                            + self._suggest(name.id, frame)))

    def _poison(self, stmt, frame: Frame) -> None:
        for name in getattr(stmt, "targets", ()) or (getattr(stmt, "name", None),):
            if name:
                frame.env[name] = POISON

    def run(self, stmt: ast.Stmt, frame: Frame) -> None:
        handler = getattr(self, "stmt_" + type(stmt).__name__.lower())
        handler(stmt, frame)

    def stmt_assign(self, stmt: ast.Assign, frame: Frame) -> None:
        value = self.eval(stmt.value, frame)
        if len(stmt.targets) == 1:
            frame.env[stmt.targets[0]] = value
            return
        if not isinstance(value, tuple) or len(value) != len(stmt.targets):
            count = len(value) if isinstance(value, tuple) else 1
            raise NexusError.at(stmt.span, f"{len(stmt.targets)} names on the left but the "
                                f"right side gives {count} value{'s' if count != 1 else ''}")
        frame.env.update(zip(stmt.targets, value))

    def stmt_let(self, stmt: ast.Let, frame: Frame) -> None:
        frame.env[stmt.name] = self.eval(stmt.value, frame)

    def stmt_experts(self, stmt: ast.Experts, frame: Frame) -> None:
        value = self.eval(stmt.value, frame)
        if isinstance(value, list):
            value = ExpertSet(value, stmt.span)
        if not isinstance(value, ExpertSet):
            raise NexusError.at(stmt.span, f"`experts {stmt.name}` needs `N of block(...)` or a "
                                f"list of blocks, got {describe(value)}")
        for member in value.members:
            if not isinstance(member, (Partial, OptionCall)):
                raise NexusError.at(stmt.span, f"an expert must be a block or op, got {describe(member)}")
        value.name = stmt.name
        frame.env[stmt.name] = value

    def stmt_input(self, stmt: ast.Input, frame: Frame) -> None:
        if not frame.is_model:
            raise NexusError.at(stmt.span, "`input` belongs in a model; blocks take tensor parameters")
        dtype, modality = self._input_kind(stmt.type, frame)
        ttype = declared_type(stmt.type, dtype, modality, frame.axes, lambda e: self.int_of(e, frame, "an axis size"))
        for name in frame.axes.axes:
            frame.env.setdefault(name, frame.axes.value(name))
        if not self.namer.claim(stmt.name):
            raise NexusError.at(stmt.span, f"the name `{stmt.name}` is already used")
        attrs = {"name": stmt.name}
        if modality is not None and self.modalities[modality].vocab:
            attrs["vocab"] = self.modalities[modality].vocab  # ids must stay below it
        node = self.graph.add("input", stmt.name, attrs=attrs, outputs=[ttype], span=stmt.span)
        frame.env[stmt.name] = Tensor(node.ref(), ttype, stmt.span, node.name)

    def _input_kind(self, texpr: ast.TensorTypeExpr, frame: Frame) -> tuple[str, str | None]:
        kind = texpr.kind
        if kind in (None, "float"):
            return "f32", None
        if kind == "int":
            return "i64", None
        value = self.lookup(kind, texpr.span, frame)
        if not isinstance(value, Modality):
            raise NexusError.at(texpr.span, f"`{kind}` is not a modality; an input is written "
                                "`text[B, T]` (a modality), `float[B, D]` or `int[B, T]`")
        self.register_modality(value)
        return ("i64" if value.spec.discrete else "f32"), value.name

    def register_modality(self, value: Modality) -> None:
        """Modal codes tell tokens apart after `concat`: two modalities may not share one."""
        for other in self.modalities.values():
            if other.code == value.spec.code and other.name != value.name:
                raise NexusError.at(value.span, f"modalities {other.name} and {value.name} both have "
                                    f"code {other.code}; modal codes must be unique")
        self.modalities[value.name] = value.spec

    def stmt_output(self, stmt: ast.Output, frame: Frame) -> None:
        if not frame.is_model:
            raise NexusError.at(stmt.span, "`output` belongs in a model; blocks use `return`")
        expr = stmt.value or ast.Name(stmt.span, stmt.name)
        value = self.eval(expr, frame)
        if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
            names = ", ".join(f"{stmt.name}_{i}" for i in range(len(value)))
            raise NexusError.at(stmt.span, f"output `{stmt.name}` must be one tensor, but its value "
                                f"holds {len(value)} ({', '.join(str(v.type) for v in value)}); "
                                f"name each: `output {names} = ...`",
                                *(Note(f"result {i} was made", v.span) for i, v in enumerate(value)))
        if not isinstance(value, Tensor):
            raise NexusError.at(stmt.span, f"output `{stmt.name}` must be a tensor, got {describe(value)}")
        if stmt.name in self.graph.outputs:
            raise NexusError.at(stmt.span, f"output `{stmt.name}` is defined twice")
        self.graph.outputs[stmt.name] = value.ref
        frame.env.setdefault(stmt.name, value)

    def stmt_return(self, stmt: ast.Return, frame: Frame) -> None:
        if frame.is_model:
            raise NexusError.at(stmt.span, "a model gives its results with `output name = ...`")
        frame.returned = Returned([self.eval(v, frame) for v in stmt.values], stmt.span)

    def stmt_repeat(self, stmt: ast.Repeat, frame: Frame) -> None:
        count = self.int_of(stmt.count, frame, "a repeat count")
        if not 0 <= count <= MAX_REPEAT:
            raise NexusError.at(stmt.count.span, f"a repeat count must be between 0 and {MAX_REPEAT}, got {count}")
        if stmt.reversible:  # one nested body graph run `count` times (recursion.py)
            build_recurrence(self, stmt, frame, count)
            return
        scope_name = self.namer.fresh(frame, "blocks")
        outer = frame.prefix
        try:
            for i in range(count):
                frame.prefix = f"{scope_name}.{i}"
                self.namer.claim(frame.prefix)
                if stmt.shared:
                    with self.namer.sharing(frame.prefix, f"{scope_name}.0"):
                        self.run_body(stmt.body, frame)
                else:
                    self.run_body(stmt.body, frame)
                if frame.returned is not None:
                    break
        finally:
            frame.prefix = outer

    # ------------------------------------------------------------------ expressions
    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        value = getattr(self, "expr_" + type(expr).__name__.lower())(expr, frame)
        if isinstance(value, Poison):
            raise Skip()
        return value

    def expr_int(self, e, frame):
        return e.value

    expr_float = expr_str = expr_bool = expr_int

    def expr_listexpr(self, e, frame):
        return [self.eval(i, frame) for i in e.items]

    def expr_tupleexpr(self, e, frame):
        return tuple(self.eval(i, frame) for i in e.items)

    def expr_name(self, e: ast.Name, frame: Frame):
        return self.lookup(e.id, e.span, frame)

    def expr_attribute(self, e: ast.Attribute, frame: Frame):
        base = self._module_named(e.value, frame) or self.eval(e.value, frame)
        if isinstance(base, Symbol):
            raise NexusError.at(e.value.span, f"unknown name `{base.name}`; a module is used after "
                                f"`import std.{base.name}` or `import \"file.nx\" as {base.name}`")
        if not isinstance(base, Namespace):
            raise NexusError.at(e.span, f"{describe(base)} has no attributes")
        if e.attr not in base.scope.defs:
            raise NexusError.at(e.span, f"module {base.name} has no `{e.attr}`")
        return self.definition_value(base.scope, base.scope.defs[e.attr], e.span)

    @staticmethod
    def _module_named(e: ast.Expr, frame: Frame) -> Namespace | None:
        """`hyena` in `hyena.block` is the imported module even where the name alone is the
        builtin op; a local value or the file's own definition of that name comes first."""
        if not isinstance(e, ast.Name) or e.id in frame.env or e.id in frame.scope.defs:
            return None
        scope = frame.scope.namespace(e.id)
        return Namespace(e.id, scope) if scope is not None else None

    def expr_unaryop(self, e: ast.UnaryOp, frame: Frame):
        value = self.eval(e.operand, frame)
        if e.op == "+":
            return value
        if isinstance(value, Tensor):
            return self.tensor_arith("*", value, -1.0, e, frame)
        return negate(value, e.span)

    def expr_binop(self, e: ast.BinOp, frame: Frame):
        left, right = self.eval(e.left, frame), self.eval(e.right, frame)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            return self.tensor_arith(e.op, left, right, e, frame)
        return arithmetic(e.op, left, right, e.span)

    def expr_of(self, e: ast.Of, frame: Frame):
        count = self.int_of(e.count, frame, "an expert count")
        if not 1 <= count <= 4096:
            raise NexusError.at(e.count.span, f"an expert count must be between 1 and 4096, got {count}")
        template = self.eval(e.template, frame)
        if not isinstance(template, Partial):
            raise NexusError.at(e.template.span, f"`of` needs a block or op to copy, got {describe(template)}")
        return ExpertSet([template] * count, e.span)

    def expr_pipe(self, e: ast.Pipe, frame: Frame):
        value = self.eval(e.value, frame)
        func = self.eval(e.func, frame)
        return self.apply(func, [Arg(value, e.value, e.value.span)], [], e.span, None, frame)

    def expr_call(self, e: ast.Call, frame: Frame):
        func = self.eval(e.func, frame)
        args = [Arg(self.eval(a, frame), a, a.span) for a in e.args]
        kwargs = [(k.name, Arg(self.eval(k.value, frame), k.value, k.span)) for k in e.kwargs]
        return self.apply(func, args, kwargs, e.span, e.alias, frame)

    def expr_route(self, e: ast.Route, frame: Frame):
        return self.route_expr(e, frame)  # experts.py

    # ------------------------------------------------------------------ names
    def known_size(self, name: str, frame: Frame):
        """What a name in a shape is bound to beforehand: a hyperparameter, or a file's `let`
        constant (`let width = 32` makes `float[B, width]` a fixed axis named width)."""
        if name in frame.env:
            return frame.env[name]
        item = frame.scope.defs.get(name)
        if isinstance(item, ast.Let):
            return self.definition_value(frame.scope, item, item.span)
        return None

    def lookup(self, name: str, span: Span, frame: Frame):
        if name in frame.env:
            value = frame.env[name]
            if isinstance(value, Poison):
                raise Skip()
            return value
        found = lookup_global(frame.scope, name, span, _BUILTINS)
        if found is None:
            return Symbol(name, span)
        kind, what = found
        if kind == "namespace":
            return Namespace(name, what)
        if kind == "builtin":
            return Partial(REGISTRY[name]) if name in REGISTRY else _OptionFunction(name)
        scope, item = what
        return self.definition_value(scope, item, span)

    def definition_value(self, scope: FileScope, item: ast.Stmt, span: Span):
        if isinstance(item, ast.Block):
            return Partial(BlockRef(item.name, item, scope))
        if isinstance(item, ast.Let):
            return self._cached(scope, item, lambda: self.eval(item.value, Frame(scope, "")))
        if isinstance(item, ast.Modality):
            return self._cached(scope, item, lambda: self._modality(scope, item))
        raise NexusError.at(span, f"model {item.name} cannot be used inside another model; "
                            "write its body as a block")

    def _cached(self, scope: FileScope, item, compute):
        key = (scope.file, item.name)
        if item.name in scope.cache:
            return scope.cache[item.name]
        if key in self._evaluating:
            raise NexusError.at(item.span, f"`{item.name}` is defined in terms of itself")
        self._evaluating.add(key)
        try:
            scope.cache[item.name] = compute()
        finally:
            self._evaluating.discard(key)
        return scope.cache[item.name]

    def _modality(self, scope: FileScope, item: ast.Modality) -> Modality:
        from nexusdsl.elaborate.modality import modality_spec

        call = self.eval(item.value, Frame(scope, ""))
        return Modality(modality_spec(item, call), item.span)

    # ------------------------------------------------------------------ nested graphs
    def build_region(self, value, inputs: list, label: str, span: Span) -> Graph:
        """Elaborate `value` (a block or op waiting for its tensor inputs) on its own, on fresh
        inputs of the given types: the nested graph of an expert or of a loop body."""
        saved = self.graph, self.namer
        self.graph, self.namer = Graph(label), Namer()
        try:
            args = [self._region_input(t, i, len(inputs), span) for i, t in enumerate(inputs)]
            result = self.apply(value, args, [], span, None, Frame(self.root, ""))
            results = result if isinstance(result, tuple) else (result,)
            for i, r in enumerate(results):
                if not isinstance(r, Tensor):
                    raise NexusError.at(span, f"{label} must give tensors, got {describe(r)}")
                self.graph.outputs["out" if len(results) == 1 else f"out{i}"] = r.ref
            return self.graph
        finally:
            self.graph, self.namer = saved

    def _region_input(self, ttype, index: int, count: int, span: Span) -> Arg:
        name = "x" if count == 1 else f"x{index}"
        self.namer.claim(name)
        node = self.graph.add("input", name, attrs={"name": name}, outputs=[ttype], span=span)
        return Arg(Tensor(node.ref(), ttype, span, name), None, span)

    # ------------------------------------------------------------------ train sections
    def train_fields(self, train: ast.Train) -> dict[str, tuple[Any, Span]]:
        """A train section's fields as plain values (numbers, strings, lists, and calls such as
        `adamw(lr = 3e-4)` as {"fn", "args", "kwargs"}), each with its source span."""
        frame = Frame(self.root, "")
        fields: dict[str, tuple[Any, Span]] = {}
        for f in train.fields:
            if f.name in fields:
                raise NexusError.at(f.span, f"`{f.name}` is set twice in `train {train.model}`")
            fields[f.name] = (self.to_plain(Arg(self._setting(f.value, frame), f.value, f.span)), f.span)
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
            value = self.lookup(expr.id, expr.span, frame)
            return value if isinstance(value, (int, float, str, list)) else Symbol(expr.id, expr.span)
        return self.eval(expr, frame)

    # ------------------------------------------------------------------ helpers
    def int_of(self, expr: ast.Expr, frame: Frame, what: str) -> int:
        return as_int(self.eval(expr, frame), expr.span, what)

    def source_text(self, span: Span) -> str:
        lines = self.sources.get(span.file, "").splitlines()
        if span.line and span.line == span.end_line and span.line <= len(lines):
            return lines[span.line - 1][span.col - 1: span.end_col - 1]
        return "expression"

    def origin_note(self, tensor: Tensor, label: str) -> Note:
        return Note(f"{label} was made", tensor.span)


def _tensor_operands(expr) -> list[ast.Name]:
    """The bare names in tensor positions of an expression (see _report_unknown_operands)."""
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*"):
        found = [side for side in (expr.left, expr.right) if isinstance(side, ast.Name)]
        return found + _tensor_operands(expr.left) + _tensor_operands(expr.right)
    if isinstance(expr, ast.UnaryOp):
        return ([expr.operand] if isinstance(expr.operand, ast.Name) else []) + \
            _tensor_operands(expr.operand)
    if isinstance(expr, ast.Pipe):
        return ([expr.value] if isinstance(expr.value, ast.Name) else []) + \
            _tensor_operands(expr.value) + _tensor_operands(expr.func)
    if isinstance(expr, ast.Call):
        first = [expr.args[0]] if expr.args and isinstance(expr.args[0], ast.Name) else []
        return first + [n for a in expr.args for n in _tensor_operands(a)]
    return []


class _OptionFunction:
    """A configuration function such as `topk` before it is called."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, args: list[Arg], kwargs, span: Span) -> OptionCall:
        for a in [*args, *(v for _, v in kwargs)]:
            if isinstance(a.value, Tensor):
                raise NexusError.at(a.span, f"`{self.name}(...)` takes settings, not tensors")
        return OptionCall(self.name, tuple(a.value for a in args), {k: v.value for k, v in kwargs}, span)


class _Builtins:
    """Op names and configuration functions (the op registry is read when first needed)."""

    def __contains__(self, name: str) -> bool:
        return name in REGISTRY or name in OPTION_FUNCTIONS


_BUILTINS = _Builtins()
assert not set(MODALITY_KINDS) - OPTION_FUNCTIONS
