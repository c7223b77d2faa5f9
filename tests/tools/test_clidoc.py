"""docs/cli.md documents every registered `nexus` command and every option of each."""

from __future__ import annotations

import re

from nexusdsl.cli.docs import commands, reference
from tests.conftest import ROOT

DOC = ROOT / "docs" / "cli.md"
HOW = "regenerate it with `python -m nexusdsl.cli.docs -o docs/cli.md`"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## nexus (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_command_and_option_is_documented():
    sections = _sections(DOC.read_text())
    for name, cmd in commands().items():
        assert name in sections, f"`nexus {name}` is missing from docs/cli.md; {HOW}"
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in sections[name], (
                        f"`nexus {name} {opt}` is missing from docs/cli.md; {HOW}")


def test_documented_commands_exist():
    assert set(_sections(DOC.read_text())) <= set(commands())


def test_the_generator_covers_every_command():
    generated = _sections(reference())
    assert list(generated) == list(commands())
    assert "`--by-node`" in generated["summary"] and "`--check`" in generated["fmt"]
