"""Blocks no model reaches are never elaborated, so their mistakes would go unseen until the
first call. This pass reads them as written and reports what needs no shapes to know: a
call of a name that is defined nowhere (an internal op included), and a keyword a builtin op
does not take. Shape mistakes in such a block still wait for a call (its axes have no sizes
until then).

The branches of `if` statements that an elaboration never took are read the same way
(`UntakenBranches`): `if i == 0 { ... } else { x = lienar(x, 4) }` in a one-layer model still
reports `lienar`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from nexusdsl.elaborate.modules import FileScope, lookup_global
from nexusdsl.elaborate.names import name_suggestion, public_op
from nexusdsl.elaborate.op_calls import no_such_argument
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError


def check_uncalled_blocks(scope: FileScope, builtins, sink: DiagnosticSink) -> None:
    referenced = _names_outside_blocks(scope)
    for item in scope.defs.values():
        if isinstance(item, ast.Block) and item.name not in referenced:
            for error in _block_mistakes(scope, builtins, item):
                sink.add(error)


def _names_outside_blocks(scope: FileScope) -> set[str]:
    """Every name a model, constant, modality, train section or another block mentions."""
    names: set[str] = set()
    for item in [*scope.defs.values(), *scope.models, *scope.trains]:
        for node in ast.walk(item):
            if isinstance(node, ast.Name) and not (isinstance(item, ast.Block)
                                                   and node.id == item.name):
                names.add(node.id)
    return names


def _block_mistakes(scope: FileScope, builtins, block: ast.Block) -> Iterator[NexusError]:
    yield from _call_mistakes(scope, builtins, block, _local_names(block))


def _call_mistakes(scope: FileScope, builtins, code, local: set[str]) -> Iterator[NexusError]:
    """Calls in `code` (a block, or a branch's statements) of names that are neither `local`
    nor defined anywhere, and keywords that the builtin op called does not take."""
    for call in (n for n in ast.walk(code) if isinstance(n, ast.Call)):
        if not isinstance(call.func, ast.Name) or call.func.id in local:
            continue
        name = call.func.id
        try:
            found = lookup_global(scope, name, call.func.span, builtins)
        except NexusError:
            continue  # an ambiguity: reported where it is used
        if found is None:
            yield NexusError.at(call.span, f"unknown function `{name}`"
                                + name_suggestion(name, [*local, *scope.defs]))
        elif found[0] == "builtin" and public_op(name) is not None:
            yield from _unknown_keywords(public_op(name), call)


def _unknown_keywords(op, call: ast.Call) -> Iterator[NexusError]:
    if op.Attrs.model_config.get("extra") == "allow":
        return
    for kw in call.kwargs:
        if kw.name not in op.Attrs.model_fields and kw.name not in op.inputs:
            yield no_such_argument(op, kw.name, kw.span)


def _local_names(block: ast.Block) -> set[str]:
    """Parameters, the axis names of their shapes, and every name the body assigns."""
    names = {p.name for p in block.params}
    for p in block.params:
        if p.type is not None:
            names |= {d.name for d in p.type.shape.dims if d.name}
    return names | _assigned(block.body)


def _assigned(code) -> set[str]:
    """Every name the statements of `code` bind, however deeply nested (loop indexes too)."""
    names: set[str] = set()
    for node in ast.walk(code):
        if isinstance(node, ast.Assign):
            names |= set(node.targets)
        elif isinstance(node, (ast.Experts, ast.Let)):
            names.add(node.name)
        elif isinstance(node, ast.Repeat) and node.var:
            names.add(node.var)
    return names


class UntakenBranches:
    """The branches of `if` statements one elaboration reached, and which of them it took. An
    `if` met several times (in a `repeat`, in a block called twice) may take each branch once;
    a branch never taken is read as written, with the local names it could see."""

    def __init__(self):
        self._untaken: dict[tuple, tuple[tuple[ast.Stmt, ...], FileScope, set[str]]] = {}
        self._taken: set[tuple] = set()

    def record(self, stmt: ast.If, taken: tuple[ast.Stmt, ...], scope: FileScope,
               local: Iterable[str]) -> None:
        for which, branch in enumerate((stmt.body, stmt.orelse)):
            key = (stmt.span, which)
            if branch is taken:
                self._taken.add(key)
            elif branch:
                entry = self._untaken.setdefault(key, (branch, scope, set()))
                entry[2].update(local)

    def mistakes(self, builtins: Any) -> Iterator[NexusError]:
        for key, (branch, scope, local) in self._untaken.items():
            if key not in self._taken:
                yield from _call_mistakes(scope, builtins, branch, local | _assigned(branch))
