"""Atomic file writes (write a temporary file beside the target, fsync, then ``os.replace``) and the
checksum those files are checked by.

An interrupted write therefore leaves either the old file or the new one, never half of one. The
result gets the mode any other new file would get (``0o666`` less the umask), or keeps the mode of
the file it replaces: ``mkstemp`` alone would make every index file ``0600``, unreadable to the
colleagues a shared index folder is for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)-[^.]+\.tmp$")


def temp_file_pid(name: str) -> int | None:
    """The pid of the process that made temporary file ``name`` (``None``: not ours, or an old name)."""
    m = _TEMP_RE.match(name)
    return int(m.group("pid")) if m else None


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """Return the process umask without changing it (Linux: /proc; elsewhere a guarded set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode(path: Path | None = None) -> int:
    """The mode a file written at ``path`` should get: the existing file's, else ``0o666 & ~umask``."""
    if path is not None:
        try:
            return os.stat(path).st_mode & 0o7777
        except OSError:
            pass
    return 0o666 & ~current_umask()


def new_dir_mode() -> int:
    """The mode ``mkdir`` gives a folder: ``0o777 & ~umask`` (``mkdtemp`` gives ``0700``)."""
    return 0o777 & ~current_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move ``tmp_path`` over ``path`` atomically (mode as :func:`new_file_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode(path)
    # The writer's pid is in the name, so a sweep can tell a dead writer's leftovers from live work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    """SHA-256 of a regular file's bytes (hex), read in 1 MB chunks (a FIFO or device is refused:
    :class:`~indexer.core.safe_files.NotARegularFile`, an ``OSError``)."""
    from indexer.core.safe_files import open_regular

    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
