"""The docs run: every `sh` and `python` block of README.md, docs/tutorial.md and docs/cli.md,
executed in order, as a new user following them would, in one fresh folder holding a copy of
the repository's files (what a fresh clone has).

- A `sh` block runs line by line with bash; each line must exit 0, or 1 when its comment says
  `exits with status 1`. A `python` block runs as a script.
- An `nx` block after a sentence saying "Save this as `NAME`" is written to NAME first.
- A `text` block right after a `sh` or `python` block is what its last command prints: each of
  its lines must be a line of the output (spaces squeezed; `...` stands for any text).
- NEXUS_MAX_STEPS caps every training run's steps, as the README says, so that the whole page
  runs in a minute or two. Blocks without a language (`make demo`) are not run: the README's
  demo block must be the commands `make demo` runs, which is checked against the Makefile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

DOCS = ["README.md", "docs/tutorial.md", "docs/cli.md"]
MAX_STEPS = "20"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SAVE_AS = re.compile(r"save this as `([^`]+)`", re.I)
EXPECT_FAILURE = "exits with status 1"


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    before: str  # the prose between the previous block and this one


def blocks(doc: str) -> list[Block]:
    source = (ROOT / doc).read_text()
    found, end = [], 0
    for match in FENCE.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        found.append(Block(doc, line, match.group(1), match.group(2), source[end:match.start()]))
        end = match.end()
    return found


def fresh_copy(tmp: Path) -> Path:
    """The repository's files as a fresh clone has them (everything git does not ignore),
    copied as they are now. `python -m nexusdsl.cli` (torchrun) imports the copy's package."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    work = tmp / "clone"
    for name in filter(None, files):
        source, target = ROOT / name, work / name
        if not source.is_symlink() and not source.is_file():
            continue  # listed but deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)  # links stay links (nexusdsl/_data)
    return work


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NEXUS_MAX_STEPS"] = MAX_STEPS
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def commands(block: Block) -> list[str]:
    return [line for line in block.text.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def run_block(block: Block, work: Path, env: dict) -> str:
    """Run a sh or python block; returns what its last command printed."""
    where = f"{block.doc}:{block.line}"
    if block.lang == "python":
        script = work / "doc_block.py"
        script.write_text(block.text)
        done = subprocess.run([sys.executable, str(script)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{where}: the python block failed:\n{done.stderr}"
        return done.stdout + done.stderr
    output = ""
    for command in commands(block):
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        expected = 1 if EXPECT_FAILURE in command else 0
        output = done.stdout + done.stderr
        assert done.returncode == expected, (
            f"{where}: `{command}` exited {done.returncode}, expected {expected}:\n{output}")
        assert "Traceback" not in output, f"{where}: `{command}` printed a traceback:\n{output}"
    return output


def squeeze(line: str) -> str:
    return " ".join(line.split())


def check_quoted(block: Block, output: str, source: Block) -> None:
    """Every line of a `text` block is a line of what `source` printed."""
    printed = [squeeze(line) for line in output.splitlines()]
    for line in filter(None, map(squeeze, block.text.splitlines())):
        pattern = re.compile(".*".join(map(re.escape, line.split("..."))))
        assert any(pattern.fullmatch(p) for p in printed), (
            f"{block.doc}:{block.line} quotes `{line}`, which {source.doc}:{source.line} does "
            f"not print; it printed:\n{output}")


def save_files(block: Block, work: Path) -> None:
    names = SAVE_AS.findall(block.before.strip().split("\n\n")[-1])
    if names:
        (work / names[-1]).write_text(block.text)


def test_every_documented_command_runs_in_order(tmp_path):
    work, env = fresh_copy(tmp_path), environment()
    ran = {"sh": 0, "python": 0, "text": 0}
    for doc in DOCS:
        previous, output = None, ""
        for block in blocks(doc):
            if block.lang == "nx":
                save_files(block, work)
            elif block.lang in ("sh", "python"):
                output = run_block(block, work, env)
                ran[block.lang] += 1
            elif (block.lang == "text" and previous is not None and not block.before.strip()
                  and previous.lang in ("sh", "python")):
                check_quoted(block, output, previous)
                ran["text"] += 1
            previous = block
    assert ran["sh"] >= 10 and ran["python"] >= 3 and ran["text"] >= 4, ran
    assert (work / "runs" / "demo" / "latest").is_file()


def test_the_readme_demo_is_what_make_demo_runs():
    """The README's demo block (which the docs run) and the Makefile's demo recipe agree, and
    the README names the variable that caps training in the docs run."""
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    made = [re.sub(r"^\$\(BIN\)/", "", line.strip()) for line in recipe.group(1).splitlines()]
    made = [line for line in made if line.startswith("nexus ")]
    demo = next(b for b in blocks("README.md") if b.lang == "sh" and "runs/demo" in b.text)
    assert [c.split("  #")[0].strip() for c in commands(demo)] == made
    assert "NEXUS_MAX_STEPS" in (ROOT / "README.md").read_text()
