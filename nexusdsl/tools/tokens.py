"""The token stream of a `.nx` file *with* its comments, whitespace and newlines.

The parser drops comments; the formatter and the language server need them. Both read the
tokens through Lark's own lexer built from the same grammar file, so a token here is exactly a
token the parser sees (no second tokenizer to drift out of step with `grammar/nexus.lark`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from lark import Lark

from nexusdsl.resources import grammar_path

KEYWORDS = frozenset(
    "nexus import as let modality block model input output return repeat shared reversible "
    "experts of train true false route if else and or not bind weights use ignore from".split()
)
OPEN = {"(": ")", "[": "]", "{": "}"}
CLOSE = {v: k for k, v in OPEN.items()}


@dataclass(frozen=True)
class Tok:
    """One token: `kind` is NAME, NUMBER, STRING, COMMENT, NL (one or more newlines, `count`
    of them), WS, KEYWORD or OP (punctuation and operators, `text` says which)."""

    kind: str
    text: str
    line: int  # 1-based
    col: int  # 1-based
    count: int = 0  # newlines in an NL token (blank lines are count - 1)

    @property
    def end_col(self) -> int:
        return self.col + len(self.text)


@cache
def _lexer() -> Lark:
    # No post-lexer: newlines inside brackets are kept, since the formatter keeps line breaks.
    return Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr", lexer="basic")


def _kind(lark_type: str, text: str) -> str:
    if lark_type in ("NAME", "NUMBER", "STRING", "COMMENT", "WS"):
        return lark_type
    if lark_type == "_NL":
        return "NL"
    if text in KEYWORDS:
        return "KEYWORD"
    return "OP"


def tokenize(text: str) -> list[Tok]:
    """Every token of `text`, comments and whitespace included. Raises Lark's
    `UnexpectedCharacters` on a character the language does not have."""
    tokens = []
    for t in _lexer().lex(text, dont_ignore=True):
        kind = _kind(t.type, t.value)
        count = t.value.count("\n") if kind == "NL" else 0
        tokens.append(Tok(kind, str(t.value), t.line, t.column, count))
    return _argument_names(tokens)


def _argument_names(tokens: list[Tok]) -> list[Tok]:
    """`shared` is a reserved word that also names moe's keyword argument (`moe(x, e,
    shared = mlp())`, as the grammar allows): followed by `=`, it is a name."""
    meaningful = [i for i, t in enumerate(tokens) if t.kind not in ("WS", "NL", "COMMENT")]
    for here, after in zip(meaningful, meaningful[1:]):
        if tokens[here].text == "shared" and tokens[after].text == "=":
            tokens[here] = replace(tokens[here], kind="NAME")
    return tokens


def significant(tokens: list[Tok]) -> list[Tok]:
    """The tokens that carry meaning: no whitespace, newlines or comments."""
    return [t for t in tokens if t.kind not in ("WS", "NL", "COMMENT")]
