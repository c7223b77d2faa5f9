"""A Pygments lexer for `.nx` files, registered as the `nx` lexer (entry point
`pygments.lexers`), so that `rich`, Sphinx, MkDocs and `pygmentize` highlight `.nx` source.

Builtin op names come from the op registry, so a new op is highlighted as soon as it exists."""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

_DECLARATIONS = ("nexus", "import", "let", "modality", "block", "model", "train", "experts",
                 "bind", "weights")
_STATEMENTS = ("input", "output", "return", "repeat", "shared", "reversible", "route", "of", "as",
               "if", "else", "and", "or", "not", "use", "ignore", "from")


def _builtin_names() -> tuple[str, ...]:
    from nexusdsl.ops import REGISTRY

    return tuple(sorted(REGISTRY))


class NexusLexer(RegexLexer):
    """The `.nx` language of nexusdsl."""

    name = "Nexus"
    aliases = ["nx", "nexus"]
    filenames = ["*.nx"]
    mimetypes = ["text/x-nexus"]
    url = "https://github.com/nexusdsl/nexusdsl"

    tokens = {
        "root": [
            (r"\n", Whitespace),
            (r"[ \t\f\r]+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r'"([^"\\\n]|\\.)*"', String.Double),
            (r"\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?|\.\d[\d_]*([eE][+-]?\d+)?", Number),
            (words(("true", "false"), suffix=r"\b"), Keyword.Constant),
            # `block mlp(`, `model TinyLM`: the name being defined
            (r"(block|model)(\s+)([A-Za-z_]\w*)",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (r"(train)(\s+)([A-Za-z_]\w*)", bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (words(_DECLARATIONS, suffix=r"\b"), Keyword.Declaration),
            (r"shared(?=\s*=(?!=))", Name),  # moe's keyword argument `shared = mlp()`
            (words(_STATEMENTS, suffix=r"\b"), Keyword),
            (words(_builtin_names(), suffix=r"\b"), Name.Builtin),
            (r"[A-Za-z_]\w*(?=\s*\()", Name.Function),
            (r"[A-Za-z_]\w*", Name),
            (r"\|>|->|<-|//|\*\*|==|!=|<=|>=|[-+*/%=<>]", Operator),
            (r"[()\[\]{},;:.]", Punctuation),
        ],
    }
