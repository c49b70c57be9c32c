"""The one place the benchmarks read resident memory (Linux).

A live process's RSS and its high-water mark come from one read of ``/proc/PID/status`` (``VmRSS``,
``VmHWM``): :func:`peak_rss`. A child that has already exited has no ``/proc`` entry left, so
:func:`run_child` reads its high-water mark from ``wait4`` (the kernel's ``ru_maxrss`` of that child).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rss:
    """Resident memory of a process, in MB (2**20 bytes): now, and the most it has held so far."""

    now_mb: float
    peak_mb: float


def peak_rss(pid: int | str = "self", trim: bool = False) -> Rss:
    """RSS and high-water mark of process ``pid`` (default: this one).

    ``trim`` first hands this process's freed C heap back to the OS (glibc ``malloc_trim``), so that
    ``now_mb`` counts what is held rather than what was freed but kept.

    Raises
    ------
    ProcessLookupError
        ``pid`` has exited (or never ran).
    """
    if trim:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: nothing to trim
            pass
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError as e:
        raise ProcessLookupError(f"no process {pid}") from e
    fields = dict(line.split(":", 1) for line in text.splitlines() if line.startswith(("VmRSS", "VmHWM")))
    if "VmRSS" not in fields:  # a zombie: exited, not yet waited for
        raise ProcessLookupError(f"process {pid} has no memory left (exited)")
    now, hwm = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    # The kernel folds each thread's page counts into VmHWM lazily (64 pages at a time), so it can trail
    # VmRSS read at the same moment; the peak is never below what is resident now.
    return Rss(now, max(now, hwm))


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: wall seconds, exit code, whether it was killed, output, peak RSS."""

    seconds: float
    exit_code: int
    killed: bool
    stdout: str
    stderr_tail: str
    peak_rss_mb: float


def run_child(
    cmd: list[str], env: dict | None = None, kill_when: Callable[[], bool] | None = None
) -> ChildRun:
    """Run ``cmd`` to its end; SIGKILL it once ``kill_when()`` turns true (checked every 0.25 s).

    Its peak RSS is the kernel's high-water mark of the child, read by ``wait4`` as it is reaped.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_when is not None and not killed and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.25)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            seconds=time.perf_counter() - t0,
            exit_code=proc.returncode,
            killed=killed,
            stdout=out.read(),
            stderr_tail=err.read()[-2000:],
            peak_rss_mb=usage.ru_maxrss / 1024,
        )
