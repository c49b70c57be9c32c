"""One writer at a time per index folder: an exclusive ``fcntl.flock`` on ``DIR/.write.lock``.

A writer (a build, ``sync``, ``repair``) holds the lock from the moment it opens the folder until it
closes it; readers (``query``, ``serve``, ``info``) take no lock, since every file a writer replaces is
replaced atomically. A second writer either waits, saying so once, or fails at once (``wait=False``,
``--no-wait`` on the command line).

The lock is the kernel's, so it goes when its process dies, however it dies: a killed build never
leaves a stale lock. Within one process the lock is shared (counted), so a process that opens the
same folder twice for writing does not wait on itself.

On NFS: Linux clients (2.6.12+) map ``flock`` onto NFS byte-range locks, so the lock excludes writers
on other machines too when the server runs a lock manager (NFSv4 always does; NFSv3 needs ``lockd``,
and a mount with ``nolock`` makes the lock local to each client). On such a mount, run writers for one
folder from one machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from indexer.core.errors import IndexBusyError, StoreUnavailableError
from indexer.core.safe_files import NotARegularFile, open_regular, read_bounded

LOCK_FILE = ".write.lock"
#: Seconds between tries while waiting for another writer.
POLL_SECONDS = 0.2

_held: dict[str, tuple[int, int]] = {}  # real path of the lock file -> (fd, holders in this process)
_guard = threading.Lock()


def _holder_note(path: Path) -> str:
    try:
        text = read_bounded(path, 512).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" (held by {text})" if text else ""


class FolderLock:
    """The write lock of one index folder; :meth:`acquire` then :meth:`release` (or a ``with``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._key: str | None = None

    def acquire(self, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> FolderLock:
        """Take the lock.

        Parameters
        ----------
        wait
            Wait for another writer to finish (``on_wait`` is told once); else fail at once.
        on_wait
            Called once with a message when the lock is busy and this call waits.

        Raises
        ------
        IndexBusyError
            ``wait=False`` and another process holds the lock.
        StoreUnavailableError
            The folder is not writable (the lock file cannot be created).
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Never through a link: a planted .write.lock -> elsewhere would be truncated and written.
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o666, follow=False)  # less the umask
        except NotARegularFile as e:
            raise StoreUnavailableError(
                f"the write lock {e}: the index folder {self.directory} was tampered with"
            ) from e
        except OSError as e:
            raise StoreUnavailableError(
                f"index folder {self.directory} is not writable ({e.strerror or e}): choose another --index "
                "folder, or fix its permissions"
            ) from e
        key = os.path.realpath(self.path)
        with _guard:
            if key in _held:
                held_fd, n = _held[key]
                _held[key] = (held_fd, n + 1)
                os.close(fd)
                self._key = key
                return self
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise StoreUnavailableError(f"cannot lock {self.path}: {e.strerror or e}") from e
            who = _holder_note(self.path)
            if not wait:
                os.close(fd)
                raise IndexBusyError(
                    f"another writer is using the index at {self.directory}{who}; wait for it to finish, "
                    "or run again without --no-wait to wait for it"
                )
            if not told and on_wait is not None:
                on_wait(f"waiting for another writer of {self.directory}{who} to finish ...")
                told = True
            time.sleep(POLL_SECONDS)
        # Who holds it, for the next writer's message only; the lock itself is the flock.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the note is only for messages
        with _guard:
            _held[key] = (fd, 1)
        self._key = key
        return self

    def release(self) -> None:
        """Let the lock go (the last holder in this process unlocks it)."""
        if self._key is None:
            return
        with _guard:
            fd, n = _held[self._key]
            if n > 1:
                _held[self._key] = (fd, n - 1)
            else:
                del _held[self._key]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._key = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
