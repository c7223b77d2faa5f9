"""Finds the language's own sources (`grammar/`, `stdlib/`) in a checkout or an installation."""

from __future__ import annotations

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
