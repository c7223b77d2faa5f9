"""Source text -> AST. Lark (LALR) parses with `grammar/nexus.lark`; a Transformer builds the
frozen AST of `lang/ast.py`. Syntax errors become located diagnostics, and a file with several
broken top-level items reports each of them."""

from __future__ import annotations

import dataclasses
import re
from functools import cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import Diagnostic, NexusError, Note, Span
from nexusdsl.resources import grammar_path

_OPEN = {"LPAR": "(", "LSQB": "[", "LBRACE": "{"}
_CLOSE = {"RPAR", "RSQB", "RBRACE"}


class _NewlinesInBrackets(PostLex):
    """Drops newlines inside `()` and `[]` (but not inside `{}` bodies nested in them)."""

    always_accept = ("_NL",)

    def __init__(self):
        self.open: list = []  # brackets open at the point of a syntax error, for its message

    def process(self, stream):
        self.open = stack = []
        for tok in stream:
            if tok.type in _OPEN:
                stack.append(tok)
            elif tok.type in _CLOSE and stack:
                stack.pop()
            if tok.type == "_NL" and stack and stack[-1].type != "LBRACE":
                continue
            yield tok


@cache
def _lark() -> Lark:
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",  # keywords are reserved everywhere, as docs/language.md says
        propagate_positions=True,
        postlex=_NewlinesInBrackets(),
        maybe_placeholders=False,
    )


# ----------------------------------------------------------------------------- tree -> AST


# docs/language.md, "Limits": a number literal is at most 10^15 in magnitude, the bound on
# hyperparameter arithmetic (elaborate/evaluate.py), so a typo of a few extra digits is caught
# where it is written; converting a 5,000-digit literal would not even succeed in Python.
MAX_LITERAL = 10**15


