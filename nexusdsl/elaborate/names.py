"""What a name means during elaboration: a local value, a definition of the file or of an
import, a builtin, or nothing (an option value such as `axial`); and what an unknown name may
have meant.

Builtins are the public ops, the configuration functions and `len`. Internal ops (`Op.public` false:
`add` for `+`, the fused forms passes make, `recur`) are no names of the language: a file that
writes one gets "unknown name", and suggestions never offer one. The elaborator still makes
them itself, through the op registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.modules import OPTION_FUNCTIONS, FileScope, lookup_global
from nexusdsl.elaborate.values import (
    Arg,
    BlockRef,
    Modality,
    Namespace,
    OptionCall,
    Partial,
    Poison,
    Skip,
    Symbol,
    Tensor,
    describe,
)
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import Op
from nexusdsl.resources import stdlib_blocks


def public_op(name: str) -> Op | None:
    """The op a `.nx` file calls by this name, if it may."""
    op = REGISTRY.get(name)
    return op if op is not None and op.public else None


def public_op_names() -> list[str]:
    """The names of the ops a `.nx` file may call, sorted."""
    return sorted(name for name, op in REGISTRY.items() if op.public)


class Builtins:
    """Public op names, configuration functions and functions of hyperparameters (the op
    registry is read when first needed)."""

    def __contains__(self, name: str) -> bool:
        return public_op(name) is not None or name in OPTION_FUNCTIONS or name in HYPER_FUNCTIONS


BUILTINS = Builtins()


class OptionFunction:
    """A configuration function such as `topk` before it is called."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, args: list[Arg], kwargs, span: Span) -> OptionCall:
        for a in [*args, *(v for _, v in kwargs)]:
            if isinstance(a.value, Tensor):
                raise NexusError.at(a.span, f"`{self.name}(...)` takes settings, not tensors")
        return OptionCall(self.name, tuple(a.value for a in args), {k: v.value for k, v in kwargs}, span)


class Length:
    """`len(xs)`: the number of items of a list, while elaborating."""

    name = "len"

    def __call__(self, args: list[Arg], kwargs, span: Span) -> int:
        if len(args) != 1 or kwargs:
            raise NexusError.at(span, "`len` takes one list: `len(xs)`")
        value = args[0].value
        if isinstance(value, Tensor):
            raise NexusError.at(args[0].span, "`len` counts the items of a list while compiling; "
                                "this is a tensor (its sizes are in its type)")
        if not isinstance(value, (list, tuple)):
            raise NexusError.at(args[0].span, f"`len` counts the items of a list, got {describe(value)}")
        return len(value)


class Contains:
    """`contains(xs, v)`: whether the list xs holds v, while elaborating (Qwen3-MoE's dense
    layers: `contains(dense, i)`)."""

    name = "contains"

    def __call__(self, args: list[Arg], kwargs, span: Span) -> bool:
        if len(args) != 2 or kwargs:
            raise NexusError.at(span, "`contains` takes a list and a value: `contains(xs, v)`")
        items, value = args[0].value, args[1].value
        for arg in args:
            if isinstance(arg.value, Tensor):
                raise NexusError.at(arg.span, "`contains` looks in a list while compiling; this "
                                    "is a tensor")
        if not isinstance(items, (list, tuple)):
            raise NexusError.at(args[0].span, f"`contains` looks in a list, got {describe(items)}")
        return value in items


# `let a = b + 1`, `let b = c + 1`, ...: how long such a chain may be (each link is a nested
# evaluation; a limit turns a runaway chain into a located error instead of a RecursionError).
MAX_DEFINITION_DEPTH = 64

HYPER_FUNCTIONS = {"len": Length(), "contains": Contains()}


