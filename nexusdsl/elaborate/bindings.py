"""`bind` sections: which checkpoint tensors fill which parameters of a model
(docs/language.md, "Weights from checkpoints").

A rule `"blocks.{i}.attention.qkv.weight" <- concat("layers.{i}.q", "layers.{i}.k", ...)` is a
pattern over the model's parameter names: `{i}` matches a number, and the same name inside a
checkpoint key (`"model.layers.{i + 6}.mlp"`) is replaced by its value, arithmetic allowed.
Everything is checked against the model and the safetensors headers before any tensor is read:
each rule binds at least one parameter, no parameter twice, every key exists, every result has
its parameter's shape, and every tensor of a checkpoint is used or ignored (`ignore "pattern"`).
Mistakes are located at the rule and name both sides.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from nexusdsl.elaborate.modules import FileScope
from nexusdsl.elaborate.names import name_suggestion
from nexusdsl.ir.graph import Graph, ParamSpec
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note, Span
from nexusdsl.ops.base import state_specs
from nexusdsl.weights.checkpoints import CheckpointError, Source, open_source, resolve
from nexusdsl.weights.transforms import TRANSFORMS, Concat, Read, TransformError, Tree, Unary

_FLOATS = ("f64", "f32", "f16", "bf16")


@dataclass
class Binding:
    """A model's bound parameters: state_dict name -> what fills it, and which are frozen."""

    plan: dict[str, Tree] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    sources: list[Source] = field(default_factory=list)
    rules: dict[str, Span] = field(default_factory=dict)  # parameter -> the rule binding it

    @property
    def dtype(self) -> str | None:
        """The dtype every bound tensor has, when they agree (a bf16 checkpoint: bf16)."""
        kinds = {tree.dtype for tree in self.plan.values()}
        return kinds.pop() if len(kinds) == 1 else None


@dataclass(frozen=True)
class _Rule:
    target: str
    source_expr: ast.Expr
    source: str | None  # the bind source it reads by default
    span: Span


def bind_model(scope: FileScope, model: str, graph: Graph, sources: dict[str, str]) -> Binding | None:
    """The binding of `model` by the `bind` sections of `scope`, checked; None if it has none."""
    sections = [b for b in scope.binds if b.model == model]
    if not sections:
        return None
    sink = DiagnosticSink()
    binding = Binding()
    params = {name: spec for name, spec in state_specs(graph).items() if not spec.tied_to}
    for section in sections:
        try:
            _bind_section(scope, section, params, binding)
        except NexusError as err:
            sink.add(err)
    sink.raise_if_any(sources)
    return binding


def check_binds(scope: FileScope, models: list[str], sink: DiagnosticSink) -> None:
    """A bind section names a model of its file."""
    for section in scope.binds:
        if section.model not in models:
            sink.add(NexusError.at(section.span, f"`bind {section.model}`: no model named "
                                   f"{section.model}{name_suggestion(section.model, models)}"))


def _bind_section(scope: FileScope, section: ast.Bind, params: dict[str, ParamSpec],
                  binding: Binding) -> None:
    opened = _open_sources(section, scope.file)
    binding.sources.extend(opened.values())
    default = next(iter(opened)) if len(opened) == 1 else None
    rules, ignores = _rules(scope, section.body, "", default, opened, ())
    used: dict[str, set[str]] = {name: set() for name in opened}
    errors = []
    for rule in rules:
        try:
            _apply(rule, params, opened, used, binding, section.frozen)
        except NexusError as err:
            errors.extend(err.diagnostics)
    if errors:
        raise NexusError(errors)
    _check_unused(section, opened, used, ignores)


def _open_sources(section: ast.Bind, nx_file: str) -> dict[str | None, Source]:
    if not section.sources:
        raise NexusError.at(section.span, f"`bind {section.model}` reads no checkpoint: write "
                            f'`bind {section.model} from "path/to/checkpoint" {{ ... }}`')
    opened = {}
    for source in section.sources:
        if source.name in opened:
            raise NexusError.at(source.span, f"two sources are named {source.name}")
        try:
            opened[source.name] = open_source(resolve(source.path, nx_file))
        except CheckpointError as err:
            raise NexusError.at(source.span, str(err)) from None
    if len(opened) > 1 and None in opened:
        raise NexusError.at(section.span, "with several sources, name each: "
                            '`from a = "dir1", b = "dir2"`')
    return opened