def _number(text: str) -> int | float | None:
    """The value of a number token, or None when it exceeds MAX_LITERAL (or is not finite)."""
    text = text.replace("_", "")
    if re.fullmatch(r"\d+", text):
        if len(text.lstrip("0")) > len(str(MAX_LITERAL)):  # before int(): no huge conversions
            return None
        value = int(text)
    else:
        value = float(text)
    return value if abs(value) <= MAX_LITERAL else None


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, file: str, text: str):
        super().__init__()
        self.file = file
        self.lines = text.splitlines()
        self.errors: list[Diagnostic] = []  # literals out of range: every one is reported

    def _span(self, meta) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.file, 0, 0)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column)

    # -- top level ------------------------------------------------------------------
    def start(self, meta, items):
        return list(items)

    def version(self, meta, c):
        return ("version", str(c[0]), self._span(meta))

    def dotted_name(self, meta, c):
        return ".".join(str(t) for t in c)

    def import_module(self, meta, c):
        alias = str(c[1]) if len(c) > 1 else None
        return ast.Import(self._span(meta), c[0], False, alias)

    def import_file(self, meta, c):
        alias = str(c[1]) if len(c) > 1 else None
        return ast.Import(self._span(meta), _unquote(c[0]), True, alias)

    def let_(self, meta, c):
        return ast.Let(self._span(meta), str(c[0]), c[1])

    def modality(self, meta, c):
        return ast.Modality(self._span(meta), str(c[0]), c[1])

    def block(self, meta, c):
        name, rest = str(c[0]), list(c[1:])
        body = rest.pop()
        params = rest.pop(0) if rest and isinstance(rest[0], tuple) else ()
        returns = rest[0] if rest else None
        return ast.Block(self._span(meta), name, params, returns, body)

    def model(self, meta, c):
        params = c[1] if len(c) == 3 else ()
        return ast.Model(self._span(meta), str(c[0]), params, c[-1])

    def params(self, meta, c):
        return tuple(c)

    def tensor_param(self, meta, c):
        return ast.Param(self._span(meta), str(c[0]), type=c[1])

    def hyper_param(self, meta, c):
        return ast.Param(self._span(meta), str(c[0]), default=c[1] if len(c) > 1 else None)

    def model_alias(self, meta, c):
        name, call = str(c[0]), c[1]
        if not isinstance(call, ast.Call) or call.args or not isinstance(call.func, (ast.Name, ast.Attribute)):
            raise NexusError.at(self._span(meta), f"`model {name} = ...` names another model with "
                                "its settings: `model Small = llama.Llama(dim = 256, depth = 2)`")
        return ast.ModelAlias(self._span(meta), name, call.func, tuple(call.kwargs))

    def bind(self, meta, c):
        model, rest = str(c[0]), list(c[1:])
        sources = tuple(x for x in rest if isinstance(x, ast.BindSource))
        words = [x for x in rest if isinstance(x, Token)]
        body = tuple(x for x in rest if isinstance(x, ast.Stmt))
        for word in words:
            if str(word) != "frozen":
                raise NexusError.at(self._tok(word), f"`{word}`: after a bind's sources only "
                                    "`frozen` may come (its parameters then get no gradient)")
        return ast.Bind(self._span(meta), model, sources, bool(words), body)

    def bind_source(self, meta, c):
        name = str(c[0]) if len(c) == 2 else None
        return ast.BindSource(self._span(meta), name, _unquote(c[-1]))

    def weights(self, meta, c):
        return ast.Weights(self._span(meta), str(c[0]), tuple(c[1:]))

    def bind_rule(self, meta, c):
        return ast.BindRule(self._span(meta), _unquote(c[0]), c[2])

    def bind_use(self, meta, c):
        prefix = next((_unquote(t) for t in c[1:] if isinstance(t, Token) and t.type == "STRING"), "")
        source = next((str(t) for t in c[1:] if isinstance(t, Token) and t.type == "NAME"), None)
        return ast.BindUse(self._span(meta), str(c[0]), prefix, source)

    def bind_ignore(self, meta, c):
        source = str(c[1]) if len(c) > 1 else None
        return ast.BindIgnore(self._span(meta), _unquote(c[0]), source)

    def train(self, meta, c):
        return ast.Train(self._span(meta), str(c[0]), tuple(c[1:]))

    def train_field(self, meta, c):
        return ast.TrainField(self._span(meta), str(c[0]), c[1])

    # -- statements -----------------------------------------------------------------
    def body(self, meta, c):
        return tuple(s for item in c for s in (item if isinstance(item, tuple) else (item,)))

    def assign(self, meta, c):
        return ast.Assign(self._span(meta), tuple(str(t) for t in c[:-1]), c[-1])

    def experts(self, meta, c):
        return ast.Experts(self._span(meta), str(c[0]), c[1])

    def input(self, meta, c):
        return ast.Input(self._span(meta), str(c[0]), c[1], c[2] if len(c) > 2 else None)

    def output(self, meta, c):
        return ast.Output(self._span(meta), str(c[0]), c[1] if len(c) > 1 else None)

    def output_many(self, meta, c):
        """`output a, b = f(x)` is `a, b = f(x)` then `output a` and `output b`."""
        span = self._span(meta)
        names = tuple(str(t) for t in c[:-1])
        return (ast.Assign(span, names, c[-1]), *(ast.Output(span, n, None) for n in names))

    def return_(self, meta, c):
        values = tuple(c)
        if len(values) == 1 and isinstance(values[0], ast.TupleExpr):
            values = values[0].items
        return ast.Return(self._span(meta), values)

    def repeat(self, meta, c):
        flags = {str(t) for t in c if isinstance(t, Token) and t.type in ("SHARED", "REVERSIBLE")}
        var = next((t for t in c[1:-1] if isinstance(t, Token) and t.type == "NAME"), None)
        count, var_span = c[0], self._tok(var) if var is not None else None
        if var is None:  # `repeat len(xs) as i`: the parser gave `as i` to the call
            count, var, var_span = self._trailing_alias(count)
        return ast.Repeat(self._span(meta), count, c[-1], "shared" in flags, "reversible" in flags,
                          str(var) if var is not None else None, var_span)

    def _trailing_alias(self, expr: ast.Expr) -> tuple[ast.Expr, str | None, Span | None]:
        """`repeat n + len(xs) as i`: `as` went to the call at the right end of the count (an
        LALR parser must choose before it sees `{`). Take it back: the count without it (its
        spans ending at the call's `)`), the name, and where the name stands."""
        if isinstance(expr, ast.Call) and expr.alias is not None:
            s = expr.span
            at = Span(s.file, s.end_line, s.end_col - len(expr.alias), s.end_line, s.end_col)
            close = self.lines[s.end_line - 1].rfind(")", 0, at.col - 1) + 2 if s.end_line else s.end_col
            return self._ending_at(dataclasses.replace(expr, alias=None), close), expr.alias, at
        for field in ("right", "operand"):  # the right spine: the last thing written in the count
            inner = getattr(expr, field, None)
            if isinstance(inner, ast.Expr):
                rest, name, at = self._trailing_alias(inner)
                if name is None:
                    break
                return self._ending_at(dataclasses.replace(expr, **{field: rest}), rest.span.end_col), name, at
        return expr, None, None

    @staticmethod
    def _ending_at(expr: ast.Expr, end_col: int) -> ast.Expr:
        return dataclasses.replace(expr, span=dataclasses.replace(expr.span, end_col=end_col))

    def if_(self, meta, c):
        orelse = c[2] if len(c) > 2 else ()
        return ast.If(self._span(meta), c[0], c[1], orelse if isinstance(orelse, tuple) else (orelse,))

    # -- types ------------------------------------------------------------------------
    def ttype(self, meta, c):
        kind = str(c[0]) if len(c) == 2 else None
        return ast.TensorTypeExpr(self._span(meta), kind, c[-1])

    def shape(self, meta, c):
        return ast.Shape(self._span(meta), tuple(c))

    def empty_shape(self, meta, c):
        return ast.Shape(self._span(meta), ())

    def star_dim(self, meta, c):
        return ast.Dim(self._span(meta), star=True)

    def named_dim(self, meta, c):
        return ast.Dim(self._span(meta), name=str(c[0]), size=c[1])

    def expr_dim(self, meta, c):
        if isinstance(c[0], ast.Name):
            return ast.Dim(self._span(meta), name=c[0].id)
        return ast.Dim(self._span(meta), size=c[0])

    # -- expressions ------------------------------------------------------------------
    def _bin(op):  # noqa: N805 - a rule factory used in the class body
        def rule(self, meta, c):
            return ast.BinOp(self._span(meta), op, c[0], c[1], self._operator_span(op, c[0], c[1]))

        return rule

    def _operator_span(self, op: str, left: ast.Expr, right: ast.Expr) -> Span | None:
        """The operator's position: the parser drops it, so find it between the operands."""
        a, b = left.span, right.span
        if a.end_line != b.line or not 0 < a.end_line <= len(self.lines):
            return None
        col = self.lines[a.end_line - 1].find(op, a.end_col - 1, b.col - 1)
        return Span(self.file, a.end_line, col + 1, a.end_line, col + 1 + len(op)) if col >= 0 else None

    add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")
    floordiv, mod, pow = _bin("//"), _bin("%"), _bin("**")

    def neg(self, meta, c):
        return ast.UnaryOp(self._span(meta), "-", c[0])

    def not_(self, meta, c):
        return ast.UnaryOp(self._span(meta), "not", c[0])

    def _bool(op):  # noqa: N805 - a rule factory used in the class body
        def rule(self, meta, c):
            return ast.BoolOp(self._span(meta), op, c[0], c[1], self._operator_span(op, c[0], c[1]))

        return rule

    and_, or_ = _bool("and"), _bool("or")

    def compare(self, meta, c):
        operands, ops = tuple(c[0::2]), tuple(str(t) for t in c[1::2])
        spans = tuple(self._operator_span(op, a, b) for op, a, b in zip(ops, operands, operands[1:]))
        return ast.Compare(self._span(meta), operands, ops, spans)

    def index(self, meta, c):
        return ast.Index(self._span(meta), c[0], c[1])

    def pos(self, meta, c):
        return ast.UnaryOp(self._span(meta), "+", c[0])

    def of(self, meta, c):
        return ast.Of(self._span(meta), c[0], c[1])

    def pipe(self, meta, c):
        value, func = c
        if isinstance(func, ast.Call):
            return ast.Call(func.span, func.func, (value, *func.args), func.kwargs, func.alias, True)
        return ast.Pipe(self._span(meta), value, func)

    def attribute(self, meta, c):
        return ast.Attribute(self._span(meta), c[0], str(c[1]))

    def call(self, meta, c):
        func, rest = c[0], list(c[1:])
        alias = str(rest.pop()) if rest and isinstance(rest[-1], Token) else None
        args, kwargs = rest[0] if rest else ((), ())
        return ast.Call(self._span(meta), func, args, kwargs, alias)

    def route(self, meta, c):
        items = list(c)
        alias = str(items.pop()) if items and isinstance(items[-1], Token) else None
        args, kwargs = items.pop(0) if items and isinstance(items[0], tuple) else ((), ())
        return ast.Route(self._span(meta), args, kwargs, tuple(items), alias)

    def branch(self, meta, c):
        return ast.RouteBranch(self._span(meta), str(c[0]), c[1])

    def args(self, meta, c):
        positional = tuple(a for a in c if not isinstance(a, ast.Keyword))
        keywords = tuple(a for a in c if isinstance(a, ast.Keyword))
        return positional, keywords

    def positional(self, meta, c):
        return c[0]

    def keyword(self, meta, c):
        return ast.Keyword(self._span(meta), str(c[0]), c[1])

    def name(self, meta, c):
        return ast.Name(self._tok(c[0]), str(c[0]))

    def number(self, meta, c):
        value = _number(str(c[0]))
        if value is None:
            text = str(c[0])
            shown = text if len(text) <= 24 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"
            self.errors.append(Diagnostic(self._tok(c[0]), f"the number {shown} is too large: "
                                          f"a number is at most 10^15 (1_000_000_000_000_000)"))
            value = 0
        cls = ast.Int if isinstance(value, int) else ast.Float
        return cls(self._tok(c[0]), value)

    def string(self, meta, c):
        return ast.Str(self._tok(c[0]), _unquote(c[0]))

    def true(self, meta, c):
        return ast.Bool(self._span(meta), True)

    def false(self, meta, c):
        return ast.Bool(self._span(meta), False)

    def list(self, meta, c):
        return ast.ListExpr(self._span(meta), tuple(c))

    def tuple(self, meta, c):
        return ast.TupleExpr(self._span(meta), tuple(c))


