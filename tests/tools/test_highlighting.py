"""Highlighting: the Pygments lexer (registered as an entry point) and the VS Code TextMate
grammar both tokenize every shipped `.nx` file, and agree with the parser's own lexer about
what is a comment, a string, a number, a keyword, an operator and a name."""

from __future__ import annotations

import json

import pytest
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String

from nexusdsl.tools.lexer import NexusLexer
from nexusdsl.tools.tokens import tokenize
from tests.conftest import ROOT
from tests.tools.test_fmt import CASES
from tests.tools.textmate import Grammar

VSCODE = ROOT / "editors" / "vscode"
GRAMMAR = Grammar(VSCODE / "syntaxes" / "nx.tmLanguage.json")

# What the parser's lexer calls a token -> what a highlighter must call it.
PYGMENTS_KIND = {"COMMENT": Comment, "STRING": String, "NUMBER": Number}


def _pygments_at(text: str) -> dict[tuple[int, int], object]:
    """{(line, col): Pygments token type} for the first character of every Pygments token."""
    found, line, col = {}, 1, 1
    for _, ttype, value in NexusLexer().get_tokens_unprocessed(text):
        found[(line, col)] = ttype
        for ch in value:
            line, col = (line + 1, 1) if ch == "\n" else (line, col + 1)
    return found


@pytest.mark.parametrize("name,text", CASES, ids=[n for n, _ in CASES])
def test_pygments_agrees_with_the_parser(name: str, text: str):
    tokens = list(NexusLexer().get_tokens(text))
    assert "".join(v for _, v in tokens) == (text if text.endswith("\n") else text + "\n")
    assert not [v for t, v in tokens if t in Error]
    at = _pygments_at(text)
    for tok in tokenize(text):
        if tok.kind in ("WS", "NL"):
            continue
        ttype = at.get((tok.line, tok.col))
        assert ttype is not None, f"{name}:{tok.line}:{tok.col}: `{tok.text}` not split alone"
        if tok.kind in PYGMENTS_KIND:
            assert ttype in PYGMENTS_KIND[tok.kind], (tok, ttype)
        elif tok.kind == "KEYWORD":
            assert ttype in Keyword, (tok, ttype)
        elif tok.kind == "NAME":
            assert ttype in Name, (tok, ttype)
        else:
            assert ttype in Operator or ttype in Punctuation, (tok, ttype)


def test_pygments_marks_ops_and_definitions():
    text = "block mlp(x: [*, d]) -> [*, d] {\n  return linear(x, d) |> gelu  # out\n}\n"
    kinds = {v: t for t, v in NexusLexer().get_tokens(text) if v.strip()}
    assert kinds["block"] in Keyword.Declaration and kinds["mlp"] in Name.Class
    assert kinds["linear"] in Name.Builtin and kinds["gelu"] in Name.Builtin
    assert kinds["# out"] in Comment and kinds["|>"] in Operator and kinds["return"] in Keyword


def test_conditions_are_keywords_and_comparisons_operators_in_both_highlighters():
    text = "model M {\n  repeat n as i {\n    if not i == 0 and ws[i] >= 2 or i != 1 {} else {}\n  }\n}\n"
    kinds = {v: t for t, v in NexusLexer().get_tokens(text) if v.strip()}
    assert all(kinds[w] in Keyword for w in ("if", "else", "not", "and", "or", "as"))
    assert all(kinds[op] in Operator for op in ("==", ">=", "!="))
    scopes = GRAMMAR.tokenize(text)
    line = text.splitlines()[2]
    kind = {word: _textmate_kind(scopes[(3, line.index(word) + 1)]) for word in
            ("if", "not", "==", "and", "ws", ">=", "or", "!=", "else")}
    assert kind["if"] == kind["else"] == "keyword.control.nx"
    assert kind["not"] == kind["and"] == kind["or"] == "keyword.operator.logical.nx"
    assert kind["=="] == kind[">="] == kind["!="] == "keyword.operator.comparison.nx"
    assert kind["ws"] == "variable.other.nx"  # an indexed list, not a tensor type


def test_pygments_flags_a_character_the_language_lacks():
    assert any(t in Error for t, _ in NexusLexer().get_tokens("let a = 1 @ 2\n"))


def test_the_lexer_is_registered_for_nx_files():
    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename

    assert isinstance(get_lexer_for_filename("model.nx"), NexusLexer)
    assert isinstance(get_lexer_by_name("nx"), NexusLexer)


def _textmate_kind(scopes: tuple[str, ...]) -> str:
    inner = [s for s in scopes if not s.startswith(("meta.", "source."))]
    return inner[-1] if inner else ""


@pytest.mark.parametrize("name,text", CASES, ids=[n for n, _ in CASES])
def test_textmate_grammar_agrees_with_the_parser(name: str, text: str):
    scopes = GRAMMAR.tokenize(text)
    for tok in tokenize(text):
        if tok.kind in ("WS", "NL"):
            continue
        for col in range(tok.col, tok.end_col):  # every character of the token, one scope
            kind = _textmate_kind(scopes.get((tok.line, col), ()))
            where = f"{name}:{tok.line}:{col} `{tok.text}` is {kind!r}"
            if tok.kind == "COMMENT":
                assert kind.startswith("comment."), where
            elif tok.kind == "STRING":
                assert kind.startswith("string."), where
            elif tok.kind == "NUMBER":
                assert kind.startswith("constant.numeric"), where
            elif tok.kind == "KEYWORD":
                assert kind.startswith(("keyword.", "storage.", "constant.language")), where
            elif tok.kind == "NAME":
                assert kind.startswith(("variable.", "entity.name.", "support.type")), where
            else:
                assert kind.startswith(("keyword.operator", "punctuation.")), where


def test_textmate_scopes_calls_keyword_arguments_and_types():
    text = "model M(dim = 4) {\n  input x: text[B, T]\n  y = attention(x,\n    heads = 2)\n}\n"
    scopes = GRAMMAR.tokenize(text)
    kind = {word: _textmate_kind(scopes[(line, col)]) for word, line, col in
            [("M", 1, 7), ("text", 2, 12), ("attention", 3, 7), ("heads", 4, 5), ("dim", 1, 9)]}
    assert kind["M"] == "entity.name.function.nx"
    assert kind["text"] == "support.type.nx"
    assert kind["attention"] == "entity.name.function.call.nx"
    assert kind["heads"] == "variable.parameter.nx"  # a keyword argument on a continuation line


def test_vscode_package_points_at_its_files():
    package = json.loads((VSCODE / "package.json").read_text())
    language = package["contributes"]["languages"][0]
    grammar = package["contributes"]["grammars"][0]
    assert language["extensions"] == [".nx"] and grammar["language"] == language["id"]
    assert (VSCODE / grammar["path"]).is_file() and (VSCODE / language["configuration"]).is_file()
    config = json.loads((VSCODE / language["configuration"]).read_text())
    assert config["comments"]["lineComment"] == "#"
    assert json.loads((VSCODE / grammar["path"]).read_text())["scopeName"] == grammar["scopeName"]
