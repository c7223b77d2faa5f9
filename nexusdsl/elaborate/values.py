"""The values an `.nx` expression can evaluate to during elaboration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nexusdsl.ir.graph import ValueRef
from nexusdsl.ir.types import ModalitySpec, TensorType
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import Span


@dataclass(frozen=True)
class Tensor:
    """An edge of the graph being built."""

    ref: ValueRef
    type: TensorType
    span: Span
    node_name: str


@dataclass(frozen=True)
class SymbolicAxis:
    """An axis name bound to a symbolic (run-time) size, such as B or T."""

    name: str


@dataclass(frozen=True)
class Symbol:
    """A bare identifier that names nothing: an option value such as `axial` or `learned`."""

    name: str
    span: Span


@dataclass(frozen=True)
class Arg:
    """An evaluated argument with the expression it came from (for spans and axis names)."""

    value: Any
    expr: ast.Expr | None
    span: Span

    @property
    def plain_name(self) -> str | None:
        return self.expr.id if isinstance(self.expr, ast.Name) else None


@dataclass(frozen=True)
class Partial:
    """An op or block with some arguments bound and its tensor input left out:
    `gelu(approx = tanh)`, `mlp(mult = 2)`, or a bare `gelu` / `mlp`."""

    target: Any  # an Op or a BlockRef
    args: tuple[Arg, ...] = ()
    kwargs: tuple[tuple[str, Arg], ...] = ()

    @property
    def name(self) -> str:
        return self.target.name


@dataclass(frozen=True)
class BlockRef:
    """A block definition together with the file scope it was written in."""

    name: str
    block: ast.Block
    scope: Any  # modules.FileScope


@dataclass(frozen=True)
class OptionCall:
    """A call to a configuration function: `topk(k = 4)`, `local(3)`, `ring(2)`,
    `pretrained("dir")`, `adamw(lr = 3e-4)`. Interpreted by whoever receives it."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    span: Span


@dataclass(frozen=True)
class Modality:
    spec: ModalitySpec
    span: Span

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ExpertSet:
    """`experts ffn = 16 of mlp(mult = 4)` or a list of heterogeneous expert templates."""

    members: list[Any]
    span: Span
    name: str | None = None


@dataclass(frozen=True)
class Namespace:
    """An imported module: `nn` in `nn.mlp`."""

    name: str
    scope: Any  # modules.FileScope


class Poison:
    """The value of a name whose definition already failed: uses are skipped silently so that
    one mistake gives one diagnostic."""


POISON = Poison()


class Skip(Exception):
    """A statement uses a poisoned name, or a block body failed: the error is already reported."""


@dataclass
class Returned:
    values: list[Any] = field(default_factory=list)
    span: Span | None = None


def describe(value: Any) -> str:
    """How a value is named in an error message."""
    if isinstance(value, Tensor):
        return f"a tensor {value.type}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, Symbol):
        return f"the name `{value.name}`"
    if isinstance(value, Partial):
        return f"`{value.name}` (an op or block without its input)"
    if isinstance(value, Modality):
        return f"the modality {value.name}"
    if isinstance(value, ExpertSet):
        return "a set of experts"
    if isinstance(value, OptionCall):
        return f"`{value.name}(...)`"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, SymbolicAxis):
        return f"the symbolic axis {value.name}"
    if isinstance(value, Namespace):
        return f"the module {value.name}"
    if callable(value) and isinstance(getattr(value, "name", None), str):
        return f"`{value.name}` without its settings (write `{value.name}(...)`)"
    return type(value).__name__
