"""The optimizer's passes name no op: they ask what ops declare (traits, `no_op`, `fuse`,
`axis_map`, a fused op's `replaces` and `name`), so that adding an op never means editing a
pass. This reads every pass's source for a registered op's name written as a string."""

from __future__ import annotations

import re

import pytest

from nexusdsl.ops import REGISTRY
from tests.conftest import ROOT

PASSES = sorted((ROOT / "nexusdsl" / "compiler" / "passes").glob("*.py"))


def quoted_op_names(text: str) -> list[str]:
    """Registered op names written as a string literal, '...' or "...", in `text`."""
    names = "|".join(re.escape(name) for name in sorted(REGISTRY, key=len, reverse=True))
    return re.findall(rf"""(["'])({names})\1""", text)


def test_the_check_finds_an_op_name_in_quotes():
    planted = 'if node.op == "linear" or node.op in {\'dropout\', "mix"}: pass'
    assert [name for _, name in quoted_op_names(planted)] == ["linear", "dropout", "mix"]
    assert quoted_op_names('"""Fuses a `linear` and its activation."""') == []
    assert quoted_op_names('p.record("linear-bias-act")') == []


@pytest.mark.parametrize("path", PASSES, ids=[p.name for p in PASSES])
def test_no_pass_names_an_op(path):
    found = [name for _, name in quoted_op_names(path.read_text(encoding="utf-8"))]
    assert found == [], (f"{path.name} names the ops {found}: ask what ops declare instead "
                         "(nexusdsl/ops/traits.py)")
