"""Reading a `.nx` file within the limits of docs/language.md, "Limits": only a regular file
(a named pipe would block until something writes to it, `/dev/zero` never ends) and at most
`MAX_SOURCE_BYTES` of UTF-8 (a wrong path to a 20 GB file must not fill the memory)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from nexusdsl.memory import format_bytes

MAX_SOURCE_BYTES = 1 << 20  # 1 MiB: hundreds of times the largest model file written by hand

_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class SourceRefused(OSError):
    """A path that is not read as a source file. `strerror` says why in words, so callers
    that print an `OSError`'s reason (`fsutil.os_reason`) need nothing more."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.strerror = reason


def read_source(path: str | Path) -> str:
    """The text of a `.nx` file. Raises `OSError` (`SourceRefused` for a file that is not a
    regular file or is too large) or `UnicodeDecodeError`."""
    # O_NONBLOCK: opening a named pipe returns at once instead of waiting for a writer; the
    # checks below then refuse it. Regular files ignore the flag.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "a special file")
            raise SourceRefused(f"it is {kind}, not a regular file")
        data = f.read(MAX_SOURCE_BYTES + 1)  # files in /proc say size 0: read, do not trust stat
        if len(data) > MAX_SOURCE_BYTES:
            size = os.fstat(fd).st_size
            known = f" ({format_bytes(size)})" if size > MAX_SOURCE_BYTES else ""
            raise SourceRefused(f"it is larger than the {format_bytes(MAX_SOURCE_BYTES)} a .nx "
                                f"file may have{known}")
    return data.decode("utf-8")