def _unquote(tok) -> str:
    body = str(tok)[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


# ----------------------------------------------------------------------------- errors

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_NL": "a new line",
    "$END": "the end of the file",
}

# Known mistakes, matched by Lark's `match_examples`: the message is friendlier than a list of
# expected tokens. The table doubles as test data (tests/test_parser.py).
KNOWN_MISTAKES: dict[str, list[str]] = {
    "missing `=` in an assignment": ["model M { x linear(y, 2) }", "model M { x 3 }"],
    "a block needs a body in `{ }`": ["block f(x: [d])\n", "block f(x: [d]) -> [d]\n"],
    "unclosed `(`": ["model M { x = f(a, b }", "let a = (1 + 2"],
    "`import` takes a module name like std.nn or a quoted file path": ["import 3", "import ."],
    "a shape is written in brackets, like [B, T, d]": ["block f(x: d) {}", "model M { input x: text }"],
}


LANGUAGE_VERSION = "0.1"
# docs/language.md, "Lexical rules" (`route` too: docs/design.md)
RESERVED_WORDS = frozenset("nexus import as let modality block model input output return repeat "
                           "shared reversible experts of train true false route "
                           "if else and or not bind weights use ignore from".split())


def _describe_token(tok) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type == "_NL":
        return "end of line"
    return f"`{tok.value}`"


