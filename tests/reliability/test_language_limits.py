"""Careless `.nx` input that used to end in a Python traceback or a hang: a file importing
itself, expressions nested thousands deep, a 5,000-digit number, /dev/zero, a named pipe, a
20 GB file, a Python keyword as a node name. Each is exit status 1 and located errors
(docs/language.md, "Limits"), and `nexus fmt` goes on with the other files of a folder.

Commands that cannot hang run in this process through the real entry point (an exception
escaping it is what a process would print as a traceback); those that could hang (a FIFO,
/dev/zero) run in a child process with a timeout.
"""

import os
import re
import subprocess
import sys

import pytest

import nexusdsl
from nexusdsl.lang.source import MAX_SOURCE_BYTES, SourceRefused, read_source
from tests.conftest import ROOT, Run

LOCATED = re.compile(r"^(\S+):(\d+):(\d+): error: (.*)$", re.M)
MODEL = "model M {\n  input x: float[B, 4]\n  output y = EXPR\n}\n"


def process(*args, timeout: float = 60) -> Run:
    """`nexus ARGS...` in a child process that must finish within `timeout` seconds."""
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    return Run(run.returncode, run.stdout, run.stderr)


def located(run: Run, file, line: int, col: int, message: str) -> None:
    """Exit 1, no traceback, and exactly one located error: at FILE:LINE:COL, saying `message`."""
    assert run.code == 1, run.out + run.err
    assert "Traceback" not in run.err, run.err
    errors = LOCATED.findall(run.err)
    assert len(errors) == 1, run.err
    assert errors[0][:3] == (str(file), str(line), str(col)), run.err
    assert message in errors[0][3], run.err


def sum_of(terms: int) -> str:
    return " + ".join(["x"] * terms)


def nested_calls(depth: int) -> str:
    return "relu(" * depth + "x" + ")" * depth


# ----------------------------------------------------------------------------- imports


def test_a_file_importing_itself(nexus, tmp_path):
    path = tmp_path / "self.nx"
    path.write_text('import "self.nx" as me\n' + MODEL.replace("EXPR", "x"))
    located(nexus("check", path), path, 1, 1, "self.nx imports itself")


# ----------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("expr,col", [(sum_of(500), 14), (nested_calls(3000), 14)],
                         ids=["500-term sum", "3000 nested calls"])
def test_deep_expressions_are_a_located_error(nexus, tmp_path, expr, col):
    path = tmp_path / "deep.nx"
    path.write_text(MODEL.replace("EXPR", expr))
    located(nexus("check", path), path, 3, col, "nests more than 100 levels deep")


def test_the_nesting_limit_is_100_levels(tmp_path):
    """100 levels compile (and compute what they say); 101 are refused. A sum of n terms is
    n - 1 operators deep; each call, list, `not` and repeat body is one level."""
    import torch

    model = nexusdsl.compile(nexusdsl.loads(MODEL.replace("EXPR", sum_of(101)), "sum.nx"))
    x = torch.arange(-4.0, 4.0).view(2, 4)  # small integers: the sum is exact in float32
    assert torch.equal(model(x), 101 * x)
    calls = nexusdsl.compile(nexusdsl.loads(MODEL.replace("EXPR", nested_calls(100)), "c.nx"))
    torch.testing.assert_close(calls(x), torch.relu(x))
    lists = "let a = " + "[" * 100 + "1" + "]" * 100 + "\n" + MODEL.replace("EXPR", "x")
    nexusdsl.loads(lists, "lists.nx")
    repeats = MODEL.replace("  output y = EXPR", "  " + "repeat 1 { " * 99 + "x = relu(x)"
                            + " }" * 99 + "\n  output y = x")
    nexusdsl.loads(repeats, "repeats.nx")  # 99 bodies + the call: 100 levels
    negations = "let a = " + "not " * 100 + "false\n" + MODEL.replace("EXPR", "x")
    nexusdsl.loads(negations, "not.nx")
    for too_deep in (MODEL.replace("EXPR", sum_of(102)), MODEL.replace("EXPR", nested_calls(101)),
                     repeats.replace("x = relu(x)", "x = relu(relu(x))"),
                     negations.replace("not false", "not not false")):
        with pytest.raises(nexusdsl.NexusError, match="nests more than 100 levels deep"):
            nexusdsl.loads(too_deep, "deep.nx")


def test_fmt_reports_a_deep_file_and_formats_the_rest_of_the_folder(nexus, tmp_path):
    deep = tmp_path / "a_deep.nx"
    deep.write_text(MODEL.replace("EXPR", nested_calls(3000)))
    messy = tmp_path / "b_messy.nx"
    messy.write_text(MODEL.replace("EXPR", "x+x").replace("  input", "      input"))
    run = nexus("fmt", tmp_path)
    located(run, deep, 3, 14, "nests more than 100 levels deep")
    assert messy.read_text() == MODEL.replace("EXPR", "x + x")
    assert f"formatted {messy}" in run.out


