"""Completion for the language server: what may be typed at the cursor. Positions are
1-based (line, column), as in `Span`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from nexusdsl.elaborate.modules import OPTION_FUNCTIONS
from nexusdsl.elaborate.names import public_op, public_op_names
from nexusdsl.lang import ast
from nexusdsl.tools.analysis import Analysis, field_detail, safe_tokens
from nexusdsl.tools.tokens import KEYWORDS, Tok


@dataclass(frozen=True)
class Completion:
    label: str
    kind: str  # keyword-argument | op | function | block | module | keyword | option | value
    detail: str = ""
    insert: str | None = None


def completions(result: Analysis, text: str, line: int, col: int) -> list[Completion]:
    """What may be typed at the cursor: the keyword arguments of the call it is in (an op's
    attributes or a block's hyperparameters), then the local names of the block or model it
    is in (the index of an enclosing `repeat ... as i` included), the names of the ops a file
    may call, `len`, definitions, modules, keywords."""
    offset = _offset(text, line, col)
    tokens = [t for t in safe_tokens(text[:offset]) if t.kind not in ("WS", "NL", "COMMENT")]
    if tokens and tokens[-1].kind in ("NAME", "KEYWORD") and tokens[-1].end_col == col \
            and tokens[-1].line == line:
        tokens = tokens[:-1]  # the word being typed
    items = _keyword_arguments(result, tokens)
    items += _local_names(result, line, col)
    items += [Completion(name, "op", _first_line(public_op(name))) for name in public_op_names()]
    items += [Completion("len", "function", "len(xs): the number of items of a list")]
    items += _definitions(result)
    items += [Completion(k, "keyword") for k in sorted(KEYWORDS)]
    items += [Completion(k, "option") for k in sorted(OPTION_FUNCTIONS)]
    seen, unique = set(), []
    for item in items:
        if item.label not in seen:
            seen.add(item.label)
            unique.append(item)
    return unique


def _offset(text: str, line: int, col: int) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[: line - 1]) + col - 1


def _first_line(op) -> str:
    return (inspect.getdoc(type(op)) or "").split("\n")[0]


def _callee(tokens: list[Tok]) -> list[str] | None:
    """The dotted name of the call whose parentheses the cursor is in, if the cursor stands
    where a keyword argument may go (just after `(` or `,`)."""
    if not tokens or tokens[-1].text not in ("(", ","):
        return None
    depth = 0
    for i in range(len(tokens) - 1, -1, -1):
        text = tokens[i].text
        if text in (")", "]", "}"):
            depth += 1
        elif text in ("(", "[", "{"):
            if depth:
                depth -= 1
                continue
            if text != "(" or i == 0 or tokens[i - 1].kind != "NAME":
                return None
            name = [tokens[i - 1].text]
            j = i - 2
            while j >= 1 and tokens[j].text == "." and tokens[j - 1].kind == "NAME":
                name.insert(0, tokens[j - 1].text)
                j -= 2
            return name
    return None


def _keyword_arguments(result: Analysis, tokens: list[Tok]) -> list[Completion]:
    callee = _callee(tokens)
    if callee is None:
        return []
    name = callee[-1]
    op = public_op(name) if len(callee) == 1 else None
    if op is not None and not _defined_here(result, name):
        return [Completion(k, "keyword-argument", field_detail(k, f), f"{k} = ")
                for k, f in op.Attrs.model_fields.items()]
    block = _block_named(result, callee)
    if block is None:
        return []
    return [Completion(p.name, "keyword-argument", f"block {block.name}", f"{p.name} = ")
            for p in block.params if p.type is None]


def _defined_here(result: Analysis, name: str) -> bool:
    return result.scope is not None and name in result.scope.defs


def _block_named(result: Analysis, callee: list[str]) -> ast.Block | None:
    scope = result.scope
    if scope is None:
        return None
    if len(callee) == 2:
        scope = scope.namespace(callee[0])
        if scope is None:
            return None
    item = scope.defs.get(callee[-1])
    if item is None and len(callee) == 1:
        for _, imported in scope.imports:
            item = item or imported.defs.get(callee[-1])
    return item if isinstance(item, ast.Block) else None


def _local_names(result: Analysis, line: int, col: int) -> list[Completion]:
    """The parameters of the block or model around the cursor, the names its statements bind on
    earlier lines, and the index of every `repeat ... as i` whose body holds the cursor."""
    scope = result.scope
    item = next((i for i in scope.program.items if isinstance(i, (ast.Block, ast.Model))
                 and _encloses(i.span, line, col)), None) if scope is not None else None
    if item is None:
        return []
    items = [Completion(p.name, "value", "hyperparameter" if p.type is None else "tensor input")
             for p in item.params]
    for node in ast.walk(item.body):
        if isinstance(node, ast.Repeat) and node.var and _encloses(node.span, line, col) \
                and (node.var_span.line, node.var_span.col) < (line, col):
            items.append(Completion(node.var, "value", "the index of each step of this repeat"))
        elif isinstance(node, ast.Stmt) and node.span.line < line:
            bound = getattr(node, "targets", None) or (getattr(node, "name", None),)
            items += [Completion(n, "value", "local") for n in bound if isinstance(n, str)]
    return items


def _encloses(span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col)


def _definitions(result: Analysis) -> list[Completion]:
    scope = result.scope
    if scope is None:
        return []
    items = []
    for owner in [scope, *(s for _, s in scope.imports)]:
        for name, item in owner.defs.items():
            kind = "block" if isinstance(item, ast.Block) else "value"
            where = "" if owner is scope else f" (from {Path(owner.file).name})"
            items.append(Completion(name, kind, f"{type(item).__name__.lower()} {name}{where}"))
    items += [Completion(alias, "module", f"module {s.file}") for alias, s in scope.imports]
    return items