# ---------------------------------------------------------------------------- rules


def _rules(scope: FileScope, body, prefix: str, source: str | None,
           opened: dict, seen: tuple[str, ...]) -> tuple[list[_Rule], list[tuple]]:
    """The rules of a body with `use` expanded: (rules, ignores as (pattern, source, span))."""
    rules, ignores = [], []
    for stmt in body:
        if isinstance(stmt, ast.BindRule):
            target = f"{prefix}.{stmt.target}" if prefix else stmt.target
            rules.append(_Rule(target, stmt.source, source, stmt.span))
        elif isinstance(stmt, ast.BindIgnore):
            ignores.append((stmt.pattern, _source_name(stmt.source, source, opened, stmt.span),
                            stmt.span))
        elif isinstance(stmt, ast.BindUse):
            inner_scope, weights = _weights(scope, stmt)
            identity = f"{inner_scope.file}:{weights.name}"  # mistral.hf may use llama.hf
            if identity in seen:
                raise NexusError.at(stmt.span, f"weights {weights.name} uses itself")
            inner = _source_name(stmt.source, source, opened, stmt.span)
            joined = ".".join(p for p in (prefix, stmt.prefix) if p)
            more, more_ignores = _rules(inner_scope, weights.body, joined, inner, opened,
                                        (*seen, identity))
            rules += more
            ignores += more_ignores
    return rules, ignores


def _source_name(name: str | None, default: str | None, opened: dict, span: Span):
    if name is None:
        return default
    if name not in opened:
        names = [n for n in opened if n]
        raise NexusError.at(span, f"no source named {name} (this bind reads "
                            f"{', '.join(names) or 'one unnamed source'})")
    return name


def _weights(scope: FileScope, stmt: ast.BindUse) -> tuple[FileScope, ast.Weights]:
    *module, name = stmt.rules.split(".")
    where = scope
    for part in module:
        where = where.namespace(part) if where is not None else None
    found = where.defs.get(name) if where is not None else None
    if not isinstance(found, ast.Weights):
        known = [d.name for d in (where or scope).defs.values() if isinstance(d, ast.Weights)]
        raise NexusError.at(stmt.span, f"`use {stmt.rules}`: no `weights {name}` there"
                            f"{name_suggestion(name, known)}")
    return where, found


def _apply(rule: _Rule, params: dict[str, ParamSpec], opened: dict, used: dict,
           binding: Binding, frozen: bool) -> None:
    regex, names = _pattern(rule.target, rule.span)
    matched = 0
    for param, spec in params.items():
        found = regex.fullmatch(param)
        if not found:
            continue
        matched += 1
        values = {k: int(v) for k, v in found.groupdict().items()}
        tree = _tree(rule.source_expr, values, rule.source, opened, used)
        _check(rule, param, spec, tree)
        if param in binding.plan:
            raise NexusError.at(rule.span, f"{param} is bound twice",
                                Note("first bound here", binding.rules[param]))
        binding.plan[param], binding.rules[param] = tree, rule.span
        if frozen:
            binding.frozen.add(param)
    if not matched:
        close = [p for p in params if p.split(".")[-1] == rule.target.split(".")[-1]]
        hint = f" (parameters named like it: {', '.join(close[:3])})" if close else ""
        raise NexusError.at(rule.span, f"`{rule.target}` names no parameter of the model{hint}")


def _pattern(target: str, span: Span) -> tuple[re.Pattern, list[str]]:
    parts, names, pos = [], [], 0
    for m in re.finditer(r"\{(\w+)\}", target):
        parts.append(re.escape(target[pos:m.start()]))
        name = m.group(1)
        if name in names:
            parts.append(f"(?P={name})")
        else:
            parts.append(f"(?P<{name}>\\d+)")
            names.append(name)
        pos = m.end()
    parts.append(re.escape(target[pos:]))
    if "{" in target[pos:] or "}" in target[pos:]:
        raise NexusError.at(span, f"`{target}`: a target holds names in braces, like "
                            "`blocks.{i}.weight`")
    return re.compile("".join(parts)), names