# ----------------------------------------------------------------------------- literals


def test_a_5000_digit_number_is_a_located_error(nexus, tmp_path):
    path = tmp_path / "big.nx"
    path.write_text("let n = " + "9" * 5000 + "\n" + MODEL.replace("EXPR", "x"))
    run = nexus("check", path)
    located(run, path, 1, 9, "is too large: a number is at most 10^15")
    assert "9" * 100 not in run.err.splitlines()[0]  # the message shows a short form


def test_number_literals_are_at_most_10_to_the_15(tmp_path):
    def width(literal: str):
        source = MODEL.replace("EXPR", f"linear(x, n // {10**15} + 1)")
        return nexusdsl.loads(f"let n = {literal}\n" + source, "n.nx").elaborate()

    assert width("1_000_000_000_000_000").by_name("linear").type.axes[-1].size == 2
    for literal in ("1_000_000_000_000_001", "1e16", "1e999", "0" * 30 + "1" + "0" * 16):
        with pytest.raises(nexusdsl.NexusError, match="is too large"):
            width(literal)
    assert width("0" * 30 + "7").by_name("linear").type.axes[-1].size == 1  # leading zeros


# ----------------------------------------------------------------------------- files


def test_dev_zero_and_a_fifo_are_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.nx"
    os.mkfifo(fifo)
    check = process("check", "/dev/zero", fifo)  # used to read forever / block forever
    assert check.code == 1 and "Traceback" not in check.err, check.err
    assert LOCATED.findall(check.err) == [
        ("/dev/zero", "1", "1", "cannot read /dev/zero: it is a character device, not a "
                                "regular file"),
        (str(fifo), "1", "1", f"cannot read {fifo}: it is a named pipe, not a regular file")]
    fmt = process("fmt", "--check", fifo)
    located(Run(fmt.code, fmt.out, fmt.err), fifo, 1, 1, "it is a named pipe")


def test_a_20_gb_file_is_refused_without_reading_it(nexus, tmp_path):
    path = tmp_path / "huge.nx"
    with open(path, "wb") as f:
        f.truncate(20 * 2**30)  # sparse: takes no disk space
    located(nexus("check", path), path, 1, 1,
            "it is larger than the 1.0 MiB a .nx file may have (20.0 GiB)")


def test_the_file_size_limit_is_1_mib(tmp_path):
    path = tmp_path / "edge.nx"
    path.write_bytes(b"#" * (MAX_SOURCE_BYTES - 1) + b"\n")
    assert MAX_SOURCE_BYTES == 2**20 and len(read_source(path)) == MAX_SOURCE_BYTES
    path.write_bytes(b"#" * MAX_SOURCE_BYTES + b"\n")
    with pytest.raises(SourceRefused, match="larger than the 1.0 MiB"):
        read_source(path)
    # a file whose size is not known in advance (procfs says 0) is still read only so far
    assert os.stat("/proc/self/environ").st_size == 0
    read_source("/proc/self/environ")


# ----------------------------------------------------------------------------- names


def test_a_python_keyword_naming_a_node(nexus, tmp_path):
    path = tmp_path / "kw.nx"
    path.write_text(MODEL.replace("EXPR", "linear(x, 4) as lambda"))
    located(nexus("compile", path), path, 3, 14,
            "`lambda` cannot name a node: it is a keyword of Python")


def chained_lets(links: int) -> str:
    lets = [f"let a{i} = a{i + 1} + 1" for i in range(links)] + [f"let a{links} = 1"]
    return "nexus 0.1\n" + "\n".join(lets) + "\nmodel M {\n  input x: float[B, 4]\n" \
        "  output y = x * a0\n}\n"


def test_a_chain_of_3000_lets_is_a_located_error(nexus, tmp_path):
    path = tmp_path / "lets.nx"
    path.write_text(chained_lets(3000))
    located(nexus("check", path), path, 66, 1, "reached through more than 64 definitions")


def test_the_definition_chain_limit_is_64(tmp_path):
    import torch

    model = nexusdsl.compile(nexusdsl.loads(chained_lets(63), "lets.nx"))
    x = torch.randn(2, 4)
    assert torch.equal(model(x), x * 64)  # a0 = 64, read through 63 others
    with pytest.raises(nexusdsl.NexusError, match="more than 64 definitions"):
        nexusdsl.loads(chained_lets(64), "lets.nx")
