"""Nothing the user has is lost: old checkpoints survive a careless run (byte for byte), two
runs cannot share an --out, writes go through links and keep modes and hard links, and an
--out or --data that cannot work is refused before any training. Each refusal is exit 1 and
one `error:` line, never a traceback."""

import ctypes
import os
import signal
import stat
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass

import pytest

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from tests.conftest import ROOT
from tests.train.models import TINY, write

FAST = ["--batch", 4, "--context", 16, "--set", "eval_batches=1", "--set", "threads=1", "-q"]
UNFORMATTED = "nexus 0.1\nmodel M(d=8){\n  input x: float[B, d]\n  output y = linear(x,d)\n}\n"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def nexus(monkeypatch, capsys):
    """`nexus ARGS...` in this process through the real entry point; an exception escaping it
    is reported as the traceback a real process would print."""
    from nexusdsl.cli import main

    def run(*args) -> Run:
        monkeypatch.setattr(sys, "argv", ["nexus", *map(str, args)])
        code, crash = 0, ""
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            code, crash = 1, traceback.format_exc()
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err + crash)

    return run


def one_error(run: Run, message: str) -> str:
    assert run.code == 1, run.out + run.err
    assert "Traceback" not in run.err, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    assert message in lines[0], run.err
    return lines[0]


def checkpoints(out):
    """The complete checkpoints under `out`: step directories holding a state.json."""
    return sorted(p.parent.name for p in out.glob("step-*/state.json"))


def files(folder):
    """Every file under `folder` with its bytes (the lock file's emptiness included)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path):
    """A run directory with two complete checkpoints (steps 2 and 4)."""
    path = write(tmp_path, TINY)
    nexusdsl.train(str(path), steps=4, save_every=2, batch=4, context=16, eval_batches=1,
                   threads=1, out=tmp_path / "run")
    out = tmp_path / "run"
    assert checkpoints(out) == ["step-00000002", "step-00000004"]
    return path, out


# ----------------------------------------------------------------------------- old steps


@pytest.mark.parametrize("pointer", ["missing", "empty"])
def test_a_new_run_never_deletes_old_steps_when_latest_is_missing_or_empty(nexus, trained,
                                                                           pointer):
    path, out = trained
    if pointer == "missing":
        (out / "latest").unlink()
    else:
        (out / "latest").write_text("")
    before = files(out)
    one_error(nexus("train", path, "--steps", 2, *FAST, "--out", out),
              f"{out} already holds a checkpoint (step-00000004); pass --resume")
    assert files(out) == before


def test_resuming_without_latest_continues_the_newest_complete_checkpoint(nexus, trained):
    path, out = trained
    (out / "latest").unlink()
    step4 = files(out / "step-00000004")
    loud = [a for a in FAST if a != "-q"]  # its log says where it resumed from
    run = nexus("train", path, "--steps", 5, *loud, "--out", out, "--resume")
    assert run.code == 0, run.err
    assert f"resuming from {out / 'step-00000004'} (step 4)" in run.out
    assert "trained 1 steps" in run.out
    assert ckpt.latest_name(out) == "step-00000005"
    assert files(out / "step-00000004") == step4  # resumed from, and kept (KEEP = 2)


def test_a_resume_never_overwrites_a_checkpoint_newer_than_the_one_resumed(nexus, trained):
    path, out = trained
    (out / "latest").write_text("step-00000002\n")  # pointed back by hand
    before = files(out)
    one_error(nexus("train", path, "--steps", 6, *FAST, "--out", out, "--resume"),
              f"{out} holds step-00000004, newer than step-00000002")
    assert files(out) == before


def test_a_directory_that_is_not_a_complete_checkpoint_is_never_pruned(nexus, trained):
    path, out = trained
    (out / "step-00000001").mkdir()  # a user's folder, no state.json: not ours
    (out / "step-00000001" / "notes.txt").write_text("mine")
    run = nexus("train", path, "--steps", 8, "--set", "save_every=1", *FAST, "--out", out,
                "--resume")
    assert run.code == 0, run.err
    assert checkpoints(out) == ["step-00000007", "step-00000008"]
    assert (out / "step-00000001" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- the lock


def test_two_runs_into_one_out_the_second_is_refused_naming_the_first(nexus, tmp_path):
    path, out = write(tmp_path, TINY), tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "nexusdsl.cli", "train", str(path),
                              "--steps", "100000", "--time", "300", *map(str, FAST), "--out",
                              str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / ".lock").exists() or (out / ".lock").read_text().strip() != str(first.pid):
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        before = files(out)
        one_error(nexus("train", path, "--steps", 2, *FAST, "--out", out, "--resume"),
                  f"--out {out} is in use by another run (process {first.pid})")
        assert files(out) == before
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the kernel drops its lock
        first.wait()
    run = nexus("train", path, "--steps", 2, *FAST, "--out", out, "--resume")
    assert run.code == 0, run.err
    assert ckpt.latest_name(out) == "step-00000002"
    assert (out / ".lock").read_bytes() == b""  # released and emptied on exit


# ----------------------------------------------------------------------------- writes


def test_an_output_onto_a_symbolic_link_writes_its_target_and_keeps_the_link(nexus, tmp_path):
    target, link = tmp_path / "real.ir", tmp_path / "link.ir"
    target.write_text("old\n")
    target.chmod(0o640)
    link.symlink_to(target.name)
    run = nexus("compile", "examples/tiny_lm.nx", "--emit", "ir", "-o", link)
    assert run.code == 0, run.err
    assert link.is_symlink() and os.readlink(link) == target.name
    expected = nexus("compile", "examples/tiny_lm.nx", "--emit", "ir").out
    assert target.read_text() == expected and "model TinyLM" in expected
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_fmt_keeps_the_file_mode_and_its_hard_links(nexus, tmp_path):
    path, other = tmp_path / "m.nx", tmp_path / "same.nx"
    path.write_text(UNFORMATTED)
    path.chmod(0o604)
    os.link(path, other)
    inode = path.stat().st_ino
    run = nexus("fmt", path)
    assert run.code == 0 and f"formatted {path}" in run.out, run.err
    formatted = path.read_text()
    assert formatted != UNFORMATTED and "model M(d = 8) {" in formatted
    assert path.stat().st_ino == inode and path.stat().st_nlink == 2
    assert other.read_text() == formatted  # the other name sees the edit
    assert stat.S_IMODE(path.stat().st_mode) == 0o604


def special_files(tmp_path):
    """A FIFO, and (where we may make one) a character device like /dev/null."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    made = [(fifo, stat.S_ISFIFO, "a FIFO (named pipe)")]
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        made.append((device, stat.S_ISCHR, "a character device"))
    return made


