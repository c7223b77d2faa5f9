"""What an editor asks about a `.nx` file, answered from the compiler itself: diagnostics, the
shape and parameter count of the value under the cursor, where a name is defined, and what can
be typed next. The language server (`tools/lsp.py`) is a thin layer over this module.

Positions here are 1-based (line, column), as in `Span`; the server converts to LSP's 0-based.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from lark.exceptions import LarkError

from nexusdsl.elaborate.elaborator import Elaborator
from nexusdsl.elaborate.modules import FileScope, Loader, lookup_global
from nexusdsl.elaborate.names import BUILTINS, public_op
from nexusdsl.elaborate.observer import Observer
from nexusdsl.elaborate.program import loads
from nexusdsl.elaborate.statements import bound_names
from nexusdsl.elaborate.values import Tensor
from nexusdsl.ir.graph import Node
from nexusdsl.ir.printer import format_type
from nexusdsl.ir.types import TensorType
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Span
from nexusdsl.ops import REGISTRY
from nexusdsl.resources import stdlib_path
from nexusdsl.tools.tokens import Tok, tokenize
from nexusdsl.tools.viz import own_params

SpanKey = tuple[int, int, int, int]  # line, col, end_line, end_col (end exclusive)


@dataclass(frozen=True)
class Instance:
    """One value an expression took while its model was elaborated (a `repeat` body or a block
    called twice gives several)."""

    type: TensorType
    node: str  # the IR node that made it
    params: int  # parameters of the nodes the expression itself created


@dataclass
class Analysis:
    file: str
    text: str
    error: NexusError | None = None  # what `nexusdsl.loads` reports; None when the file is fine
    scope: FileScope | None = None  # the parsed file with its imports (None on a syntax error)
    values: dict[SpanKey, list[Instance]] = field(default_factory=dict)
    # hyperparameter values (numbers, true/false, words, lists) of the expressions that are not
    # literals: `i`, `ws[i]`, `i % 2 == 0`, one per evaluation (so one per step of a `repeat`)
    settings: dict[SpanKey, list] = field(default_factory=dict)


def _key(span: Span) -> SpanKey:
    end_line = span.end_line or span.line
    end_col = span.end_col if span.end_line else span.col + 1
    return (span.line, span.col, end_line, end_col)


def _contains(key: SpanKey, line: int, col: int) -> bool:
    return (key[0], key[1]) <= (line, col) < (key[2], key[3])


class _Recorder(Observer):
    """Watches the elaborator, noting the value of every expression of one file as it goes."""

    def __init__(self, file: str, names):
        self.file = file
        self.names = names  # (line, name) -> the NAME token, for statement targets
        self.values: dict[SpanKey, list[Instance]] = {}
        self.settings: dict[SpanKey, list] = {}
        self._made: dict[SpanKey, list[Node]] = {}  # by the call proper, not its arguments

    def on_call(self, span: Span, made: list[Node]) -> None:
        if span.file == self.file:
            self._made[_key(span)] = made

    def on_value(self, expr: ast.Expr, value, made: list[Node]) -> None:
        if expr.span.file != self.file:
            return
        key = _key(expr.span)
        own = self._made.pop(key, None)  # a call: its own nodes, not those of its arguments
        if own is None and not isinstance(expr, ast.Name):
            own = made
        self._note(key, value, own or [])
        if _is_setting(value) and not isinstance(expr, _LITERALS):
            self.settings.setdefault(key, []).append(value)

    def _note(self, key: SpanKey, value, made: list[Node]) -> None:
        tensor = value[0] if isinstance(value, tuple) and value else value
        if isinstance(tensor, Tensor):
            params = sum(own_params(n) for n in made)
            self.values.setdefault(key, []).append(Instance(tensor.type, tensor.node_name, params))

    def on_statement(self, stmt: ast.Stmt, env) -> None:
        if stmt.span.file != self.file:
            return
        for name in bound_names(stmt):
            tok = self.names.get((stmt.span.line, name))
            value = env.get(name)
            if isinstance(stmt, ast.Output) and stmt.value is not None:
                found = self.values.get(_key(stmt.value.span))
                if tok is not None and found:
                    self.values.setdefault((tok.line, tok.col, tok.line, tok.end_col), []).append(found[-1])
            elif tok is not None and isinstance(value, Tensor):
                self._note((tok.line, tok.col, tok.line, tok.end_col), value, [])


_LITERALS = (ast.Int, ast.Float, ast.Str, ast.Bool)


def _is_setting(value) -> bool:
    """A value known while compiling that hover can show: a number, true/false, a string, or a
    list of those."""
    if isinstance(value, (list, tuple)):
        return all(_is_setting(v) for v in value)
    return isinstance(value, (int, float, str))


def _name_tokens(text: str) -> dict[tuple[int, str], Tok]:
    found: dict[tuple[int, str], Tok] = {}
    for tok in safe_tokens(text):
        if tok.kind == "NAME":
            found.setdefault((tok.line, tok.text), tok)
    return found


def safe_tokens(text: str) -> list[Tok]:
    """The tokens of `text`, up to the first character the language does not have."""
    try:
        return tokenize(text)
    except LarkError as err:
        stop = getattr(err, "pos_in_stream", None)
        return tokenize(text[:stop]) if stop else []


def analyze(text: str, file: str) -> Analysis:
    """Check `text` (the contents of `file`) and note the value of each of its expressions."""
    result = Analysis(file, text)
    try:
        loads(text, file)
    except NexusError as err:
        result.error = err
    sink = DiagnosticSink()
    loader = Loader(sink)
    key = str(Path(file).resolve()) if Path(file).is_file() else file
    try:
        result.scope = loader.load_text(text, file, key)
    except NexusError:
        return result  # a syntax error: nothing to elaborate
    names = _name_tokens(text)
    for model in result.scope.models:
        recorder = _Recorder(file, names)
        elaborator = Elaborator(result.scope, DiagnosticSink(), loader.sources, observer=recorder)
        try:
            elaborator.build_model(model, {})
        except NexusError:
            pass  # reported through `error`; what was built before the mistake is kept
        for k, found in recorder.values.items():
            result.values.setdefault(k, []).extend(found)
        for k, found in recorder.settings.items():
            result.settings.setdefault(k, []).extend(found)
    return result


# ----------------------------------------------------------------------------- hover


def token_at(text: str, line: int, col: int) -> tuple[Tok | None, list[Tok]]:
    tokens = [t for t in safe_tokens(text) if t.kind not in ("WS", "NL")]
    for i, tok in enumerate(tokens):
        if tok.line == line and tok.col <= col < tok.end_col:
            return tok, tokens[:i]
    return None, tokens


def hover(result: Analysis, line: int, col: int) -> str | None:
    """Markdown: the type, maker and parameter count of the innermost value under the cursor,
    and the signature of the op or block named there."""
    parts = []
    inside = [k for k in [*result.values, *result.settings] if _contains(k, line, col)]
    if inside:
        key = min(inside, key=lambda k: (k[2] - k[0], k[3] - k[1] if k[2] == k[0] else k[3]))
        source = _source(result.text, key)
        parts.append(_describe(result.values[key], source) if key in result.values
                     else _describe_setting(result.settings[key], source))
    tok, before = token_at(result.text, line, col)
    index = _loop_index(result, tok)
    if index:
        parts.append(index)
    if tok is not None and tok.kind == "NAME":
        signature = _signature(result, tok, before)
        if signature:
            parts.append(signature)
    return "\n\n".join(parts) or None


def _source(text: str, key: SpanKey) -> str:
    lines = text.splitlines()
    if key[0] != key[2] or key[0] > len(lines):
        first = lines[key[0] - 1][key[1] - 1:] if key[0] <= len(lines) else ""
        return first.strip() + " ..."
    return lines[key[0] - 1][key[1] - 1:key[3] - 1]


def _describe(instances: list[Instance], source: str) -> str:
    first = instances[0]
    types = list(dict.fromkeys(format_type(i.type, True) for i in instances))
    lines = [f"`{_shorten(source)}` : **{' | '.join(f'`{t}`' for t in types)}**",
             f"made by `{first.node}`"]
    params = [i.params for i in instances]
    if any(params):
        each = f"{params[0]:,}" if len(set(params)) == 1 else " / ".join(f"{p:,}" for p in params)
        lines.append(f"parameters: {each}" + (" each" if len(instances) > 1 else ""))
    if len(instances) > 1:
        lines.append(f"{len(instances)} instances: `{instances[0].node}` ... `{instances[-1].node}`")
    return "  \n".join(lines)


def _describe_setting(values: list, source: str, shown: int = 8) -> str:
    """`ws[i]` : **`8` | `16`**: the values an expression took, each once, in order."""
    unique = list(dict.fromkeys(_nx_literal(v) for v in values))
    text = " | ".join(f"`{v}`" for v in unique[:shown])
    if len(unique) > shown:
        text += f" | ... ({len(unique)} values)"
    return f"`{_shorten(source)}` : **{text}**"


def _loop_index(result: Analysis, tok: Tok | None) -> str | None:
    """On the `i` of `repeat n as i`: what it counts."""
    if tok is None or result.scope is None:
        return None
    for node in ast.walk(result.scope.program.items):
        span = getattr(node, "var_span", None)
        if isinstance(node, ast.Repeat) and span and (span.line, span.col) == (tok.line, tok.col):
            counts = set(result.settings.get(_key(node.count.span), []))
            if isinstance(node.count, ast.Int):
                counts = {node.count.value}
            last = f" to `{counts.pop() - 1}`" if len(counts) == 1 else ""
            return f"`{node.var}`: the index of each step of this `repeat`, from `0`{last}"
    return None


def _shorten(source: str, width: int = 60) -> str:
    return source if len(source) <= width else source[: width - 3] + "..."


def _signature(result: Analysis, tok: Tok, before: list[Tok]) -> str | None:
    target = _resolve(result, tok, before)
    if isinstance(target, tuple):
        scope, item = target
        if isinstance(item, ast.Block):
            header = _source(scope.program.source, _key(item.span)).split("{")[0].strip()
            return f"```nx\n{header}\n```"
        return None
    if target == "builtin" and public_op(tok.text) is not None:
        return op_signature(tok.text)
    return None


def op_signature(name: str) -> str:
    op = REGISTRY[name]
    fields = [field_detail(k, f) for k, f in op.Attrs.model_fields.items()]
    head = f"{name}({', '.join([*op.inputs, *fields])})"
    doc = (inspect.getdoc(type(op)) or "").split("\n\n")[0]
    return f"```nx\n{head}\n```\n{doc}".rstrip()


# ----------------------------------------------------------------------------- definitions


def _resolve(result: Analysis, tok: Tok, before: list[Tok]):
    """What a name token refers to: (scope, definition), "builtin", or None."""
    scope = result.scope
    if scope is None:
        return None
    if len(before) >= 2 and before[-1].text == "." and before[-2].kind == "NAME":
        namespace = scope.namespace(before[-2].text)
        item = namespace.defs.get(tok.text) if namespace else None
        return (namespace, item) if item else None
    try:
        found = lookup_global(scope, tok.text, Span(result.file, tok.line, tok.col), BUILTINS)
    except NexusError:
        return None
    if found is None:
        return None
    kind, what = found
    if kind == "namespace":
        return (what, None)
    return what if kind == "def" else kind


def definition(result: Analysis, line: int, col: int) -> Span | None:
    """Where the name under the cursor is defined: a block, model, constant or modality (in
    this file or an imported one), an imported module, or a local value of the enclosing body."""
    tok, before = token_at(result.text, line, col)
    if tok is None or result.scope is None:
        return None
    if _on_import_line(tok, before):
        return _import_target(result, tok.line)
    if tok.kind != "NAME":
        return None
    local = _local_definition(result, tok)
    if local is not None:
        return local
    target = _resolve(result, tok, before)
    if isinstance(target, tuple):
        scope, item = target
        if item is None:  # a module name: the top of its file
            return Span(scope.file, 1, 1, 1, 1)
        return item.span
    return None


def _on_import_line(tok: Tok, before: list[Tok]) -> bool:
    same_line = [t for t in before if t.line == tok.line]
    return bool(same_line) and same_line[0].text == "import" or tok.text == "import"


def _import_target(result: Analysis, line: int) -> Span | None:
    for item in result.scope.program.items:
        if isinstance(item, ast.Import) and item.span.line == line:
            if item.is_file:
                path = Path(result.file).parent / item.module
            else:
                path = stdlib_path(item.module)
            return Span(str(path), 1, 1, 1, 1) if path.is_file() else None
    return None


def _local_definition(result: Analysis, tok: Tok) -> Span | None:
    """The last binding of the name before its use in the enclosing block or model (its
    parameters, assignments, inputs, experts and `as` names); the first one if none is before."""
    item = next((i for i in result.scope.program.items if isinstance(i, (ast.Block, ast.Model))
                 and _contains(_key(i.span), tok.line, tok.col)), None)
    if item is None:
        return None
    tokens = [t for t in safe_tokens(result.text) if t.kind not in ("WS", "NL", "COMMENT")]
    sites = [Span(result.file, p.span.line, p.span.col, p.span.line, p.span.col + len(p.name))
             for p in item.params if p.name == tok.text]
    sites += _bindings(item.body, tok.text, tokens, result.file)
    if not sites:
        return None
    # a statement binds its names after reading them: `x = x + 1` reads an earlier `x`
    earlier = [s for s in sites if s.line < tok.line or (s.line, s.col) == (tok.line, tok.col)]
    return max(earlier, key=lambda s: (s.line, s.col)) if earlier else sites[0]


def _bindings(body, name: str, tokens: list[Tok], file: str) -> list[Span]:
    found: list[Span] = []
    for stmt in body:
        if isinstance(stmt, ast.Repeat):
            if stmt.var == name and stmt.var_span is not None:  # `repeat n as i`
                found.append(stmt.var_span)
            found += _bindings(stmt.body, name, tokens, file)
            continue
        if isinstance(stmt, ast.If):  # what a branch binds is visible after the `if`
            found += _bindings((*stmt.body, *stmt.orelse), name, tokens, file)
            continue
        key = _key(stmt.span)
        named = [i for i, t in enumerate(tokens) if t.text == name and _contains(key, t.line, t.col)]
        bound = getattr(stmt, "targets", None) or (getattr(stmt, "name", None),)
        sites = named[:1] if name in bound else []
        sites += [i for i in named if i > 0 and tokens[i - 1].text == "as"]  # `call as name`
        found += [Span(file, tokens[i].line, tokens[i].col, tokens[i].line, tokens[i].end_col)
                  for i in sites]
    return found


def field_detail(name: str, f) -> str:
    """`heads`, `causal = false`: an op attribute as it is written in `.nx`."""
    if f.is_required() or f.default_factory is not None:
        return name
    return f"{name} = {_nx_literal(f.default)}"


def _nx_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return value if value.isidentifier() else f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_nx_literal(v) for v in value) + "]"
    return repr(value)