def _expected_words(expected) -> str:
    parser = _lark()
    words = []
    names = sorted(expected)
    if len(names) > 1:  # newlines are accepted everywhere by the post-lexer: not informative
        names = [n for n in names if n != "_NL"]
    for name in names:
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        words.append(f"`{pattern.value}`" if pattern.type == "str" else name.lower())
    words = sorted(set(words))
    if len(words) > 6:
        return ""
    return "; expected " + (words[0] if len(words) == 1 else "one of " + ", ".join(words))


def _char_at(text: str, line: int, col: int) -> str:
    """The character at a 1-based line and column of the source as the user wrote it (lark's
    stream offset counts in the text it lexed, which differs once comments are involved)."""
    lines = text.splitlines()
    if 1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]):
        return lines[line - 1][col - 1]
    return "?"


def _syntax_diagnostic(err: UnexpectedInput, file: str, text: str) -> Diagnostic:
    line, col = err.line, err.column
    notes = _unclosed_note(file, line or 0)  # read before match_examples re-parses
    if isinstance(err, UnexpectedCharacters):
        char = _char_at(text, line, col)
        message = ("syntax error: this string is never closed (a string ends with `\"` on the "
                   "same line)") if char == '"' else f"syntax error: unexpected character `{char}`"
    elif isinstance(err, UnexpectedEOF) or getattr(err, "token", None) is None or err.token.type == "$END":
        message = "syntax error: unexpected end of file" + _expected_words(err.expected)
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    else:
        message = f"syntax error: unexpected {_describe_token(err.token)}" + _expected_words(err.expected)
        if str(err.token.value) in RESERVED_WORDS and "NAME" in (err.expected or ()):
            message += f" (`{err.token.value}` is a reserved word: it cannot name anything)"
    friendly = _match_known(err, text) or _misplaced(err, text)
    if friendly:
        message = f"syntax error: {friendly}"
    if line is None or line < 1:
        line, col = 1, 1
    return Diagnostic(Span(file, line, col, line, col + 1), message, notes)


