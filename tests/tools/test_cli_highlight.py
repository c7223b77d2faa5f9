"""Diagnostics keep their plain text in pipes and tests, and get colour on a terminal."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.tools.highlight import highlight, print_message

BROKEN = "tests/golden/diagnostics/shape_mismatch.nx"


def _rendered() -> str:
    try:
        nexusdsl.load(BROKEN)
    except NexusError as e:
        return e.render()
    raise AssertionError("the golden file should not load")


def test_plain_text_is_unchanged_off_a_terminal():
    result = CliRunner().invoke(app, ["check", BROKEN])
    assert result.exit_code == 1
    assert result.output == _rendered() + "\n"
    buffer = io.StringIO()
    print_message(Console(file=buffer, force_terminal=False, soft_wrap=True), _rendered())
    assert buffer.getvalue() == _rendered() + "\n"


def test_a_terminal_gets_the_source_line_highlighted():
    message = _rendered()
    text = highlight(message)
    assert text.plain == message  # colour only: not one character differs
    buffer = io.StringIO()
    print_message(Console(file=buffer, force_terminal=True, color_system="256", width=200), message)
    coloured = buffer.getvalue()
    assert "\x1b[" in coloured
    source_line = next(line for line in coloured.splitlines()
                       if "x + h" in re.sub(r"\x1b\[[0-9;]*m", "", line))
    assert source_line.count("\x1b[") > 3  # the .nx tokens of the quoted line, each coloured
    error_word = next(line for line in coloured.splitlines() if "error" in line)
    assert "\x1b[1;31merror" in error_word
