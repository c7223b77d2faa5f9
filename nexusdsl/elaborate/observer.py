"""A hook for tools that watch an elaboration (the language server's recorder in
tools/analysis.py notes the type of every expression for hover).

Give an `Observer` to `Elaborator(..., observer=...)`. The elaborator calls it after the
fact and only for what succeeded: an expression that raised, or a statement that failed, is
not reported. An observer looks and never changes anything: the values it receives are the
elaborator's own, and the graph is the one being built. Without an observer the elaborator
does none of this bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexusdsl.ir.graph import Node
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import Span


class Observer:
    """Every method does nothing; override those you need."""

    def on_call(self, span: Span, made: list[Node]) -> None:
        """A call at `span` gave its value: `f(x)`, `x |> f`, a route branch, an expert, an
        agent. `made`: the nodes the call itself added to the graph it was made in (for a
        block, every node of its body), not those of its arguments."""

    def on_value(self, expr: ast.Expr, value: Any, made: list[Node]) -> None:
        """`expr` evaluated to `value`. `made`: the nodes added while evaluating it, those of
        its subexpressions included (`x + f(x)` made f's nodes and the `add`)."""

    def on_statement(self, stmt: ast.Stmt, env: Mapping[str, Any]) -> None:
        """`stmt` ran; `env` holds the local names after it (see `statements.bound_names`
        for those it binds)."""
