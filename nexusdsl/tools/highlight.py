"""Colour for diagnostics printed to a terminal: the quoted source line is highlighted with the
`.nx` lexer, the caret and the word `error` stand out. Pipes, files and tests get the plain text
of `NexusError.render()` unchanged, character for character."""

from __future__ import annotations

import re

from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

_SOURCE = re.compile(r"^(\s+\d+ \| )(.*)$")
_CARET = re.compile(r"^(\s+\| )(\s*)(\^+)$")
_HEADER = re.compile(r"^(.*?: )(error|warning)(: .*)$")
_NOTE = re.compile(r"^(\s+)(note)(: .*)$")


def print_message(console: Console, message: str) -> None:
    """Print a (possibly multi-line) diagnostic, highlighted only when `console` is a terminal."""
    if not console.is_terminal:
        console.print(message, markup=False)
        return
    console.print(highlight(message), soft_wrap=True)


def highlight(message: str) -> Text:
    from nexusdsl.tools.lexer import NexusLexer

    syntax = Syntax("", lexer=NexusLexer(), theme="ansi_dark", background_color="default")
    lines = [_highlight_line(line, syntax) for line in message.split("\n")]
    return Text("\n").join(lines)


def _highlight_line(line: str, syntax: Syntax) -> Text:
    if m := _SOURCE.match(line):
        code = syntax.highlight(m.group(2))
        code.rstrip()
        return Text(m.group(1), style="blue") + code
    if m := _CARET.match(line):
        return Text.assemble((m.group(1), "blue"), m.group(2), (m.group(3), "bold red"))
    if m := _HEADER.match(line):
        style = "bold red" if m.group(2) == "error" else "bold yellow"
        return Text.assemble((m.group(1), "bold"), (m.group(2), style), (m.group(3), "bold"))
    if m := _NOTE.match(line):
        return Text.assemble(m.group(1), (m.group(2), "bold cyan"), m.group(3))
    return Text(line)
