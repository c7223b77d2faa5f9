"""Op calls: an op applied to tensors validates its attributes with the op's pydantic model,
runs its shape rule and adds one node; `+ - *` between tensors and numbers are op calls too.
A call without its tensor input is a value (`gelu(approx = tanh)`) applied later."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from nexusdsl.elaborate.agents import Agents
from nexusdsl.elaborate.experts import Experts
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import close_match, suggest_local
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.values import (
    Arg,
    Modality,
    OptionCall,
    Partial,
    Symbol,
    SymbolicAxis,
    Tensor,
    describe,
)
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import Op

_ARITH_OPS = {"+": "add", "-": "sub", "*": "mul"}


class OpCalls:
    def __init__(self, nodes: NodeWriter, experts: Experts, agents: Agents):
        self.nodes = nodes
        self.experts = experts
        self.agents = agents

    # ------------------------------------------------------------------ calls
    def call(self, op: Op, args: list[Arg], kwargs, span: Span, alias, frame: Frame):
        tensors, rest = _split_tensor_args(op, args, kwargs)
        if not tensors and (op.inputs or op.variadic):  # an op of no inputs (param) is made
            return Partial(op, tuple(rest), tuple(kwargs))
        wanted = 1 if op.variadic else len(op.inputs)
        if len(tensors) < wanted:
            raise NexusError.at(span, f"`{op.name}` takes {wanted} tensor inputs "
                                f"({', '.join(op.inputs)}), got {len(tensors)}")
        agents = self.agents.agent_args(op, tensors, rest, kwargs, span)  # swarm
        rest, kwargs, regions = agents or self.experts.expert_args(op, tensors, rest, kwargs, span,
                                                                   alias, frame)
        tensors, kwargs = _optional_tensors(op, tensors, kwargs)  # after: `shared` is made there
        attrs, hints = self._attrs(op, rest, [(k, v) for k, v in kwargs if k not in op.inputs], span)
        labels = [self._label(a.expr) for a in tensors]
        return self.nodes.add_op(op, [a.value for a in tensors], attrs, hints, span, alias, frame,
                                 labels, regions=regions)

    def _label(self, expr) -> str | None:
        return self.nodes.source_text(expr.span) if expr is not None else None

    def _attrs(self, op: Op, rest: list[Arg], kwargs, span: Span):
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
                                 f"`{self.nodes.source_text(arg.span)}` does not divide exactly "
                                 f"(it is {arg.value:g}); use `//` to round down")
        got = describe(arg.value) if arg else "a wrong value"
        message = first["msg"].replace("Input should be", "should be").replace("Value error, ", "")
        if first["type"] in ("dict_type", "model_type"):  # a configuration call, e.g. topk(k = 2)
            message = "should be a call with its settings, e.g. `name(...)`"
        return NexusError.at(arg.span if arg else span, f"`{op.name}`: argument `{key}` {message}, got {got}")

    def to_plain(self, arg: Arg) -> Any:
        """An evaluated value as an op attribute (JSON-like: numbers, strings, lists, dicts)."""
        value = arg.value
        if isinstance(value, Modality):
            self.nodes.register_modality(value)  # ops such as generate(x, image) look its spec up
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
    def arithmetic(self, op: str, left, right, e: ast.BinOp | ast.UnaryOp, frame: Frame):
        """`left op right` where one side is a tensor: `add`/`sub`/`mul` between tensors,
        `scale`/`shift` with a number."""
        if isinstance(left, Tensor) and isinstance(right, Tensor):
            if op not in _ARITH_OPS:
                raise NexusError.at(e.span, f"`{op}` is not defined between two tensors (use +, - or *)")
            fn = REGISTRY[_ARITH_OPS[op]]
            labels = [self.nodes.source_text(e.left.span), self.nodes.source_text(e.right.span)]
            return self.nodes.add_op(fn, [left, right], fn.Attrs(), {}, e.span, None, frame,
                                     labels=labels, at=e.op_span)
        tensor, number = (left, right) if isinstance(left, Tensor) else (right, left)
        if isinstance(number, Symbol):
            raise NexusError.at(number.span, f"unknown name `{number.name}`"
                                + suggest_local(number.name, frame))
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
        return self.nodes.add_op(fn, [tensor], fn.Attrs(**attrs), {}, e.span, None, frame)


def no_such_argument(op: Op, key: str, span: Span) -> NexusError:
    fields = list(op.Attrs.model_fields)
    return NexusError.at(span, f"`{op.name}` has no argument `{key}` (it takes "
                         f"{', '.join([*op.inputs, *fields])})" + close_match(key, fields))


def is_tensorish(value) -> bool:
    """A tensor, or a non-empty list of tensors (the inputs of a variadic op)."""
    return isinstance(value, Tensor) or (isinstance(value, (list, tuple)) and value and
                                         all(isinstance(v, Tensor) for v in value))


def _item_hints(given: dict[str, Arg]) -> dict[str, str]:
    """{"axes.0": "i"} for the plain names written inside a list argument, so that an op can
    tell an axis written by name from a number even when the name is bound to its size."""
    return {f"{k}.{i}": item.id for k, a in given.items() if isinstance(a.expr, ast.ListExpr)
            for i, item in enumerate(a.expr.items) if isinstance(item, ast.Name)}


def _optional_tensors(op: Op, tensors: list[Arg], kwargs):
    """Keyword tensors an op takes optionally (`mask = m`): appended to its inputs in the op's
    order and named in its `given` attribute. A non-tensor there is a mistake."""
    named = dict(kwargs)
    given = [name for name in op.optional_inputs if name in named]
    for name in given:
        if not isinstance(named[name].value, Tensor):
            raise NexusError.at(named[name].span, f"`{op.name}`: `{name}` takes a tensor, got "
                                f"{describe(named[name].value)}")
    if not given:
        return tensors, kwargs
    rest = [(k, a) for k, a in kwargs if k not in given]
    marker = Arg([*given], None, named[given[0]].span)
    return [*tensors, *(named[name] for name in given)], [*rest, ("given", marker)]


def _split_tensor_args(op: Op, args: list[Arg], kwargs) -> tuple[list[Arg], list[Arg]]:
    """Leading tensor arguments are the op's inputs (a list of tensors counts for a variadic op);
    keyword arguments named like an input are inputs too."""
    tensors: list[Arg] = []
    rest: list[Arg] = []
    limit = len(op.inputs) if not op.variadic else 10**9
    for a in args:
        if not rest and isinstance(a.value, Tensor) and len(tensors) < limit:
            tensors.append(a)
        elif not rest and op.variadic and isinstance(a.value, (list, tuple)) and is_tensorish(a.value):
            tensors.extend(Arg(v, None, a.span) for v in a.value)
        else:
            rest.append(a)
    for name, a in kwargs:
        if name in op.inputs and isinstance(a.value, Tensor):
            tensors.append(a)
    return tensors, rest
