"""Calls: applying an op or a block to arguments, partial application, and tensor arithmetic.

An op call validates its attributes with the op's pydantic model, runs its shape rule and adds
one node; a block call binds the block's parameters (unifying tensor shapes with the written
ones) and runs its body in a fresh frame under a new name scope."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from nexusdsl.elaborate.agents import agent_args
from nexusdsl.elaborate.frame import Frame, taken_by_torch
from nexusdsl.elaborate.modules import OPTION_FUNCTIONS
from nexusdsl.elaborate.shapes import AxisBindings, unify
from nexusdsl.elaborate.values import (
    Arg,
    BlockRef,
    Modality,
    OptionCall,
    Partial,
    Skip,
    Symbol,
    SymbolicAxis,
    Tensor,
    describe,
)
from nexusdsl.ir.graph import ParamSpec
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note, Span
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import InferContext, Op, OpError
from nexusdsl.resources import stdlib_blocks

_ARITH_OPS = {"+": "add", "-": "sub", "*": "mul"}
MAX_NODES = 200_000


class CallsMixin:
    # ------------------------------------------------------------------ dispatch
    def apply(self, func, args: list[Arg], kwargs, span: Span, alias: str | None, frame: Frame):
        if isinstance(func, Partial):
            self._check_first_argument(func, args, frame)
            args = [*args[:1], *func.args, *args[1:]] if args and _is_tensorish(args[0].value) else [*func.args, *args]
            merged = dict(func.kwargs)
            merged.update(kwargs)
            if isinstance(func.target, Op):
                return self.call_op(func.target, args, list(merged.items()), span, alias, frame)
            return self.call_block(func.target, args, list(merged.items()), span, alias, frame)
        if callable(func) and hasattr(func, "name"):  # a configuration function
            return func(args, kwargs, span)
        if isinstance(func, Symbol):
            raise NexusError.at(span, f"unknown function `{func.name}`" + self._suggest(func.name, frame))
        raise NexusError.at(span, f"{describe(func)} cannot be called")

    def _check_first_argument(self, func: Partial, args: list[Arg], frame: Frame) -> None:
        """`linear(xx, 4)` with `xx` a typo: a bare name where the tensor input goes names
        nothing (it would otherwise read as an option value and make a partial call)."""
        if func.args or not args or not isinstance(args[0].value, Symbol):
            return
        target = func.target
        wants_tensor = (bool(target.inputs) if isinstance(target, Op) else
                        any(p.type is not None for p in target.block.params))
        if wants_tensor:
            name = args[0].value.name
            raise NexusError.at(args[0].span, f"unknown name `{name}`" + self._suggest_local(name, frame))

    def _suggest_local(self, name: str, frame: Frame) -> str:
        close = difflib.get_close_matches(name, [n for n, v in frame.env.items()
                                                 if isinstance(v, Tensor)], n=1)
        return f"; did you mean `{close[0]}`?" if close else ""

    def _suggest(self, name: str, frame: Frame) -> str:
        return name_suggestion(name, [*frame.env, *frame.scope.defs])

    # ------------------------------------------------------------------ ops
    def call_op(self, op: Op, args: list[Arg], kwargs, span: Span, alias, frame: Frame):
        tensors, rest = _split_tensor_args(op, args, kwargs)
        if not tensors:
            return Partial(op, tuple(rest), tuple(kwargs))
        wanted = 1 if op.variadic else len(op.inputs)
        if len(tensors) < wanted:
            raise NexusError.at(span, f"`{op.name}` takes {wanted} tensor inputs "
                                f"({', '.join(op.inputs)}), got {len(tensors)}")
        agents = agent_args(self, op, tensors, rest, kwargs, span)  # agents.py (swarm)
        rest, kwargs, regions = agents or self.expert_args(op, tensors, rest, kwargs, span)
        attrs, hints = self._op_attrs(op, rest, [(k, v) for k, v in kwargs if k not in op.inputs], span)
        labels = [self._label(a.expr) for a in tensors]
        return self.add_op_node(op, [a.value for a in tensors], attrs, hints, span, alias, frame, labels,
                                regions=regions)

    def _label(self, expr) -> str | None:
        return self.source_text(expr.span) if expr is not None else None

    def _op_attrs(self, op: Op, rest: list[Arg], kwargs, span: Span):
        fields = list(op.Attrs.model_fields)
        if len(rest) > len(fields):
            raise NexusError.at(rest[len(fields)].span, f"`{op.name}` takes at most {len(fields)} "
                                f"positional settings after its inputs ({', '.join(fields) or 'none'})")
        given: dict[str, Arg] = dict(zip(fields, rest))
        extra_ok = op.Attrs.model_config.get("extra") == "allow"
        unknown = []  # every misspelt argument of the call is reported, not just the first
        for key, arg in kwargs:
            if key in given:
                raise NexusError.at(arg.span, f"argument `{key}` of `{op.name}` is given twice")
            if key not in fields and not extra_ok:
                unknown.append(no_such_argument(op, key, arg.span))
            given[key] = arg
        if unknown:
            raise NexusError([e.diagnostics[0] for e in unknown])
        plain = {k: self.to_plain(a) for k, a in given.items()}
        try:
            attrs = op.Attrs(**plain)
        except ValidationError as err:
            raise self._attr_error(op, err, given, span) from None
        hints = {k: a.plain_name for k, a in given.items() if a.plain_name and not isinstance(a.value, str)}
        hints.update(_item_hints(given))  # `axes = [i, j]`: names written in a list
        return attrs, hints

    def _attr_error(self, op: Op, err: ValidationError, given: dict[str, Arg], span: Span) -> NexusError:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] == "missing":
            return NexusError.at(span, f"`{op.name}` is missing its argument `{key}`")
        arg = given.get(key)
        if arg and isinstance(arg.value, float) and isinstance(arg.expr, ast.BinOp) and arg.expr.op == "/":
            return NexusError.at(arg.span, f"`{op.name}`: argument `{key}` needs an integer, but "
                                 f"`{self.source_text(arg.span)}` does not divide exactly "
                                 f"(it is {arg.value:g}); use `//` to round down")
        got = describe(arg.value) if arg else "a wrong value"
        message = first["msg"].replace("Input should be", "should be").replace("Value error, ", "")
        if first["type"] in ("dict_type", "model_type"):  # a configuration call, e.g. topk(k = 2)
            message = "should be a call with its settings, e.g. `name(...)`"
        return NexusError.at(arg.span if arg else span, f"`{op.name}`: argument `{key}` {message}, got {got}")

    def add_op_node(self, op: Op, tensors: list[Tensor], attrs, hints, span: Span, alias, frame: Frame,
                    labels: list[str | None] | None = None, at: Span | None = None, regions=None):
        """Add one node. `labels` name the inputs as written (for notes); `at` is where a
        mistake is pointed at (an operator), when not the whole call."""
        types = [t.type for t in tensors]
        ctx = InferContext(hints=hints, modalities=self.modalities, lookup=self.graph.by_name,
                           regions=regions or [])
        try:
            attrs = op.resolve(ctx, types, attrs)
            outputs = op.infer(ctx, types, attrs)
            params = op.params(ctx, types, attrs)
        except OpError as err:
            raise self._op_error(op, err, tensors, labels or [], at or span, span) from None
        name = self.node_name(op.name, alias, span, frame)
        shares = self.namer.owner_of(name) if params else None
        node = self.graph.add(op.name, name, attrs=attrs.model_dump(mode="json"),
                              inputs=[t.ref for t in tensors], outputs=list(outputs),
                              params=_param_specs(params), shares=shares, span=span,
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

    def node_name(self, base: str, alias: str | None, span: Span, frame: Frame) -> str:
        if alias is None:
            return self.namer.fresh(frame, base)
        name = frame.qualify(alias)
        if taken_by_torch(alias):
            raise NexusError.at(span, f"`{alias}` cannot name a node: the compiled model is a "
                                "torch module, which uses that name itself; choose another")
        if not self.namer.claim(name):
            raise NexusError.at(span, f"the name `{alias}` is already used in this scope")
        return name

    def _check_size(self, span: Span) -> None:
        if len(self.graph) > MAX_NODES:
            raise NexusError.at(span, f"the model has more than {MAX_NODES} nodes")

    def to_plain(self, arg: Arg) -> Any:
        """An evaluated value as an op attribute (JSON-like: numbers, strings, lists, dicts)."""
        value = arg.value
        if isinstance(value, Modality):
            self.register_modality(value)  # ops such as generate(x, image) look its spec up
            return value.name
        if isinstance(value, Symbol) or (callable(value) and isinstance(getattr(value, "name", None), str)):
            return value.name  # a bare name, or an option function left uncalled: `wiring = full`
        if isinstance(value, Tensor):
            return value.node_name
        if isinstance(value, SymbolicAxis):
            return value.name
        if isinstance(value, Partial) and isinstance(value.target, Op):
            return {"op": value.name, "attrs": {k: self.to_plain(a) for k, a in value.kwargs}}
        if isinstance(value, OptionCall):
            return {"fn": value.name, "args": [self.to_plain(Arg(v, None, arg.span)) for v in value.args],
                    "kwargs": {k: self.to_plain(Arg(v, None, arg.span)) for k, v in value.kwargs.items()}}
        if isinstance(value, (list, tuple)):
            return [self.to_plain(Arg(v, None, arg.span)) for v in value]
        if isinstance(value, (int, float, str, bool)) or value is None:
            return value
        raise NexusError.at(arg.span, f"{describe(value)} cannot be used as a setting here")

    # ------------------------------------------------------------------ arithmetic on tensors
    def tensor_arith(self, op: str, left, right, e: ast.Expr, frame: Frame):
        if isinstance(left, Tensor) and isinstance(right, Tensor):
            if op not in _ARITH_OPS:
                raise NexusError.at(e.span, f"`{op}` is not defined between two tensors (use +, - or *)")
            fn = REGISTRY[_ARITH_OPS[op]]
            labels = [self.source_text(e.left.span), self.source_text(e.right.span)]
            return self.add_op_node(fn, [left, right], fn.Attrs(), {}, e.span, None, frame,
                                    labels=labels, at=e.op_span)
        tensor, number = (left, right) if isinstance(left, Tensor) else (right, left)
        if isinstance(number, Symbol):
            raise NexusError.at(number.span, f"unknown name `{number.name}`"
                                + self._suggest_local(number.name, frame))
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise NexusError.at(e.span, f"`{op}` between a tensor and {describe(number)} is not defined")
        return self._scalar_op(op, tensor, float(number), tensor is left, e, frame)

    def _scalar_op(self, op: str, tensor: Tensor, number: float, tensor_left: bool, e: ast.Expr,
                   frame: Frame):
        if op == "*":
            name, attrs = "scale", {"factor": number}
        elif op == "/" and tensor_left:
            name, attrs = "scale", {"factor": 1.0 / number if number else float("inf")}
        elif op == "+":
            name, attrs = "shift", {"value": number}
        elif op == "-" and tensor_left:
            name, attrs = "shift", {"value": -number}
        else:
            raise NexusError.at(e.span, f"`{op}` with a number on the left of a tensor is not defined")
        if op == "/" and not number:
            raise NexusError.at(e.span, "division by zero")
        fn = REGISTRY[name]
        return self.add_op_node(fn, [tensor], fn.Attrs(**attrs), {}, e.span, None, frame)

    # ------------------------------------------------------------------ blocks
    def call_block(self, ref: BlockRef, args: list[Arg], kwargs, span: Span, alias, frame: Frame):
        block = ref.block
        bound = self._bind_block_args(ref, args, kwargs)
        tensor_params = [p for p in block.params if p.type is not None]
        if tensor_params and not any(p.name in bound for p in tensor_params):
            return Partial(ref, tuple(args), tuple(kwargs))
        if len(self.calls) >= 64:
            raise NexusError.at(span, f"block {block.name} calls itself (or nests more than 64 deep)")
        inner = Frame(ref.scope, "")
        inner.axes = AxisBindings(lambda n: self.known_size(n, inner))
        self._bind_block_params(ref, bound, inner, span)
        scope_name = self.node_name(block.name, alias, span, frame)
        inner.prefix = scope_name
        self.calls.append((block.name, span))
        reported = len(self.sink.diagnostics)
        try:
            self.run_body(block.body, inner)
        finally:
            self.calls.pop()
        if len(self.sink.diagnostics) > reported:
            raise Skip()  # the body's mistake is reported; the call has no value
        return self._block_result(ref, inner, span, alias, frame)

    def _bind_block_args(self, ref: BlockRef, args: list[Arg], kwargs) -> dict[str, Arg]:
        params = ref.block.params
        if len(args) > len(params):
            raise NexusError.at(args[len(params)].span, f"block {ref.name} takes {len(params)} arguments, "
                                f"got {len(args)} positional ones")
        bound = {p.name: a for p, a in zip(params, args)}
        names = [p.name for p in params]
        for key, arg in kwargs:
            if key not in names:
                raise NexusError.at(arg.span, f"block {ref.name} has no parameter `{key}` "
                                    f"(it takes {', '.join(names)})" + _close(key, names))
            if key in bound:
                raise NexusError.at(arg.span, f"argument `{key}` of block {ref.name} is given twice")
            bound[key] = arg
        return bound

    def _bind_block_params(self, ref: BlockRef, bound: dict[str, Arg], inner: Frame, span: Span) -> None:
        later = []  # defaults that name the inputs' axes (`out = d`): after the shapes bind d
        for p in ref.block.params:  # hyperparameters first: shapes may refer to them
            if p.type is None:
                if p.name in bound or not self._names_an_axis(ref, p):
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
            self._unify_param(p, arg, inner, span)
            inner.env[p.name] = arg.value
        for name in inner.axes.axes:
            inner.env.setdefault(name, inner.axes.value(name))
        for p in later:
            inner.env[p.name] = self._hyper_value(ref, p, bound, inner, span)

    @staticmethod
    def _names_an_axis(ref: BlockRef, p: ast.Param) -> bool:
        """Whether a hyperparameter's default mentions an axis name of the block's tensor
        parameters (and no hyperparameter of that name)."""
        axes = {d.name for q in ref.block.params if q.type is not None
                for d in q.type.shape.dims if d.name}
        axes -= {q.name for q in ref.block.params if q.type is None}
        return p.default is not None and any(
            isinstance(n, ast.Name) and n.id in axes for n in ast.walk(p.default))

    def _unify_param(self, p: ast.Param, arg: Arg, inner: Frame, span: Span) -> None:
        try:
            unify(p.type.shape, arg.value.type, inner.axes, lambda e: self.int_of(e, inner, "an axis size"))
        except NexusError as err:
            d = err.diagnostics[0]
            written = self.source_text(p.span)
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
        return self.eval(p.default, inner)

    def _block_result(self, ref: BlockRef, inner: Frame, span: Span, alias, frame: Frame):
        if inner.returned is None:
            raise NexusError.at(ref.block.span, f"block {ref.name} has no `return`")
        values = inner.returned.values
        if ref.block.returns is not None:
            for v in values:
                if not isinstance(v, Tensor):
                    raise NexusError.at(inner.returned.span, f"block {ref.name} returns {describe(v)}")
                self._unify_param(ast.Param(ref.block.returns.span, "return", ref.block.returns),
                                  Arg(v, None, inner.returned.span), inner, span)
        result = values[0] if len(values) == 1 else tuple(values)
        if alias:
            frame.env[alias] = result
        return result


def _item_hints(given: dict[str, Arg]) -> dict[str, str]:
    """{"axes.0": "i"} for the plain names written inside a list argument, so that an op can
    tell an axis written by name from a number even when the name is bound to its size."""
    return {f"{k}.{i}": item.id for k, a in given.items() if isinstance(a.expr, ast.ListExpr)
            for i, item in enumerate(a.expr.items) if isinstance(item, ast.Name)}


def _is_tensorish(value) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, (list, tuple)) and value and
                                         all(isinstance(v, Tensor) for v in value))


def _split_tensor_args(op: Op, args: list[Arg], kwargs) -> tuple[list[Arg], list[Arg]]:
    """Leading tensor arguments are the op's inputs (a list of tensors counts for a variadic op);
    keyword arguments named like an input are inputs too."""
    tensors: list[Arg] = []
    rest: list[Arg] = []
    limit = len(op.inputs) if not op.variadic else 10**9
    for a in args:
        if not rest and isinstance(a.value, Tensor) and len(tensors) < limit:
            tensors.append(a)
        elif not rest and op.variadic and isinstance(a.value, (list, tuple)) and _is_tensorish(a.value):
            tensors.extend(Arg(v, None, a.span) for v in a.value)
        else:
            rest.append(a)
    for name, a in kwargs:
        if name in op.inputs and isinstance(a.value, Tensor):
            tensors.append(a)
    return tensors, rest


def _param_specs(params) -> dict[str, ParamSpec]:
    return {k: v if isinstance(v, ParamSpec) else ParamSpec(**v) for k, v in params.items()}


def name_suggestion(name: str, names: list[str]) -> str:
    """What an unknown name may have meant: a stdlib block not imported, or a close name
    (an op, an option function, or one of `names`)."""
    module = stdlib_blocks().get(name)
    if module is not None:  # the likeliest cause: a missing import
        return f"; `{name}` is a block of {module}: add `import {module}`"
    return _close(name, [*REGISTRY, *OPTION_FUNCTIONS, *names])


def no_such_argument(op: Op, key: str, span: Span) -> NexusError:
    fields = list(op.Attrs.model_fields)
    return NexusError.at(span, f"`{op.name}` has no argument `{key}` (it takes "
                         f"{', '.join([*op.inputs, *fields])})" + _close(key, fields))


def _close(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""
