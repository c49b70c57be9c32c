"""Where a build's memory sits over time: `mae-index build` run in this process (the CLI, as a user runs
it) while a thread samples RSS and glibc's ``mallinfo2`` every few seconds.

Columns: RSS and its high-water mark (``hwm``: a jump between two rows is a peak the samples missed); ``arena`` (bytes glibc holds in its main heap) with ``in_use`` and ``free`` (freed but
held: holes); ``mapped`` (blocks past the mmap threshold, each its own mapping) and how many; Python
objects tracked by the cycle collector (every 10th sample). Memory that rises and falls back at once
points at the cycle collector; ``free`` that grows points at heap holes; ``mapped`` that grows with
the images built points at buffers kept alive. Found this way: every TIFF's bytes held until a full
collection (tifffile's page cycle), see the README.

    python bench/build_memory_timeline.py runs/plate/data --index runs/timeline \
        --model examples/models/mae-tiny-bbbc006 [other mae-index build options]

Arguments after DATA go to ``mae-index build`` unchanged (``--no-progress`` is added). Needs glibc.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import rss_mb  # noqa: E402

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
           "keepcost")  # fmt: skip


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h)."""

    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def hwm_mb() -> float:
    """The kernel's high-water mark of this process's RSS (``VmHWM``), in MB: a peak between samples."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def sample(libc, t0: float, n: int) -> dict:
    """One row of the timeline (sizes in MB)."""
    m = libc.mallinfo2()
    return {
        "s": round(time.perf_counter() - t0, 1),
        "rss": round(rss_mb()),
        "hwm": round(hwm_mb()),
        "arena": m.arena >> 20,
        "in_use": m.uordblks >> 20,
        "free": m.fordblks >> 20,
        "mapped": m.hblkhd >> 20,
        "mapped_blocks": m.hblks,
        "objects": len(gc.get_objects()) if n % 10 == 0 else "",
    }


def main() -> None:
    """Run the build with the sampler; print every row, then the peak."""
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    rows: list[dict] = []
    done = threading.Event()
    t0 = time.perf_counter()

    def run() -> None:
        while not done.is_set():
            rows.append(sample(libc, t0, len(rows)))
            done.wait(1.0)

    sampler = threading.Thread(target=run, daemon=True)
    sampler.start()
    from indexer.cli import main as index_main

    try:
        index_main(["build", *args, "--no-progress"], standalone_mode=False)
    finally:
        done.set()
        sampler.join()
        rows.append(sample(libc, t0, 0))
        print("\t".join(rows[0]))
        for row in rows:
            print("\t".join(str(v) for v in row.values()))
        peak = max(rows, key=lambda r: r["rss"])
        print(
            f"peak sampled RSS {peak['rss']} MB at {peak['s']} s; first {rows[0]['rss']} MB, last {rows[-1]['rss']} MB; "
            f"high-water mark {rows[-1]['hwm']} MB"
        )


if __name__ == "__main__":
    main()