def _misplaced(err: UnexpectedInput, text: str) -> str | None:
    """Mistakes the unexpected token tells by itself (KNOWN_MISTAKES matches parser states,
    which other tokens share): `else` starting a line, `=` in the condition of an `if`."""
    tok = getattr(err, "token", None)
    if tok is None or not tok.line or tok.line > len(text.splitlines()):
        return None
    before = text.splitlines()[tok.line - 1][: tok.column - 1].strip()
    if tok.value == "else" and not before:
        return "`else` goes on the line of the `}` that closes the `if` body: `} else {`"
    if tok.value == "=" and re.match(r"(\}\s*else\s+)?if\b", before):
        return "`=` binds a name; to compare two values, write `==`"
    return None


def _unclosed_note(file: str, line: int) -> tuple[Note, ...]:
    """A `(` or `[` left open on an earlier line is the usual cause of a confusing error."""
    stack = _lark().options.postlex.open
    if stack and stack[-1].type != "LBRACE" and stack[-1].line < line:
        tok = stack[-1]
        return (Note(f"the `{tok.value}` opened here is never closed", Span(file, tok.line, tok.column)),)
    return ()


def _match_known(err: UnexpectedInput, text: str) -> str | None:
    if not isinstance(err, UnexpectedToken):
        return None
    try:
        return err.match_examples(_lark().parse, KNOWN_MISTAKES, use_accepts=True)
    except Exception:  # match_examples re-parses examples; a failure there is not the user's
        return None


_ITEM_START = re.compile(r"^(import|let|modality|block|model|train|nexus)\b", re.M)


def _item_chunks(text: str) -> list[tuple[int, str]]:
    """Split the file at lines that start a top-level item, keeping line numbers."""
    starts = [m.start() for m in _ITEM_START.finditer(text)] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    bounds = zip(starts, starts[1:] + [len(text)])
    return [(text.count("\n", 0, a), text[a:b]) for a, b in bounds]


def _errors_per_item(text: str, file: str) -> list[Diagnostic]:
    found = []
    for first_line, chunk in _item_chunks(text):
        try:
            _lark().parse("\n" * first_line + chunk)
        except UnexpectedInput as err:
            found.append(_syntax_diagnostic(err, file, text))
    return found


# ----------------------------------------------------------------------------- nesting

# docs/language.md, "Limits": how deep constructs may nest. Every later stage (this module's
# tree transformer, elaboration, the language server) walks expressions recursively, and a
# 500-term sum or 3,000 nested calls would exhaust Python's stack; a limit reported where the
# expression starts is an answer the user can act on. Each rule below is one level.
MAX_NESTING = 100
_NESTING_RULES = frozenset("add sub mul div floordiv mod pow neg pos of pipe attribute call "
                           "route list tuple repeat compare and_ or_ not_ index if_".split())


def _check_nesting(tree: Tree, file: str, text: str) -> None:
    """Raise at the outermost construct of the first chain that nests deeper than MAX_NESTING
    (walked with an explicit stack: the check itself must not recurse)."""
    stack: list[tuple[Tree, int, Tree | None]] = [(tree, 0, None)]
    while stack:
        node, depth, outer = stack.pop()
        for child in node.children:
            if not isinstance(child, Tree):
                continue
            nests = child.data in _NESTING_RULES
            level, start = depth + nests, outer if outer is not None or not nests else child
            if level > MAX_NESTING:
                meta = start.meta
                error = NexusError.at(
                    Span(file, meta.line, meta.column, meta.line, meta.column + 1),
                    f"this nests more than {MAX_NESTING} levels deep (every operator, call, "
                    "index, list, tuple, `repeat` and `if` is a level); give parts of it names")
                raise NexusError(error.diagnostics, {file: text})
            stack.append((child, level, start))


# ----------------------------------------------------------------------------- entry point


def parse(text: str, file: str = "<string>") -> ast.Program:
    """Parse a whole `.nx` file; raises `NexusError` with every syntax error found."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        diagnostics = _errors_per_item(text, file) or [_syntax_diagnostic(err, file, text)]
        raise NexusError(diagnostics, {file: text}) from None
    _check_nesting(tree, file, text)
    to_ast = _ToAst(file, text)
    items = to_ast.transform(tree)
    if to_ast.errors:
        raise NexusError(to_ast.errors, {file: text})
    version, span = next(((v, at) for _, v, at in (i for i in items if isinstance(i, tuple))),
                         (None, None))
    if version is not None and version != LANGUAGE_VERSION:  # docs/language.md
        error = NexusError.at(span, f"this is nexus {LANGUAGE_VERSION}; a file written for "
                              f"nexus {version} cannot be read (write `nexus "
                              f"{LANGUAGE_VERSION}`, or leave the line out)")
        raise NexusError(error.diagnostics, {file: text})
    stmts = tuple(i for i in items if not isinstance(i, tuple))
    return ast.Program(file, text, version, stmts)
