"""Every code block marked `nx` in docs/ is a complete file that compiles and runs."""

import re
from pathlib import Path

import pytest
import torch

import nexusdsl
from tests.conftest import ROOT, random_inputs

BLOCK = re.compile(r"```nx\n(.*?)```", re.S)
CASES = [(doc, i, text) for doc in sorted((ROOT / "docs").glob("*.md"))
         for i, text in enumerate(BLOCK.findall(doc.read_text()))]


@pytest.mark.parametrize("doc,index,text", CASES, ids=[f"{d.stem}-{i}" for d, i, _ in CASES])
def test_doc_block_compiles(doc: Path, index: int, text: str):
    program = nexusdsl.loads(text, f"docs/{doc.stem}-{index}.nx")
    for name in program.models:
        module = nexusdsl.compile(program, name)
        out = module(*random_inputs(module.graph))
        outs = out.values() if isinstance(out, dict) else [out]
        assert all(torch.isfinite(o).all() for o in outs)


def test_docs_have_blocks():
    assert len(CASES) >= 6
