"""Atomic file writes: a crash or kill mid-write leaves the previous file intact."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_reason(err: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, in words (no errno numbers)."""
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, IsADirectoryError):
        return "it is a directory"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return err.strerror or str(err)


class UnwritablePath(Exception):
    """An output path that cannot be written: the `nexus` command prints it as one error."""


def check_writable(path: Path, directory: bool = False) -> None:
    """Refuse, before anything is written, a path that is a directory (for a file) or a file
    (for a directory), or that lies under a file."""
    if path.exists() and path.is_dir() != directory:
        what = "a directory" if path.is_dir() else "a file"
        raise UnwritablePath(f"cannot write {path}: it is {what}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UnwritablePath(f"cannot write {path}: {parent} is a file, not a directory")
            return


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Build a directory in a temporary sibling and rename it into place only when complete:
    a crash or kill meanwhile leaves at most a `.NAME.tmp-*` directory, never a partial `path`.

        with atomic_directory("runs/x/step-00000100") as tmp:
            (tmp / "model.safetensors").write_bytes(...)
    """
    path = Path(path)
    check_writable(path.parent, directory=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
