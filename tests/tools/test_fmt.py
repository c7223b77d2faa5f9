"""`nexus fmt`: idempotent, meaning-preserving (same tokens, same IR hash), keeps every comment;
checked on every `.nx` file of the repository and every `nx` block of docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.tools.fmt import format_text
from nexusdsl.tools.tokens import significant, tokenize
from tests.conftest import ROOT

BLOCK = re.compile(r"```nx\n(.*?)```", re.S)


def _repo_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build"}
    return sorted(p for p in ROOT.rglob("*.nx")
                  if not skip & set(p.relative_to(ROOT).parts) and "_data" not in p.parts)


def _doc_blocks() -> list[tuple[str, str]]:
    return [(f"docs/{doc.stem}-{i}.nx", text) for doc in sorted((ROOT / "docs").glob("*.md"))
            for i, text in enumerate(BLOCK.findall(doc.read_text()))]


def _parses(text: str, name: str) -> bool:
    try:
        from nexusdsl.lang.parser import parse

        parse(text, name)
        return True
    except NexusError:
        return False


FILES = [(str(p.relative_to(ROOT)), p.read_text()) for p in _repo_files()]
CASES = [(name, text) for name, text in FILES + _doc_blocks() if _parses(text, name)]


def _tokens(text: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in significant(tokenize(text))]


def _comments(text: str) -> list[str]:
    return [t.text.rstrip() for t in tokenize(text) if t.kind == "COMMENT"]


def _hashes(text: str, name: str) -> dict[str, str] | None:
    """Every model's IR hash, or None when the file is not a valid program (a diagnostics
    golden file): then only the token stream is compared."""
    try:
        program = nexusdsl.loads(text, name)
    except NexusError:
        return None
    return {m: program.elaborate(m).content_hash() for m in program.models}


def test_the_repository_has_files_to_check():
    names = [n for n, _ in CASES]
    assert any(n.startswith("examples/") for n in names)
    assert any(n.startswith("stdlib/") for n in names)
    assert any(n.startswith("tests/golden/") for n in names)
    assert any(n.startswith("docs/") for n in names)


@pytest.mark.parametrize("name,text", CASES, ids=[n for n, _ in CASES])
def test_idempotent_and_meaning_preserving(name: str, text: str):
    once = format_text(text, name)
    assert format_text(once, name) == once
    assert _tokens(once) == _tokens(text)
    assert _comments(once) == _comments(text)
    # names of the file are kept, so relative imports resolve the same way. A file already in
    # the canonical layout (`nexus fmt --check .` keeps the repository's so) is its own
    # formatting: comparing it with itself would elaborate it twice for nothing (DeepSeek-V3's
    # published configuration takes seconds).
    if once != text:
        assert _hashes(once, name) == _hashes(text, name)


def test_a_messy_file_gets_the_canonical_layout():
    messy = (
        "\n\nnexus 0.1\nimport   std . nn   # the library\n   # a lone comment\n"
        "modality text=bytes( code=0 )\nlet   w = -  3 + 2**-1\n\n\n\n"
        "block f( x :[ * ,d ] , m=4 )->[*,d]{\n"
        "    h=linear( x , d*m ) |>gelu   # hidden\n        # deep\n    return linear(h,d)\n\n}\n"
        "model M (dim=64,\n    depth = 2) {\n  input tokens :text [B,T]\n"
        "  x=embed(tokens,dim) as tok ; y = x\n  repeat depth shared { x = x+f(x) }\n"
        "  z = f(\n   x,\n   m = 2)\n  output logits=unembed(rmsnorm(x),tie=tok)\n}\n"
        "train M { batch = 2; steps = 1 }\n# end"
    )
    expected = (
        "nexus 0.1\nimport std.nn       # the library\n# a lone comment\n"
        "modality text = bytes(code = 0)\nlet w = -3 + 2 ** -1\n\n"
        "block f(x: [*, d], m = 4) -> [*, d] {\n"
        "  h = linear(x, d * m) |> gelu  # hidden\n  # deep\n  return linear(h, d)\n}\n"
        "model M(dim = 64,\n        depth = 2) {\n  input tokens: text[B, T]\n"
        "  x = embed(tokens, dim) as tok; y = x\n  repeat depth shared { x = x + f(x) }\n"
        "  z = f(\n      x,\n      m = 2)\n  output logits = unembed(rmsnorm(x), tie = tok)\n}\n"
        "train M { batch = 2; steps = 1 }\n# end\n"
    )
    assert format_text(messy) == expected


@pytest.mark.parametrize("source,expected", [
    ("let a = [ 1 ,2 ]\n", "let a = [1, 2]\n"),
    ("let a = (1+2)*3\n", "let a = (1 + 2) * 3\n"),
    ("let a = 7//2 % 3\n", "let a = 7 // 2 % 3\n"),
    ("let a = - ( 1 )\n", "let a = -(1)\n"),
    ("let a = 1 - -2\n", "let a = 1 - -2\n"),
    ("let a = 1\t# tab before\n", "let a = 1  # tab before\n"),
    ("", ""),
    ("# only a comment", "# only a comment\n"),
    ("model M { }\n", "model M {}\n"),
    ("model M {\n\n\n  input x: float[B, 4]\n\n\n  output y = x\n\n}\n",
     "model M {\n  input x: float[B, 4]\n\n  output y = x\n}\n"),
    ('import "lib/a.nx" as a\n', 'import "lib/a.nx" as a\n'),
    ("let xs = [\n  1,\n  2,\n]\n", "let xs = [\n    1,\n    2,\n]\n"),
    ("model M {\n  input x: float[B, T = 8, d=-(2)]\n  output y = x\n}\n",
     "model M {\n  input x: float[B, T=8, d=-(2)]\n  output y = x\n}\n"),
    # per-layer variation: indexes tight, comparisons and `and`/`or` spaced, `not` a prefix word
    ("let a = ws [ i ] [-1]+f( x ) [0]\n", "let a = ws[i][-1] + f(x)[0]\n"),
    ("let a = not-1<=b and c!=d or e==[ 1 ]\n", "let a = not -1 <= b and c != d or e == [1]\n"),
    ("model M {\n  repeat n  shared  as i{\n  if i>0{x=x}else  if i<0 { }else{\n  x = x\n}\n  }\n}\n",
     "model M {\n  repeat n shared as i {\n    if i > 0 { x = x } else if i < 0 {} else {\n      x = x\n"
     "    }\n  }\n}\n"),
])
def test_layout_rules(source: str, expected: str):
    assert format_text(source) == expected


def test_aligned_trailing_comments_stay_aligned():
    text = "let a = 1        # one\nlet bb = 22      # two\n"
    assert format_text(text) == text


def test_a_syntax_error_is_reported_not_formatted():
    with pytest.raises(NexusError, match=r"x.nx:1:13: error: syntax error: missing `=`"):
        format_text("model M { x linear(y, 2) }\n", "x.nx")


def test_cli_check_diff_and_write(tmp_path: Path):
    runner = CliRunner()
    good = tmp_path / "good.nx"
    good.write_text("let a = 1\n")
    messy = tmp_path / "messy.nx"
    messy.write_text("let a=1\n")
    result = runner.invoke(app, ["fmt", "--check", str(tmp_path)])
    assert result.exit_code == 1 and f"{messy}: would be reformatted" in result.output
    assert str(good) not in result.output
    result = runner.invoke(app, ["fmt", "--diff", str(messy)])
    assert result.exit_code == 1 and "-let a=1\n+let a = 1" in result.output
    assert messy.read_text() == "let a=1\n"  # --check and --diff change nothing
    result = runner.invoke(app, ["fmt", str(tmp_path)])
    assert result.exit_code == 0 and messy.read_text() == "let a = 1\n"
    assert runner.invoke(app, ["fmt", "--check", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["fmt", "--check", str(tmp_path), "--exclude", "*.nx"]).exit_code == 0


def test_cli_reports_a_broken_file_with_its_location(tmp_path: Path):
    broken = tmp_path / "broken.nx"
    broken.write_text("model M {\n  x = (1\n}\n")
    result = CliRunner().invoke(app, ["fmt", "--check", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}:" in result.output and "error: syntax error" in result.output
    assert "Traceback" not in result.output


def test_a_folder_leaves_out_what_pyproject_excludes(tmp_path):
    from nexusdsl.cli.tools import nx_files

    (tmp_path / "pyproject.toml").write_text('[tool.nexus]\nfmt-exclude = ["bad/broken.nx"]\n')
    (tmp_path / "bad").mkdir()
    for name in ("bad/broken.nx", "bad/fine.nx", "top.nx"):
        (tmp_path / name).write_text("nexus 0.1\n")
    found = {p.relative_to(tmp_path).as_posix() for p in nx_files([tmp_path], [])}
    assert found == {"bad/fine.nx", "top.nx"}
    named = nx_files([tmp_path / "bad" / "broken.nx"], [])  # a file named is still formatted
    assert named == [tmp_path / "bad" / "broken.nx"]