def _check(rule: _Rule, param: str, spec: ParamSpec, tree: Tree) -> None:
    if tree.dtype not in _FLOATS:
        raise NexusError.at(rule.span, f"{param} is a float parameter, but the rule gives "
                            f"{tree.dtype} ({tree})")
    if tuple(tree.shape) != tuple(spec.shape):
        raise NexusError.at(rule.span, f"{param} is {list(spec.shape)}, but the rule gives "
                            f"{list(tree.shape)}: {tree}")


# ---------------------------------------------------------------------------- sources


def _tree(expr: ast.Expr, values: dict[str, int], source: str | None, opened: dict,
          used: dict) -> Tree:
    """What a rule's right side computes, for one match of its target."""
    if isinstance(expr, ast.Str):
        return _read(expr, expr.value, values, source, opened, used)
    if isinstance(expr, ast.Index) and isinstance(expr.value, ast.Name) and isinstance(expr.index, ast.Str):
        name = _source_name(expr.value.id, source, opened, expr.value.span)
        return _read(expr.index, expr.index.value, values, name, opened, used)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        return _transform(expr, values, source, opened, used)
    raise NexusError.at(expr.span, 'a rule reads a checkpoint key ("model.layers.{i}.weight"), '
                        'a key of a named source (b["key"]) or a transform of them '
                        '(concat, split, transpose, permute, reshape, slice, select, rotary_halves)')


def _read(expr: ast.Expr, template: str, values: dict, source: str | None, opened: dict,
          used: dict) -> Tree:
    if source is None and len(opened) > 1:
        raise NexusError.at(expr.span, "this bind has several sources: say which, "
                            f'`{next(k for k in opened if k)}["{template}"]`')
    key = _fill(template, values, expr.span)
    checkpoint = opened[source]
    info = checkpoint.tensors.get(key)
    if info is None:
        raise NexusError.at(expr.span, f"{checkpoint.path} has no tensor {key}"
                            f"{name_suggestion(key, list(checkpoint.tensors))}")
    used[source].add(key)
    return Read(checkpoint, info)


_FILL = re.compile(r"\{([^{}]*)\}")


