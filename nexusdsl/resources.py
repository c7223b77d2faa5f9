"""Finds the language's own sources (`grammar/`, `stdlib/`) in a checkout or an installation."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def resource_dir(name: str) -> Path:
    """`grammar` or `stdlib`: top-level in a checkout, under `_data/` once installed."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"nexusdsl installation is missing its {name}/ folder")


def grammar_path() -> Path:
    return resource_dir("grammar") / "nexus.lark"


def stdlib_path(module: str) -> Path:
    """`std.nn` -> stdlib/nn.nx"""
    return resource_dir("stdlib") / (module.split(".", 1)[1].replace(".", "/") + ".nx")


@cache
def stdlib_blocks() -> dict[str, str]:
    """{block name: "std.module"} for every block the standard library defines, read from the
    sources' `block NAME(` lines (a hint for an unknown name, so no parse is needed)."""
    found: dict[str, str] = {}
    for path in sorted(resource_dir("stdlib").glob("*.nx")):
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"^block\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", text, re.MULTILINE):
            found.setdefault(name, f"std.{path.stem}")
    return found
