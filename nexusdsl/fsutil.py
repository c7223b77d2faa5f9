"""Writing files without losing anything.

- A write replaces its file atomically (a temporary sibling renamed into place), so a crash or
  kill mid-write leaves the previous file intact.
- A symbolic link is written through: the file it names gets the new content and the link
  stays a link.
- The file keeps its permission bits (and, when we may, its owner).
- A file with several hard links is rewritten in place, so every name sees the new content
  (`nexus fmt` on a hard-linked file edits it, it does not split the links); see
  docs/decisions.md, "Training".
- Anything that is not a regular file (a device, a FIFO, a socket) is refused, never replaced.
- `locked_directory` takes an OS advisory lock, so two runs cannot write one directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
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


class UnwritablePath(OSError):
    """An output path that cannot be written: the `nexus` command prints it as one error.
    An OSError, so that callers catching those (a checkpoint save) catch it too."""


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def check_writable(path: Path, directory: bool = False) -> None:
    """Refuse, before anything is written, a path that is a directory (for a file) or a file
    (for a directory), a device, FIFO or socket, or that lies under a file."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode) != directory:
            what = "a directory" if stat.S_ISDIR(mode) else "a file"
            raise UnwritablePath(f"cannot write {path}: it is {what}")
        if not directory and not stat.S_ISREG(mode):
            raise UnwritablePath(f"cannot write {path}: it is {_kind(mode)}, not a regular file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UnwritablePath(f"cannot write {path}: {parent} is a file, not a directory")
            return


def write_target(path: str | Path) -> Path:
    """The file a write to `path` lands in: a symbolic link's target (followed to the end, a
    dangling link's too), `path` itself otherwise."""
    path = Path(path)
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops where it cannot go on: a loop
        raise UnwritablePath(f"cannot write {path}: it is a symbolic link that loops")
    return target


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` as described in this module's docstring."""
    target = write_target(path)
    check_writable(target)
    try:
        old = target.stat()
    except FileNotFoundError:
        old = None
    if old is not None and old.st_nlink > 1:
        try:
            _rewrite_in_place(target, data)
        except OSError as err:
            raise UnwritablePath(f"cannot write {path}: {os_reason(err)}") from None
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise UnwritablePath(f"cannot write {path}: {os_reason(err)}") from None
    try:
        _give_mode(fd, old)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, UnwritablePath):
            raise UnwritablePath(f"cannot write {path}: {os_reason(err)}") from None
        raise


def _give_mode(fd: int, old: os.stat_result | None) -> None:
    """The replaced file's mode and owner, or the usual mode for a new file (mkstemp makes
    0600 files)."""
    if old is None:
        os.fchmod(fd, 0o666 & ~_umask())
        return
    with contextlib.suppress(PermissionError):  # only root may give a file to another user
        os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def _rewrite_in_place(target: Path, data: bytes) -> None:
    """Overwrite a hard-linked file's content in its own inode. Not atomic: a crash in the
    middle leaves it partly written (the price of keeping the links)."""
    with open(target, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


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


# ----------------------------------------------------------------------------- locking

LOCK = ".lock"


class DirectoryInUse(Exception):
    """Another process holds the directory's lock; `pid` is its process id if it wrote it."""

    def __init__(self, path: Path, pid: int | None):
        self.path, self.pid = path, pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{path} is in use by {holder}")


@contextlib.contextmanager
def locked_directory(path: str | Path):
    """Hold an exclusive OS advisory lock (`flock`) on `PATH/.lock` while the block runs,
    creating `path` if needed. The kernel drops the lock when the file is closed or the process
    dies, so a crash never leaves a stale lock. The file holds the holder's pid, for the error
    another process gets (`DirectoryInUse`) and is emptied on release. The file itself stays:
    removing it would let a third process lock a new file while a second still holds the
    old one open."""
    lock = Path(path) / LOCK
    Path(path).mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DirectoryInUse(Path(path), _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # left empty: a finished run leaves the folder as it found it
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None
