"""`nexus fmt`: the canonical layout of a `.nx` file.

The formatter works on the token stream (comments included, `tools/tokens.py`) and only ever
changes whitespace, so the parser sees the same tokens before and after: the program means the
same, and `fmt(fmt(x)) == fmt(x)`. The layout:

- two spaces of indentation per `{ }` body; `}` lines up with the line that opened it;
- one space around binary operators (comparisons, `and`, `or` too), `=`, `->`, `|>`, `of`,
  `as`, after `,` `;` `:` and `not`; none inside `( )` and `[ ]`, before `(` of a call, before
  `[` of a shape or an index (`text[B, T]`, `windows[i]`, `f(x)[0]`), around `.`, after a
  prefix `-`/`+`, after the `*` of a shape (`[*, d]`), or around the `=` of a named axis
  (`[B, T=1024]`, the way types are printed);
- `} else {` and `} else if c {` stay on one line (the grammar wants them there);
- line breaks are the author's: a statement is never split or joined. A line continued inside
  `( )` or `[ ]` is aligned one column after the open bracket, or, when the bracket ends its
  line, indented four spaces past the line that opened it;
- at most one blank line in a row, none at the start or end of a body or of the file;
- every comment is kept. A comment on its own line takes the indentation of the code around
  it; a comment after code keeps its distance from the start of the line (so aligned comments
  stay aligned), at least two spaces after the code.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexusdsl.lang.parser import parse
from nexusdsl.tools.tokens import CLOSE, OPEN, Tok, significant, tokenize

# A token after which a `-`, `+` or `*` is binary: something that ends an operand.
_OPERAND_END = frozenset({")", "]", "}", "true", "false"})
_NO_SPACE_BEFORE = frozenset({")", "]", ",", ";", ":", "."})
_CALLABLE_END = frozenset({")", "]", "route"})
_INDEXABLE_END = frozenset({")", "]"})  # `f(x)[0]`, `grid[i][j]`: an index, not a list


@dataclass
class _Frame:
    """An open bracket: where continuation lines go, and where its closing bracket goes."""

    char: str
    indent: int
    close_indent: int


def _ends_operand(tok: Tok | None) -> bool:
    return tok is not None and (tok.kind in ("NAME", "NUMBER", "STRING") or tok.text in _OPERAND_END)


def _space_between(prev: Tok, tok: Tok, prev_prefix: bool) -> bool:
    """Whether one space separates two significant tokens written on the same line."""
    if tok.text in _NO_SPACE_BEFORE or prev.text == "." or prev_prefix:
        return False
    if prev.text in ("(", "[") or tok.text in (")", "]"):
        return False
    if prev.text == "{" and tok.text == "}":
        return False
    if tok.text == "(":
        return not (prev.kind == "NAME" or prev.text in _CALLABLE_END)
    if tok.text == "[":
        return prev.kind != "NAME" and prev.text not in _INDEXABLE_END
    return True


class _Formatter:
    def __init__(self, tokens: list[Tok]):
        self.tokens = tokens
        self.lines: list[str] = []
        self.cur: str | None = None  # the line being written (None before the first token)
        self.frames: list[_Frame] = []
        self.prev: Tok | None = None  # the previous significant token
        self.prev_prefix = False  # it was a prefix operator (`-x`, `[*`)
        self.newlines = 0  # newlines read since the last token written
        self.src_indent = 0  # indentation of the source line being read
        self.after_open_brace = False

    # ------------------------------------------------------------------ driving
    def run(self) -> str:
        for i, tok in enumerate(self.tokens):
            if tok.kind == "NL":
                self.newlines += tok.count
                self.src_indent = 0
            elif tok.kind == "WS":
                if tok.col == 1:
                    self.src_indent = len(tok.text)
            elif tok.kind == "COMMENT":
                self.comment(tok)
            else:
                self.token(tok, i)
        if self.cur is not None:
            self.lines.append(self.cur)
        return "".join(line.rstrip() + "\n" for line in self.lines)

    # ------------------------------------------------------------------ lines
    def _indent_for(self, tok: Tok) -> int:
        if tok.text in CLOSE and self.frames:
            return self.frames[-1].close_indent
        return self.frames[-1].indent if self.frames else 0

    def _at_statement_level(self) -> bool:
        return not self.frames or self.frames[-1].char == "{"

    def _start_line_if_needed(self, tok: Tok) -> None:
        if self.cur is None:
            self.cur = " " * self._indent_for(tok)
        elif self.newlines:
            self.lines.append(self.cur)
            blank = (self.newlines > 1 and self._at_statement_level() and not self.after_open_brace
                     and tok.text not in CLOSE)
            if blank:
                self.lines.append("")
            self.cur = " " * self._indent_for(tok)
        self.newlines = 0

    def _line_indent(self) -> int:
        return len(self.cur) - len(self.cur.lstrip(" "))

    def _fresh(self) -> bool:
        return not self.cur.strip()

    # ------------------------------------------------------------------ tokens
    def comment(self, tok: Tok) -> None:
        self._start_line_if_needed(tok)
        text = tok.text.rstrip()
        if self._fresh():
            self.cur += text
        else:  # after code: keep its offset from the line's indentation, two spaces at least
            offset = tok.col - 1 - self.src_indent
            column = max(len(self.cur.rstrip()) + 2, self._line_indent() + offset)
            self.cur = self.cur.rstrip().ljust(column) + text
        self.after_open_brace = False

    def token(self, tok: Tok, index: int) -> None:
        self._start_line_if_needed(tok)
        if tok.text in CLOSE and self.frames:
            self.frames.pop()
        # `=` inside `[ ]` names an axis of a shape: written tight, `[B, T=1024]`, as types print
        named_axis = tok.text == "=" and bool(self.frames) and self.frames[-1].char == "["
        spaced = self.prev is not None and _space_between(self.prev, tok, self.prev_prefix)
        if not self._fresh() and spaced and not named_axis:
            self.cur += " "
        self.cur += tok.text
        if tok.text in OPEN:
            self._open(tok, index)
        self.prev_prefix = named_axis or (tok.text in ("-", "+", "*") and not _ends_operand(self.prev))
        self.prev = tok
        self.after_open_brace = tok.text == "{"

    def _open(self, tok: Tok, index: int) -> None:
        indent = self._line_indent()
        if tok.text == "{":
            # a body nests in its statement, even when the statement's header spans lines
            if self._at_statement_level():
                indent = self.frames[-1].indent if self.frames else 0
            self.frames.append(_Frame("{", indent + 2, indent))
        elif self._ends_line(index):
            self.frames.append(_Frame(tok.text, indent + 4, indent))
        else:
            self.frames.append(_Frame(tok.text, len(self.cur), indent))

    def _ends_line(self, index: int) -> bool:
        """Whether nothing but whitespace (or a comment) follows token `index` on its line."""
        for tok in self.tokens[index + 1:]:
            if tok.kind == "WS":
                continue
            return tok.kind in ("NL", "COMMENT")
        return True


def format_text(text: str, file: str = "<string>") -> str:
    """The canonical layout of a `.nx` source. Raises `NexusError` if it does not parse."""
    parse(text, file)  # a file with a syntax error is reported, not reformatted
    tokens = tokenize(text)
    result = _Formatter(tokens).run() if significant(tokens) or _has_comment(tokens) else ""
    before = [(t.kind, t.text) for t in significant(tokens)]
    after = [(t.kind, t.text) for t in significant(tokenize(result))]
    assert before == after, "internal error: the formatter changed the tokens"
    return result


def _has_comment(tokens: list[Tok]) -> bool:
    return any(t.kind == "COMMENT" for t in tokens)
