"""Open the files an index folder holds without following a planted link into a special file.

An index folder may be shared or copied from elsewhere, so its files are untrusted input: a
``.write.lock`` that is a link to another file would be truncated and written by every writer, a FIFO
named ``index.faiss`` hangs whoever opens it, and an ``index.state.json`` linked to ``/dev/zero`` reads
until memory runs out. Reads here open without blocking, refuse anything but a regular file, and stop
at a size limit; the lock file is opened without following links at all.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

from indexer.core.errors import IndexDamagedError
from indexer.core.limits import MAX_INDEX_JSON_BYTES


class NotARegularFile(IndexDamagedError, OSError):
    """An index file that is a link (where refused), a FIFO, a device or a folder."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o666, follow: bool = True) -> int:
    """``os.open`` a regular file (close-on-exec, never blocking on a FIFO); its descriptor.

    ``follow=False`` refuses a symbolic link as the last part of ``path`` (``O_NOFOLLOW``).

    Raises
    ------
    NotARegularFile
        ``path`` is a link (with ``follow=False``), a FIFO, a device, a socket or a folder.
    OSError
        It cannot be opened otherwise (missing, permissions).
    """
    flags |= os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        if not follow and e.errno == 40:  # ELOOP: the last part is a symbolic link
            raise NotARegularFile(f"{path} is a symbolic link; refused (remove it)") from e
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotARegularFile(f"{path} is {_kind(st.st_mode)}, not a regular file; refused (remove it)")
    os.set_blocking(fd, True)
    return fd


def require_regular(path: Path | str) -> None:
    """Check that ``path`` is a regular file (following links) before a library opens it by name.

    Raises
    ------
    NotARegularFile
        A FIFO, a device, a socket or a folder.
    """
    os.close(open_regular(path))


def read_bounded(path: Path | str, limit: int = MAX_INDEX_JSON_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, refused above ``limit`` bytes.

    Raises
    ------
    NotARegularFile
        Not a regular file, or larger than ``limit``.
    OSError
        It cannot be read.
    """
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        # read(n) allocates n bytes before reading: ask for the file's size, not the limit.
        data = f.read(min(size, limit) + 1)
        if len(data) > size and len(data) <= limit:  # it grew since fstat
            data += f.read(limit + 1 - len(data))
    if len(data) > limit or size > limit:
        raise NotARegularFile(f"{path} is over {limit} bytes; not a file this index wrote (refused)")
    return data


def read_bounded_text(path: Path | str, limit: int = MAX_INDEX_JSON_BYTES) -> str:
    """:func:`read_bounded` decoded as UTF-8."""
    return read_bounded(path, limit).decode("utf-8")


def check_npz_size(data: bytes, limit: int) -> None:
    """Check, from its zip directory, that the ``.npz`` in ``data`` unpacks within ``limit`` bytes: a few KB
    of deflated zeros may claim gigabytes, which numpy would allocate before reading them.

    Raises
    ------
    ValueError
        Not a zip file, or its members unpack beyond ``limit``.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
    except zipfile.BadZipFile as e:
        raise ValueError(f"not an .npz file ({e})") from e
    if unpacked > limit:
        raise ValueError(f"its arrays unpack to {unpacked} bytes, over {limit}")