def test_an_output_onto_a_device_or_fifo_is_refused_and_left_as_it_is(nexus, tmp_path):
    for path, kind, words in special_files(tmp_path):
        one_error(nexus("compile", "examples/tiny_lm.nx", "--emit", "ir", "-o", path),
                  f"cannot write {path}: it is {words}, not a regular file")
        assert kind(path.lstat().st_mode)
        link = tmp_path / f"to-{path.name}"
        link.symlink_to(path)  # through a link: the same refusal, the link kept
        one_error(nexus("compile", "examples/tiny_lm.nx", "--emit", "ir", "-o", link),
                  "not a regular file")
        assert link.is_symlink() and kind(path.lstat().st_mode)


# ----------------------------------------------------------------------------- early checks


def _without_override():
    """In the child: root loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH at exec, so file
    permissions bind it as they bind everyone (prctl PR_CAPBSET_DROP)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_out_is_refused_before_any_training(tmp_path):
    path, out = write(tmp_path, TINY), tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "nexusdsl.cli", "train", str(path), "--steps", "100000",
         "--time", "600", *map(str, FAST), "--out", str(out)], cwd=ROOT, capture_output=True,
        text=True, timeout=300, preexec_fn=_without_override if os.geteuid() == 0 else None)
    one_error(Run(run.returncode, run.stdout, run.stderr),
              f"cannot write to --out {out}: permission denied")
    assert time.monotonic() - start < 300  # not after a 600 s training budget
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("flag", ["", " ", "  "])
def test_an_empty_data_path_is_refused_not_the_working_directory(nexus, tmp_path, flag):
    out = tmp_path / "o"
    one_error(nexus("train", write(tmp_path, TINY), "--steps", 1, *FAST, "--data", flag,
                    "--out", out), "the data path is empty: name a file or folder")
    assert not out.exists()


def test_an_empty_data_path_written_in_the_file_is_located(nexus, tmp_path):
    path = write(tmp_path, TINY, train='\ntrain Tiny {\n  data = text("")\n}\n')
    run = nexus("train", path, "--steps", 1, *FAST, "--out", tmp_path / "o")
    assert run.code == 1 and "Traceback" not in run.err
    first = run.err.splitlines()[0]
    assert first == f"{path}:14:3: error: the data path is empty: name a file or folder, e.g. " \
                    'text("corpus.txt")'
    assert 'data = text("")' in run.err and not (tmp_path / "o").exists()