def _fill(template: str, values: dict[str, int], span: Span) -> str:
    """`"model.layers.{i + 6}.mlp"` with i = 2 -> "model.layers.8.mlp"."""
    def value(m: re.Match) -> str:
        return str(_arith(m.group(1), values, span))
    return _FILL.sub(value, template)


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(//|[-+*%()]))")


def _arith(text: str, values: dict[str, int], span: Span) -> int:
    """Integer arithmetic over the target's names: + - * // % and parentheses (no eval)."""
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m:
            raise NexusError.at(span, f"`{{{text}}}`: only numbers, the target's names and "
                                "+ - * // % ( ) may stand in braces")
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    result, rest = _sum(tokens, values, span, text)
    if rest:
        raise NexusError.at(span, f"`{{{text}}}` is not an expression")
    return result


def _sum(tokens, values, span, text):
    left, tokens = _product(tokens, values, span, text)
    while tokens and tokens[0] in "+-":
        op, (right, tokens) = tokens[0], _product(tokens[1:], values, span, text)
        left = left + right if op == "+" else left - right
    return left, tokens


def _product(tokens, values, span, text):
    left, tokens = _atom(tokens, values, span, text)
    while tokens and tokens[0] in ("*", "//", "%"):
        op, (right, tokens) = tokens[0], _atom(tokens[1:], values, span, text)
        if op != "*" and right == 0:
            raise NexusError.at(span, f"`{{{text}}}` divides by zero")
        left = left * right if op == "*" else left // right if op == "//" else left % right
    return left, tokens


def _atom(tokens, values, span, text):
    if not tokens:
        raise NexusError.at(span, f"`{{{text}}}` is not an expression")
    head, rest = tokens[0], tokens[1:]
    if head == "(":
        value, rest = _sum(rest, values, span, text)
        if not rest or rest[0] != ")":
            raise NexusError.at(span, f"`{{{text}}}` has an unclosed (")
        return value, rest[1:]
    if head == "-":
        value, rest = _atom(rest, values, span, text)
        return -value, rest
    if head.isdigit():
        return int(head), rest
    if head in values:
        return values[head], rest
    raise NexusError.at(span, f"`{{{text}}}`: {head} is not a name of the target "
                        f"({', '.join(values) or 'it has none'})")


def _transform(expr: ast.Call, values: dict, source, opened, used) -> Tree:
    name = expr.func.id
    if name == "concat":
        settings = {k.name: _setting(k.value, values) for k in expr.kwargs}
        unknown = set(settings) - {"axis"}
        if unknown or not expr.args:
            raise NexusError.at(expr.span, "concat(a, b, ..., axis = 0) joins checkpoint tensors")
        parts = [_tree(a, values, source, opened, used) for a in expr.args]
        return _made(lambda: Concat(parts, settings.get("axis", 0)), expr)
    if name not in TRANSFORMS:
        raise NexusError.at(expr.func.span, f"no transform `{name}`"
                            f"{name_suggestion(name, ['concat', *TRANSFORMS])} (there are concat, "
                            f"{', '.join(TRANSFORMS)})")
    order, defaults = TRANSFORMS[name]
    if not expr.args:
        raise NexusError.at(expr.span, f"{name}(...) takes a tensor first")
    settings = dict(defaults)
    for key, arg in zip(order, expr.args[1:]):
        settings[key] = _setting(arg, values)
    if len(expr.args) - 1 > len(order):
        raise NexusError.at(expr.span, f"{name} takes {', '.join(order) or 'no settings'}")
    for k in expr.kwargs:
        if k.name not in order:
            raise NexusError.at(k.span, f"{name} has no setting `{k.name}`")
        settings[k.name] = _setting(k.value, values)
    missing = [k for k in order if k not in settings]
    if missing:
        raise NexusError.at(expr.span, f"{name}(...) needs `{missing[0]}`")
    x = _tree(expr.args[0], values, source, opened, used)
    return _made(lambda: Unary(x, name, settings), expr)


def _made(build, expr: ast.Call) -> Tree:
    try:
        return build()
    except TransformError as err:
        raise NexusError.at(expr.span, str(err)) from None


def _setting(expr: ast.Expr, values: dict[str, int]) -> Any:
    """A transform's setting: an integer (the target's names and arithmetic allowed) or a
    list of them."""
    if isinstance(expr, ast.ListExpr):
        return [_setting(e, values) for e in expr.items]
    if isinstance(expr, ast.Int):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and expr.op == "-":
        return -_setting(expr.operand, values)
    if isinstance(expr, ast.Name) and expr.id in values:
        return values[expr.id]
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*", "//", "%"):
        left, right = _setting(expr.left, values), _setting(expr.right, values)
        if expr.op in ("//", "%") and right == 0:
            raise NexusError.at(expr.span, "a setting divides by zero")
        return {"+": left + right, "-": left - right, "*": left * right,
                "//": left // right if right else 0, "%": left % right if right else 0}[expr.op]
    raise NexusError.at(expr.span, "a transform's setting is a whole number (or a list of "
                        "them), written with the target's names if need be")


def _check_unused(section: ast.Bind, opened: dict, used: dict, ignores: list) -> None:
    for name, checkpoint in opened.items():
        patterns = [p for p, src, _ in ignores if src == name]
        left = sorted(key for key in checkpoint.tensors
                      if key not in used[name] and not any(fnmatch.fnmatchcase(key, p)
                                                           for p in patterns))
        if left:
            label = f"{name} ({checkpoint.path})" if name else str(checkpoint.path)
            sample = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
            raise NexusError.at(section.span, f"{len(left)} tensors of {label} are bound to no "
                                f"parameter: {sample}; bind them, or write `ignore \"pattern\"` "
                                "for those you leave out")


def freeze_params(graph: Graph, names: set[str], prefix: str = "") -> Graph:
    """The graph with these parameters (state_dict names) marked frozen: a `frozen` bind's."""
    from nexusdsl.ops.base import REGISTRY

    for node in graph.nodes():
        owner = node.shares or node.name  # a sharing node's parameters are its owner's
        params = {key: spec.model_copy(update={"frozen": True})
                  if f"{prefix}{owner}.{key}" in names else spec
                  for key, spec in node.params.items()}
        region_name = REGISTRY[node.op].region_name if node.op in REGISTRY else "regions"
        regions = [freeze_params(r, names, f"{prefix}{node.name}.{region_name}.{i}.")
                   for i, r in enumerate(node.regions)]
        if params != node.params or regions != node.regions:
            graph.replace(node, node.model_copy(update={"params": params, "regions": regions}))
    return graph
