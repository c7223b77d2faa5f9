"""The ways elaboration recurses, as the parts of the elaborator see each other.

An expression may call a block, whose body is statements, whose statements hold expressions:
evaluation, application and execution call one another, and an `if` statement asks for its
condition to be decided. Each part receives this narrow interface (implemented by
`elaborator.Elaborator`, which wires the parts) instead of the other parts themselves.
"""

from __future__ import annotations

from typing import Any, Protocol

from nexusdsl.elaborate.evaluate import as_int
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.values import Arg
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import Span


class Core(Protocol):
    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        """The value of an expression (raises `Skip` when it uses a poisoned name)."""

    def apply(self, func: Any, args: list[Arg], kwargs: list[tuple[str, Arg]], span: Span,
              alias: str | None, frame: Frame) -> Any:
        """Call a value (an op, a block, a configuration function) on evaluated arguments."""

    def run_body(self, body: tuple[ast.Stmt, ...], frame: Frame) -> bool:
        """Run statements, reporting each failing one; False when any reported a mistake."""

    def decide(self, expr: ast.Expr, frame: Frame) -> bool:
        """The condition of an `if`: true or false while elaborating (a tensor is an error)."""


def int_of(core: Core, expr: ast.Expr, frame: Frame, what: str) -> int:
    """An expression that must be an integer (`what`: "a repeat count", "an axis size")."""
    return as_int(core.eval(expr, frame), expr.span, what)
