"""Block calls: a block applied to its tensor inputs binds its parameters (unifying the
tensors' shapes with the written ones), runs its body in a fresh frame under a new name scope,
and checks what it returns. The stack of calls being elaborated gives a mistake inside a block
the notes that say where it was called from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from nexusdsl.elaborate.core import Core, int_of
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import Names, close_match
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.shapes import AxisBindings, unify
from nexusdsl.elaborate.values import Arg, BlockRef, Partial, Skip, Tensor, describe
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note, Span

MAX_DEPTH = 64


class CallStack:
    """The block calls being elaborated, outermost first."""

    def __init__(self):
        self._calls: list[tuple[str, Span]] = []

    def __len__(self) -> int:
        return len(self._calls)

    @contextmanager
    def entered(self, name: str, span: Span) -> Iterator[None]:
        self._calls.append((name, span))
        try:
            yield
        finally:
            self._calls.pop()

    def annotate(self, err: NexusError) -> NexusError:
        """Inside a block, say where the block was called from (innermost call first)."""
        if not self._calls:
            return err
        runs: list[list] = []  # a block calling itself: one note with a count, not 64
        for name, span in reversed(self._calls):
            if runs and runs[-1][:2] == [name, span]:
                runs[-1][2] += 1
            else:
                runs.append([name, span, 1])
        notes = tuple(Note(f"in block {name} called" + (f" ({n} times in a row)" if n > 1 else ""),
                           span) for name, span, n in runs)
        return NexusError([replace(d, notes=d.notes + notes) for d in err.diagnostics], err.sources)


class BlockCalls:
    def __init__(self, nodes: NodeWriter, names: Names, stack: CallStack, core: Core):
        self.nodes = nodes
        self.names = names
        self.stack = stack
        self.core = core

    def call(self, ref: BlockRef, args: list[Arg], kwargs, span: Span, alias, frame: Frame):
        block = ref.block
        bound = self._bind_args(ref, args, kwargs)
        tensor_params = [p for p in block.params if p.type is not None]
        if tensor_params and not any(p.name in bound for p in tensor_params):
            return Partial(ref, tuple(args), tuple(kwargs))
        if len(self.stack) >= MAX_DEPTH:
            raise NexusError.at(span, f"block {block.name} calls itself (or nests more than 64 deep)")
        inner = Frame(ref.scope, "")
        inner.axes = AxisBindings(lambda n: self.names.known_size(n, inner))
        self._bind_params(ref, bound, inner, span)
        inner.prefix = self.nodes.node_name(block.name, alias, span, frame)
        with self.stack.entered(block.name, span):
            clean = self.core.run_body(block.body, inner)
        if not clean:
            raise Skip()  # the body's mistake is reported; the call has no value
        return self._result(ref, inner, span, alias, frame)

    def _bind_args(self, ref: BlockRef, args: list[Arg], kwargs) -> dict[str, Arg]:
        params = ref.block.params
        if len(args) > len(params):
            raise NexusError.at(args[len(params)].span, f"block {ref.name} takes {len(params)} arguments, "
                                f"got {len(args)} positional ones")
        bound = {p.name: a for p, a in zip(params, args)}
        names = [p.name for p in params]
        for key, arg in kwargs:
            if key not in names:
                raise NexusError.at(arg.span, f"block {ref.name} has no parameter `{key}` "
                                    f"(it takes {', '.join(names)})" + close_match(key, names))
            if key in bound:
                raise NexusError.at(arg.span, f"argument `{key}` of block {ref.name} is given twice")
            bound[key] = arg
        return bound

    def _bind_params(self, ref: BlockRef, bound: dict[str, Arg], inner: Frame, span: Span) -> None:
        later = []  # defaults that name the inputs' axes (`out = d`): after the shapes bind d
        for p in ref.block.params:  # hyperparameters first: shapes may refer to them
            if p.type is None:
                if p.name in bound or not _names_an_axis(ref, p):
                    inner.env[p.name] = self._hyper_value(ref, p, bound, inner, span)
                else:
                    later.append(p)
        for p in ref.block.params:
            if p.type is None:
                continue
            if p.name not in bound:
                raise NexusError.at(span, f"block {ref.name} is missing its tensor input `{p.name}`")
            arg = bound[p.name]
            if not isinstance(arg.value, Tensor):
                raise NexusError.at(arg.span, f"`{p.name}` of block {ref.name} must be a tensor, "
                                    f"got {describe(arg.value)}")
            self._unify_param(p, arg, inner)
            inner.env[p.name] = arg.value
        for name in inner.axes.axes:
            inner.env.setdefault(name, inner.axes.value(name))
        for p in later:
            inner.env[p.name] = self._hyper_value(ref, p, bound, inner, span)

    def _unify_param(self, p: ast.Param, arg: Arg, inner: Frame) -> None:
        try:
            unify(p.type.shape, arg.value.type, inner.axes,
                  lambda e: int_of(self.core, e, inner, "an axis size"))
        except NexusError as err:
            d = err.diagnostics[0]
            written = self.nodes.source_text(p.span)
            if p.name == "return":  # the block's declared result, `-> [*, d]`
                raise NexusError.at(arg.span, f"the returned tensor does not match `-> {written}`: "
                                    f"{d.message}", Note(f"the result is declared `-> {written}`",
                                                         p.span)) from None
            raise NexusError.at(arg.span, f"argument `{p.name}`: {d.message}",
                                Note(f"the parameter is declared `{written}`", p.span)) from None

    def _hyper_value(self, ref: BlockRef, p: ast.Param, bound, inner: Frame, span: Span):
        if p.name in bound:
            return bound[p.name].value
        if p.default is None:
            raise NexusError.at(span, f"block {ref.name} is missing its argument `{p.name}`")
        return self.core.eval(p.default, inner)

    def _result(self, ref: BlockRef, inner: Frame, span: Span, alias, frame: Frame):
        if inner.returned is None:
            raise NexusError.at(ref.block.span, f"block {ref.name} has no `return`")
        values = inner.returned.values
        if ref.block.returns is not None:
            for v in values:
                if not isinstance(v, Tensor):
                    raise NexusError.at(inner.returned.span, f"block {ref.name} returns {describe(v)}")
                self._unify_param(ast.Param(ref.block.returns.span, "return", ref.block.returns),
                                  Arg(v, None, inner.returned.span), inner)
        result = values[0] if len(values) == 1 else tuple(values)
        if alias:
            frame.env[alias] = result
        return result


def _names_an_axis(ref: BlockRef, p: ast.Param) -> bool:
    """Whether a hyperparameter's default mentions an axis name of the block's tensor
    parameters (and no hyperparameter of that name)."""
    axes = {d.name for q in ref.block.params if q.type is not None
            for d in q.type.shape.dims if d.name}
    axes -= {q.name for q in ref.block.params if q.type is None}
    return p.default is not None and any(
        isinstance(n, ast.Name) and n.id in axes for n in ast.walk(p.default))
