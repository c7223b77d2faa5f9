"""The abstract syntax tree: frozen dataclasses, every node with the `Span` it came from.

The parser builds these from Lark's tree; nothing after the parser sees Lark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nexusdsl.lang.diagnostics import Span

# ----------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Expr:
    span: Span


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Attribute(Expr):
    """`nn.mlp`: a name inside an imported module."""

    value: Expr
    attr: str


@dataclass(frozen=True)
class Int(Expr):
    value: int


@dataclass(frozen=True)
class Float(Expr):
    value: float


@dataclass(frozen=True)
class Str(Expr):
    value: str


@dataclass(frozen=True)
class Bool(Expr):
    value: bool


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class TupleExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # + - * / // % **
    left: Expr
    right: Expr
    op_span: Span | None = None  # where the operator itself stands, for carets


@dataclass(frozen=True)
class UnaryOp(Expr):
    op: str  # - + not
    operand: Expr


@dataclass(frozen=True)
class Compare(Expr):
    """`a < b`, or a chain `a <= b < c` read as Python reads it (`a <= b and b < c`); on
    hyperparameters, decided while elaborating."""

    operands: tuple[Expr, ...]
    ops: tuple[str, ...]  # == != < <= > >=, one fewer than operands
    op_spans: tuple[Span | None, ...] = ()  # where each operator stands, for carets


@dataclass(frozen=True)
class BoolOp(Expr):
    """`a and b`, `a or b`: the right operand is evaluated only when it decides (as in Python)."""

    op: str  # and or
    left: Expr
    right: Expr
    op_span: Span | None = None


@dataclass(frozen=True)
class Index(Expr):
    """`windows[i]`: an item of a list, chosen while elaborating (negative from the end)."""

    value: Expr
    index: Expr


@dataclass(frozen=True)
class Keyword:
    span: Span
    name: str
    value: Expr


@dataclass(frozen=True)
class Call(Expr):
    """`f(a, k = v) as name`; `x |> f(k = v)` is parsed to the same node with `piped` set."""

    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    alias: str | None = None
    piped: bool = False


@dataclass(frozen=True)
class Pipe(Expr):
    """`x |> f` where f is not a call (a name or a value): applies f to x."""

    value: Expr
    func: Expr


@dataclass(frozen=True)
class Of(Expr):
    """`16 of mlp(mult = 4)`: n fresh instances of a partially applied block or op."""

    count: Expr
    template: Expr


@dataclass(frozen=True)
class RouteBranch:
    span: Span
    modality: str
    body: Expr


@dataclass(frozen=True)
class Route(Expr):
    """`route(x) { text -> f; image -> g }`: each token goes to the branch of its modal code."""

    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    branches: tuple[RouteBranch, ...]
    alias: str | None = None


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Dim:
    """One axis of a written shape: `B`, `16`, `T = 1024`, or `*` (leading axes)."""

    span: Span
    name: str | None = None
    size: Expr | None = None
    star: bool = False


@dataclass(frozen=True)
class Shape:
    span: Span
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class TensorTypeExpr:
    """`text[B, T]`, `float[B, D]` or a bare `[*, d]`."""

    span: Span
    kind: str | None
    shape: Shape


# ----------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Stmt:
    span: Span


@dataclass(frozen=True)
class Assign(Stmt):
    targets: tuple[str, ...]
    value: Expr


@dataclass(frozen=True)
class Let(Stmt):
    name: str
    value: Expr


@dataclass(frozen=True)
class Experts(Stmt):
    name: str
    value: Expr


@dataclass(frozen=True)
class Input(Stmt):
    name: str
    type: TensorTypeExpr
    default: Expr | None = None  # `input mask: bool[B, T] = true`: filled when not given


@dataclass(frozen=True)
class Output(Stmt):
    name: str
    value: Expr | None


@dataclass(frozen=True)
class Return(Stmt):
    values: tuple[Expr, ...]


@dataclass(frozen=True)
class Repeat(Stmt):
    count: Expr
    body: tuple[Stmt, ...]
    shared: bool = False
    reversible: bool = False
    var: str | None = None  # `repeat depth as i`: the iteration index, 0-based
    var_span: Span | None = None


@dataclass(frozen=True)
class If(Stmt):
    """`if cond { ... } else { ... }`, decided while elaborating: only the taken branch makes
    nodes. `else if` is an `If` alone in `orelse`."""

    cond: Expr
    body: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()


# ----------------------------------------------------------------------------- top level


@dataclass(frozen=True)
class Param:
    """A block or model parameter: a tensor input when `type` is given, else a hyperparameter."""

    span: Span
    name: str
    type: TensorTypeExpr | None = None
    default: Expr | None = None


@dataclass(frozen=True)
class Import(Stmt):
    module: str  # "std.nn" or a file path
    is_file: bool
    alias: str | None


@dataclass(frozen=True)
class Modality(Stmt):
    name: str
    value: Call


@dataclass(frozen=True)
class Block(Stmt):
    name: str
    params: tuple[Param, ...]
    returns: TensorTypeExpr | None
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Model(Stmt):
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class TrainField:
    span: Span
    name: str
    value: Expr


@dataclass(frozen=True)
class Train(Stmt):
    model: str
    fields: tuple[TrainField, ...]


@dataclass(frozen=True)
class ModelAlias(Stmt):
    """`model Llama32 = llama.Llama(dim = 2048, depth = 16)`: a model of another definition
    with other hyperparameter defaults."""

    name: str
    target: Expr  # the model, by name or `module.Name`
    kwargs: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True)
class BindSource:
    span: Span
    name: str | None  # `a = "dir"`; None for the single unnamed source
    path: str


@dataclass(frozen=True)
class BindRule(Stmt):
    """`"blocks.{i}.attention.qkv.weight" <- concat("q.{i}", "k.{i}", "v.{i}")`"""

    target: str
    source: Expr


@dataclass(frozen=True)
class BindUse(Stmt):
    """`use llama.hf as "text" from a`: another set's rules, their targets under a prefix, their
    keys read from a source."""

    rules: str  # dotted name of a `weights` set
    prefix: str = ""
    source: str | None = None


@dataclass(frozen=True)
class BindIgnore(Stmt):
    """`ignore "model.layers.*" from b`: checkpoint tensors no rule needs to use."""

    pattern: str
    source: str | None = None


@dataclass(frozen=True)
class Bind(Stmt):
    """`bind Model from "dir" frozen { rules }`: the model's parameters from checkpoints."""

    model: str
    sources: tuple[BindSource, ...]
    frozen: bool
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Weights(Stmt):
    """`weights hf { rules }`: a named set of binding rules."""

    name: str
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Program:
    file: str
    source: str
    version: str | None
    items: tuple[Stmt, ...]


def walk(node):
    """Every AST node under `node` (itself included), depth first, like Python's ast.walk."""
    yield node
    if isinstance(node, (tuple, list)):
        for item in node:
            yield from walk(item)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, (tuple, list)) or dataclasses.is_dataclass(value):
                yield from walk(value)
