"""Statement execution. Each AST statement class has one rule in `Statements.rules`; adding
a statement kind is one method and one entry there.

A statement that fails reports its diagnostic and *poisons* the names it would have bound, so
later uses are skipped silently: one mistake, one message (docs/language.md, "Diagnostics").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexusdsl.elaborate.block_calls import CallStack
from nexusdsl.elaborate.core import Core, int_of
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import Names, suggest
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.observer import Observer
from nexusdsl.elaborate.recursion import assigned_names, build_recurrence
from nexusdsl.elaborate.shapes import declared_type
from nexusdsl.elaborate.unused import UntakenBranches
from nexusdsl.elaborate.values import (
    POISON,
    ExpertSet,
    Modality,
    OptionCall,
    Partial,
    Poison,
    Returned,
    Skip,
    Symbol,
    Tensor,
    describe,
)
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note
from nexusdsl.ops.base import Op

MAX_REPEAT = 10_000


def bound_names(stmt: ast.Stmt) -> tuple[str, ...]:
    """The local names a statement binds: `a, b = ...`, `let n`, `input x`, `output y`,
    `experts e`. (`call as name` binds too, inside the expression.)"""
    targets = getattr(stmt, "targets", ())
    if targets:
        return tuple(targets)
    name = getattr(stmt, "name", None)
    return (name,) if name else ()


class Statements:
    def __init__(self, core: Core, names: Names, nodes: NodeWriter, stack: CallStack,
                 sink: DiagnosticSink, observer: Observer | None):
        self.core = core
        self.names = names
        self.nodes = nodes
        self.stack = stack
        self.sink = sink
        self.observer = observer
        self.rules: dict[type, Callable[[Any, Frame], None]] = {
            ast.Assign: self._assign,
            ast.Let: self._let,
            ast.Experts: self._experts,
            ast.Input: self._input,
            ast.Output: self._output,
            ast.Return: self._return,
            ast.Repeat: self._repeat,
            ast.If: self._if,
        }
        self.untaken = UntakenBranches()  # read as written once the model is elaborated
        self._later_steps = 0  # > 0 while a repeat runs a step after its first

    def run_body(self, body, frame: Frame) -> bool:
        """Run statements until one returns; False when any of them reported a mistake."""
        reported = len(self.sink.diagnostics)
        for stmt in body:
            try:
                self.run(stmt, frame)
            except Skip:  # it uses a name an earlier mistake left without a value
                self._report_unknown_operands(stmt, frame)
                self._poison(stmt, frame)
            except NexusError as err:
                self._report(self.stack.annotate(err))
                self._poison(stmt, frame)
            if frame.returned is not None:
                break
        return len(self.sink.diagnostics) == reported

    def _report(self, err: NexusError) -> None:
        """In a later step of a `repeat`, a mistake where an earlier step already reported one
        is not reported again: with `as i` the message may differ (`index 3`, then `index 4`),
        but it is one mistake in the file."""
        if self._later_steps:
            known = {d.span for d in self.sink.diagnostics}
            err = NexusError([d for d in err.diagnostics if d.span not in known], err.sources)
        self.sink.add(err)

    def run(self, stmt: ast.Stmt, frame: Frame) -> None:
        rule = self.rules.get(type(stmt))
        if rule is None:
            raise TypeError(f"no rule for the statement {type(stmt).__name__}")
        rule(stmt, frame)
        if self.observer is not None:
            self.observer.on_statement(stmt, frame.env)

    def _report_unknown_operands(self, stmt, frame: Frame) -> None:
        """A statement skipped because of an earlier mistake can hold an independent one: a
        tensor operand (of `+ - *`, a pipe, or a call's first argument) that names nothing.
        Those are reported; anything that needs the missing value is not."""
        values = [getattr(stmt, "value", None), *getattr(stmt, "values", ())]
        for expr in values:
            for name in _tensor_operands(expr):
                if not self.names.is_known(name.id, frame, name.span):
                    self.sink.add(NexusError.at(name.span, f"unknown name `{name.id}`"
                                                + suggest(name.id, frame)))

    @staticmethod
    def _poison(stmt, frame: Frame) -> None:
        names = assigned_names((stmt,)) if isinstance(stmt, ast.If) else bound_names(stmt)
        for name in names:  # an `if` whose condition failed: what either branch would bind
            frame.env[name] = POISON

    # ------------------------------------------------------------------ rules
    def _assign(self, stmt: ast.Assign, frame: Frame) -> None:
        value = self.core.eval(stmt.value, frame)
        if len(stmt.targets) == 1:
            frame.env[stmt.targets[0]] = value
            return
        if not isinstance(value, tuple) or len(value) != len(stmt.targets):
            count = len(value) if isinstance(value, tuple) else 1
            raise NexusError.at(stmt.span, f"{len(stmt.targets)} names on the left but the "
                                f"right side gives {count} value{'s' if count != 1 else ''}")
        frame.env.update(zip(stmt.targets, value))

    def _let(self, stmt: ast.Let, frame: Frame) -> None:
        frame.env[stmt.name] = self.core.eval(stmt.value, frame)

    def _experts(self, stmt: ast.Experts, frame: Frame) -> None:
        value = self.core.eval(stmt.value, frame)
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

    def _input(self, stmt: ast.Input, frame: Frame) -> None:
        if not frame.is_model:
            raise NexusError.at(stmt.span, "`input` belongs in a model; blocks take tensor parameters")
        dtype, modality = self._input_kind(stmt.type, frame)
        ttype = declared_type(stmt.type, dtype, modality, frame.axes,
                              lambda e: int_of(self.core, e, frame, "an axis size"))
        for name in frame.axes.axes:
            frame.env.setdefault(name, frame.axes.value(name))
        if not self.nodes.namer.claim(stmt.name):
            raise NexusError.at(stmt.span, f"the name `{stmt.name}` is already used")
        vocab = self.nodes.modalities[modality].vocab if modality is not None else None
        extra = {"vocab": vocab} if vocab else {}  # ids must stay below it
        if stmt.default is not None:
            extra["default"] = self._input_default(stmt, dtype, frame)
        frame.env[stmt.name] = self.nodes.add_input(stmt.name, ttype, stmt.span, **extra)

    def _input_default(self, stmt: ast.Input, dtype: str, frame: Frame):
        """`= value` after an input's type: the value every element has when the caller
        leaves the input out (`input mask: bool[B, T] = true`)."""
        value = self.core.eval(stmt.default, frame)
        fits = {"bool": isinstance(value, bool),
                "i64": isinstance(value, int) and not isinstance(value, bool),
                "f32": isinstance(value, (int, float)) and not isinstance(value, bool)}
        if not fits.get(dtype, False):
            kind = {"bool": "true or false", "i64": "an integer", "f32": "a number"}.get(dtype)
            raise NexusError.at(stmt.default.span, f"the default of input `{stmt.name}` must be "
                                f"{kind or 'a plain value'} (every element of the input takes it), "
                                f"got {describe(value)}")
        return float(value) if dtype == "f32" else value

    def _input_kind(self, texpr: ast.TensorTypeExpr, frame: Frame) -> tuple[str, str | None]:
        kind = texpr.kind
        if kind in (None, "float"):
            return "f32", None
        if kind == "int":
            return "i64", None
        if kind == "bool":
            return "bool", None
        value = self.names.lookup(kind, texpr.span, frame)
        if not isinstance(value, Modality):
            raise NexusError.at(texpr.span, f"`{kind}` is not a modality; an input is written "
                                "`text[B, T]` (a modality), `float[B, D]`, `int[B, T]` or `bool[B, T]`")
        self.nodes.register_modality(value)
        return ("i64" if value.spec.discrete else "f32"), value.name

    def _output(self, stmt: ast.Output, frame: Frame) -> None:
        if not frame.is_model:
            raise NexusError.at(stmt.span, "`output` belongs in a model; blocks use `return`")
        expr = stmt.value or ast.Name(stmt.span, stmt.name)
        value = self.core.eval(expr, frame)
        if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
            names = ", ".join(f"{stmt.name}_{i}" for i in range(len(value)))
            raise NexusError.at(stmt.span, f"output `{stmt.name}` must be one tensor, but its value "
                                f"holds {len(value)} ({', '.join(str(v.type) for v in value)}); "
                                f"name each: `output {names} = ...`",
                                *(Note(f"result {i} was made", v.span) for i, v in enumerate(value)))
        if isinstance(value, Symbol):  # a name bound nowhere (or only in a branch not taken)
            raise NexusError.at(value.span, f"unknown name `{value.name}`" + suggest(value.name, frame))
        if not isinstance(value, Tensor):
            raise NexusError.at(stmt.span, f"output `{stmt.name}` must be a tensor, got {describe(value)}")
        outputs = self.nodes.graph.outputs
        if stmt.name in outputs:
            raise NexusError.at(stmt.span, f"output `{stmt.name}` is defined twice")
        outputs[stmt.name] = value.ref
        frame.env.setdefault(stmt.name, value)

    def _return(self, stmt: ast.Return, frame: Frame) -> None:
        if frame.is_model:
            raise NexusError.at(stmt.span, "a model gives its results with `output name = ...`")
        frame.returned = Returned([self.core.eval(v, frame) for v in stmt.values], stmt.span)

    def _repeat(self, stmt: ast.Repeat, frame: Frame) -> None:
        count = int_of(self.core, stmt.count, frame, "a repeat count")
        if not 0 <= count <= MAX_REPEAT:
            raise NexusError.at(stmt.count.span, f"a repeat count must be between 0 and {MAX_REPEAT}, got {count}")
        if stmt.var is not None:
            self._check_loop_variable(stmt, frame)
        if stmt.reversible:  # one nested body graph run `count` times (recursion.py)
            build_recurrence(self.nodes, self.core, stmt, frame, count)
            return
        scope_name = self.nodes.namer.fresh(frame, "blocks")
        outer = frame.prefix
        try:
            for i in range(count):
                self._step(stmt, frame, scope_name, i)
                if frame.returned is not None:
                    break
        finally:
            frame.prefix = outer
            if stmt.var is not None:  # the index belongs to the body: a later loop may reuse it
                frame.env.pop(stmt.var, None)

    def _step(self, stmt: ast.Repeat, frame: Frame, scope_name: str, i: int) -> None:
        """Step i of an unrolled repeat, named `blocks.i`; with `shared`, its nodes use the
        parameters of step 0's nodes of the same names."""
        namer = self.nodes.namer
        frame.prefix = f"{scope_name}.{i}"
        namer.claim(frame.prefix)
        if stmt.var is not None:
            frame.env[stmt.var] = i
        self._later_steps += i > 0
        try:
            if stmt.shared:
                with namer.sharing(frame.prefix, f"{scope_name}.0"):
                    self.run_body(stmt.body, frame)
            else:
                self.run_body(stmt.body, frame)
        finally:
            self._later_steps -= i > 0

    def _check_loop_variable(self, stmt: ast.Repeat, frame: Frame) -> None:
        """`as i` names a new integer for the body; hiding a name already in use would make
        the body read something else than the rest of the file under that name."""
        name = stmt.var
        if isinstance(frame.env.get(name), Poison):
            raise Skip()
        if not self.names.is_known(name, frame, stmt.var_span):
            return
        if name in frame.env:  # not its value: an enclosing loop's index differs step by step
            what = "a tensor" if isinstance(frame.env[name], Tensor) else "a hyperparameter"
        else:
            value = self.names.lookup(name, stmt.var_span, frame)
            what = (f"the {'op' if isinstance(value.target, Op) else 'block'} {name}"
                    if isinstance(value, Partial) else describe(value))
        raise NexusError.at(stmt.var_span, f"`as {name}` would hide `{name}`, which already "
                            f"names {what} here; choose another name for the iteration index")

    def _if(self, stmt: ast.If, frame: Frame) -> None:
        """Only the taken branch is elaborated, in this frame: what it binds is visible after
        the `if`, and its nodes are named as if its statements were written in place."""
        branch = stmt.body if self.core.decide(stmt.cond, frame) else stmt.orelse
        self.untaken.record(stmt, branch, frame.scope, frame.env)
        self.run_body(branch, frame)


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