class Names:
    """Looks names up in a frame and the files in scope. A file's `let` constants and
    modalities are evaluated on first use (with `evaluate`) and cached; one defined in terms
    of itself is an error."""

    def __init__(self, evaluate: Callable[[ast.Expr, Frame], Any]):
        self._evaluate = evaluate
        self._evaluating: set[tuple[str, str]] = set()

    def lookup(self, name: str, span: Span, frame: Frame):
        if name in frame.env:
            value = frame.env[name]
            if isinstance(value, Poison):
                raise Skip()
            return value
        found = lookup_global(frame.scope, name, span, BUILTINS)
        if found is None:
            return Symbol(name, span)
        kind, what = found
        if kind == "namespace":
            return Namespace(name, what)
        if kind == "builtin":
            op = public_op(name)
            if op is not None:
                return Partial(op)
            return HYPER_FUNCTIONS.get(name) or OptionFunction(name)
        scope, item = what
        return self.definition_value(scope, item, span)

    def known_size(self, name: str, frame: Frame):
        """What a name in a shape is bound to beforehand: a hyperparameter, or a file's `let`
        constant (`let width = 32` makes `float[B, width]` a fixed axis named width)."""
        if name in frame.env:
            return frame.env[name]
        item = frame.scope.defs.get(name)
        if isinstance(item, ast.Let):
            return self.definition_value(frame.scope, item, item.span)
        return None

    @staticmethod
    def module_named(e: ast.Expr, frame: Frame) -> Namespace | None:
        """`hyena` in `hyena.block` is the imported module even where the name alone is the
        builtin op; a local value or the file's own definition of that name comes first."""
        if not isinstance(e, ast.Name) or e.id in frame.env or e.id in frame.scope.defs:
            return None
        scope = frame.scope.namespace(e.id)
        return Namespace(e.id, scope) if scope is not None else None

    def definition_value(self, scope: FileScope, item: ast.Stmt, span: Span):
        if isinstance(item, ast.Block):
            return Partial(BlockRef(item.name, item, scope))
        if isinstance(item, ast.Let):
            return self._cached(scope, item, lambda: self._evaluate(item.value, Frame(scope, "")))
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
        if len(self._evaluating) >= MAX_DEFINITION_DEPTH:
            raise NexusError.at(item.span, f"`{item.name}` is reached through more than "
                                f"{MAX_DEFINITION_DEPTH} definitions, each defined by the next "
                                "(docs/language.md, Limits)")
        self._evaluating.add(key)
        try:
            scope.cache[item.name] = compute()
        finally:
            self._evaluating.discard(key)
        return scope.cache[item.name]

    def _modality(self, scope: FileScope, item: ast.Modality) -> Modality:
        from nexusdsl.elaborate.modality import modality_spec

        call = self._evaluate(item.value, Frame(scope, ""))
        return Modality(modality_spec(item, call), item.span)

    def is_known(self, name: str, frame: Frame, span: Span) -> bool:
        """Whether a name means anything here (an ambiguous import counts: it is reported
        where it is resolved)."""
        try:
            return name in frame.env or lookup_global(frame.scope, name, span, BUILTINS) is not None
        except NexusError:
            return True


# ---------------------------------------------------------------------------- suggestions


def suggest(name: str, frame: Frame) -> str:
    """"; did you mean ...?" for an unknown name, among the frame's and the file's names."""
    return name_suggestion(name, [*frame.env, *frame.scope.defs])


def suggest_local(name: str, frame: Frame) -> str:
    """The same among the tensors of the frame, where a tensor is expected."""
    close = difflib.get_close_matches(name, [n for n, v in frame.env.items()
                                             if isinstance(v, Tensor)], n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def name_suggestion(name: str, names: list[str]) -> str:
    """What an unknown name may have meant: a stdlib block not imported, or a close name
    (a public op, an option function, or one of `names`)."""
    module = stdlib_blocks().get(name)
    if module is not None:  # the likeliest cause: a missing import
        return f"; `{name}` is a block of {module}: add `import {module}`"
    return close_match(name, [*public_op_names(), *OPTION_FUNCTIONS, *names])


def close_match(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""
