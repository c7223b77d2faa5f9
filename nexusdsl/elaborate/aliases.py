"""`model Small = llama.Llama(dim = 256, depth = 2)`: a model that is another model with other
defaults. Its settings are evaluated in the alias's file (numbers, words, lists, `let`
constants, arithmetic) and become the target's defaults; the target's body is elaborated in
the target's own file, so its blocks and imports mean what they mean there."""

from __future__ import annotations

import dataclasses
from typing import Any

from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.modules import FileScope
from nexusdsl.elaborate.names import name_suggestion
from nexusdsl.elaborate.values import Symbol, describe
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note, Span


def resolve_alias(scope: FileScope, alias: ast.ModelAlias, sources: dict[str, str],
                  seen: tuple[str, ...] = ()) -> tuple[FileScope, ast.Model]:
    """The target model's scope and definition, with the alias's name and settings."""
    if alias.name in seen:
        raise NexusError.at(alias.span, f"model {alias.name} names itself through "
                            f"{' -> '.join(seen)}")
    target_scope, target = _target(scope, alias)
    if isinstance(target, ast.ModelAlias):
        target_scope, target = resolve_alias(target_scope, target, sources, (*seen, alias.name))
    values = _settings(scope, alias, sources)
    params = {p.name: p for p in target.params if p.type is None}
    for keyword in alias.kwargs:
        if keyword.name not in params:
            raise NexusError.at(keyword.span, f"model {target.name} has no hyperparameter "
                                f"`{keyword.name}`{name_suggestion(keyword.name, list(params))}",
                                Note(f"{target.name} is defined here", target.span))
    new_params = tuple(dataclasses.replace(p, default=_literal(values[p.name], p.span))
                       if p.name in values else p for p in target.params)
    return target_scope, dataclasses.replace(target, name=alias.name, params=new_params)


def _target(scope: FileScope, alias: ast.ModelAlias) -> tuple[FileScope, ast.Stmt]:
    expr = alias.target
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        module = scope.namespace(expr.value.id)
        if module is None:
            raise NexusError.at(expr.value.span, f"`{expr.value.id}` is no imported module")
        found, where = module.defs.get(expr.attr), module
    elif isinstance(expr, ast.Name):
        found, where = scope.defs.get(expr.id), scope
    else:
        raise NexusError.at(expr.span, "`model M = ...` names a model: `other.Model(...)`")
    if not isinstance(found, (ast.Model, ast.ModelAlias)):
        name = expr.attr if isinstance(expr, ast.Attribute) else expr.id
        models = [d.name for d in where.defs.values() if isinstance(d, (ast.Model, ast.ModelAlias))]
        raise NexusError.at(expr.span, f"`{name}` is no model{name_suggestion(name, models)} "
                            f"(models there: {', '.join(models) or 'none'})")
    return where, found


def _settings(scope: FileScope, alias: ast.ModelAlias, sources: dict[str, str]) -> dict[str, Any]:
    from nexusdsl.elaborate.elaborator import Elaborator

    elaborator = Elaborator(scope, DiagnosticSink(), sources)
    frame = Frame(scope, "", is_model=True)
    values = {}
    for keyword in alias.kwargs:
        value = elaborator.eval(keyword.value, frame)
        if isinstance(value, Symbol):
            value = value.name
        if not _plain(value):
            raise NexusError.at(keyword.value.span, f"`{keyword.name}` of model {alias.name} must "
                                f"be a number, a word, true/false or a list, got {describe(value)}")
        values[keyword.name] = value
    return values


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def _literal(value: Any, span: Span) -> ast.Expr:
    if isinstance(value, bool):
        return ast.Bool(span, value)
    if isinstance(value, int):
        return ast.Int(span, value)
    if isinstance(value, float):
        return ast.Float(span, value)
    if isinstance(value, str):
        return ast.Name(span, value)  # a word, as written in the target's defaults
    return ast.ListExpr(span, tuple(_literal(v, span) for v in value))
