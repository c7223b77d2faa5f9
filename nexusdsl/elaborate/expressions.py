"""Expression evaluation: numbers, strings, lists and their items, names, module attributes,
arithmetic, comparisons and `and`/`or`/`not`, calls, pipes, `N of template` and `route`. Each
AST class has one rule in `Expressions.rules`; adding an expression kind is one method and one
entry there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexusdsl.elaborate.core import Core, int_of
from nexusdsl.elaborate.evaluate import arithmetic, compare, item, negate, truth, word_of
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import Names, suggest
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.observer import Observer
from nexusdsl.elaborate.op_calls import OpCalls
from nexusdsl.elaborate.pretrained_calls import is_pretrained
from nexusdsl.elaborate.routes import Routes
from nexusdsl.elaborate.values import (
    Arg,
    ExpertSet,
    Namespace,
    Partial,
    Poison,
    Skip,
    Symbol,
    Tensor,
    describe,
)
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note, Span

MAX_EXPERTS = 4096


class Expressions:
    def __init__(self, core: Core, names: Names, ops: OpCalls, routes: Routes, nodes: NodeWriter,
                 observer: Observer | None):
        self.core = core
        self.names = names
        self.ops = ops
        self.routes = routes
        self.nodes = nodes
        self.observer = observer
        self.rules: dict[type, Callable[[Any, Frame], Any]] = {
            ast.Int: self._literal,
            ast.Float: self._literal,
            ast.Str: self._literal,
            ast.Bool: self._literal,
            ast.ListExpr: self._list,
            ast.TupleExpr: self._tuple,
            ast.Name: self._name,
            ast.Attribute: self._attribute,
            ast.UnaryOp: self._unary,
            ast.BinOp: self._binary,
            ast.Compare: self._compare,
            ast.BoolOp: self._bool,
            ast.Index: self._index,
            ast.Of: self._of,
            ast.Pipe: self._pipe,
            ast.Call: self._call,
            ast.Route: self.routes.route,
        }

    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        if self.observer is None:
            return self._value(expr, frame)
        mark = self.nodes.mark()
        value = self._value(expr, frame)
        self.observer.on_value(expr, value, self.nodes.made_since(mark))
        return value

    def _value(self, expr: ast.Expr, frame: Frame) -> Any:
        rule = self.rules.get(type(expr))
        if rule is None:
            raise TypeError(f"no evaluation rule for {type(expr).__name__}")
        value = rule(expr, frame)
        if isinstance(value, Poison):
            raise Skip()
        return value

    # ------------------------------------------------------------------ rules
    @staticmethod
    def _literal(e: ast.Int | ast.Float | ast.Str | ast.Bool, frame: Frame):
        return e.value

    def _list(self, e: ast.ListExpr, frame: Frame):
        return [self.eval(i, frame) for i in e.items]

    def _tuple(self, e: ast.TupleExpr, frame: Frame):
        return tuple(self.eval(i, frame) for i in e.items)

    def _name(self, e: ast.Name, frame: Frame):
        return self.names.lookup(e.id, e.span, frame)

    def _attribute(self, e: ast.Attribute, frame: Frame):
        base = self.names.module_named(e.value, frame) or self.eval(e.value, frame)
        if isinstance(base, Symbol):
            raise NexusError.at(e.value.span, f"unknown name `{base.name}`; a module is used after "
                                f"`import std.{base.name}` or `import \"file.nx\" as {base.name}`")
        if not isinstance(base, Namespace):
            raise NexusError.at(e.span, f"{describe(base)} has no attributes")
        if e.attr not in base.scope.defs:
            raise NexusError.at(e.span, f"module {base.name} has no `{e.attr}`")
        return self.names.definition_value(base.scope, base.scope.defs[e.attr], e.span)

    def _unary(self, e: ast.UnaryOp, frame: Frame):
        value = self.eval(e.operand, frame)
        if e.op == "not":
            return not self._decided(value, e.operand, "not", frame)
        if e.op == "+":
            return value
        if isinstance(value, Tensor):
            return self.ops.arithmetic("*", value, -1.0, e, frame)
        return negate(value, e.span)

    def _binary(self, e: ast.BinOp, frame: Frame):
        left, right = self.eval(e.left, frame), self.eval(e.right, frame)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            return self.ops.arithmetic(e.op, left, right, e, frame)
        return arithmetic(e.op, left, right, e.span)

    # ------------------------------------------------------------------ decided while compiling
    def _compare(self, e: ast.Compare, frame: Frame) -> bool:
        """`a < b <= c` is `a < b and b <= c`, each operand evaluated once, as in Python."""
        left = self._known(e.operands[0], e.ops[0], frame)
        for op, right_expr, at in zip(e.ops, e.operands[1:], e.op_spans or (None,) * len(e.ops)):
            right = self._known(right_expr, op, frame)
            for side, other in ((left, right), (right, left)):  # a word compares with words only
                if op not in ("==", "!=") or word_of(other) is None:
                    self._not_a_symbol(side, frame)
            if not compare(op, left, right, at or e.span):
                return False
            left = right
        return True

    def _bool(self, e: ast.BoolOp, frame: Frame) -> bool:
        """The right operand is evaluated only when the left does not decide (as in Python), so
        `i < len(xs) and xs[i] > 0` never reads past the end."""
        left = self._decided(self.eval(e.left, frame), e.left, e.op, frame)
        if left == (e.op == "or"):
            return left
        return self._decided(self.eval(e.right, frame), e.right, e.op, frame)

    def _index(self, e: ast.Index, frame: Frame):
        items = self.eval(e.value, frame)
        written = self.nodes.source_text(e.value.span)
        self._not_a_tensor(items, e.value, "`[ ]` picks an item of a list while compiling")
        self._not_a_symbol(items, frame)
        if not isinstance(items, (list, tuple)):
            raise NexusError.at(e.value.span, f"`{written}` is {describe(items)}, not a list: `[ ]` "
                                "picks an item of a list")
        return item(items, self.eval(e.index, frame), written, e.index.span)

    def _known(self, expr: ast.Expr, op: str, frame: Frame):
        """An operand of a comparison: a value known while compiling."""
        value = self.eval(expr, frame)
        self._not_a_tensor(value, expr, f"`{op}` compares values known while compiling")
        return value

    def _decided(self, value, expr: ast.Expr, op: str, frame: Frame) -> bool:
        """An operand of `and`, `or`, `not`: true or false while compiling."""
        self._not_a_tensor(value, expr, f"`{op}` is decided while compiling")
        self._not_a_symbol(value, frame)
        return truth(value, expr.span, f"an operand of `{op}`")

    def condition(self, expr: ast.Expr, frame: Frame) -> bool:
        """The condition of an `if` statement, decided while compiling."""
        value = self.eval(expr, frame)
        self._not_a_tensor(value, expr, "the condition of `if` is decided while compiling")
        self._not_a_symbol(value, frame)
        return truth(value, expr.span, "the condition of `if`")

    def _not_a_tensor(self, value, expr: ast.Expr, what: str) -> None:
        if isinstance(value, Tensor):
            raise NexusError.at(expr.span, f"{what}; `{self.nodes.source_text(expr.span)}` is a "
                                f"tensor ({value.type}), whose values are only known when the "
                                "model runs", *_made_at(value, expr.span))

    @staticmethod
    def _not_a_symbol(value, frame: Frame) -> None:
        """A bare name that means nothing, where a number, true/false or a list is needed, is a
        typo (`if i == dpeth`), not an option value."""
        if isinstance(value, Symbol):
            raise NexusError.at(value.span, f"unknown name `{value.name}`" + suggest(value.name, frame))

    def _of(self, e: ast.Of, frame: Frame):
        count = int_of(self.core, e.count, frame, "an expert count")
        if not 1 <= count <= MAX_EXPERTS:
            raise NexusError.at(e.count.span, f"an expert count must be between 1 and {MAX_EXPERTS}, "
                                f"got {count}")
        template = self.eval(e.template, frame)
        if not isinstance(template, Partial) and not is_pretrained(template):
            raise NexusError.at(e.template.span, f"`of` needs a block or op to copy, got {describe(template)}")
        return ExpertSet([template] * count, e.span)

    def _pipe(self, e: ast.Pipe, frame: Frame):
        value = self.eval(e.value, frame)
        func = self.eval(e.func, frame)
        return self.core.apply(func, [Arg(value, e.value, e.value.span)], [], e.span, None, frame)

    def _call(self, e: ast.Call, frame: Frame):
        func = self.eval(e.func, frame)
        args = [Arg(self.eval(a, frame), a, a.span) for a in e.args]
        kwargs = [(k.name, Arg(self.eval(k.value, frame), k.value, k.span)) for k in e.kwargs]
        return self.core.apply(func, args, kwargs, e.span, e.alias, frame)


def _made_at(value: Tensor, span: Span) -> tuple[Note, ...]:
    return (Note(f"{value.node_name} was made", value.span),) if value.span != span else ()
