"""Where a build's memory sits over time: `mae-index build` run in this process (the CLI, as a user runs
it) while a thread samples RSS and glibc's ``mallinfo2`` every second.

Per sample: RSS and its high-water mark (a jump between two samples is a peak the samples missed);
``arena`` (bytes glibc holds in its main heap) with ``in_use`` and ``free`` (freed but held: holes);
``mapped`` (blocks past the mmap threshold, each its own mapping) and how many. Memory that rises and
falls back at once points at the cycle collector; ``free`` that grows points at heap holes; ``mapped``
that grows with the images built points at buffers kept alive. Found this way: every TIFF's bytes held
until a full collection (tifffile's page cycle). The rows are the peaks of each column, the first and
last RSS; ``timeline`` names a TSV file to write every sample to. Needs glibc.

    python -m bench run build_timeline --set data=runs/plate/data --set timeline=/tmp/timeline.tsv

``build_args`` go to ``mae-index build`` unchanged (``--no-progress`` is added); without ``data``, a
synthetic plate of ``wells`` x ``z`` is written first.
"""

from __future__ import annotations

import ctypes
import shlex
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, synth_plate
from bench.harness import Result
from bench.measure import peak_rss

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
           "keepcost")  # fmt: skip


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h)."""

    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


@dataclass(frozen=True)
class Params:
    """``data``: images to build (empty: synthesize ``wells`` x ``z``); ``model``; ``build_args``."""

    data: str = ""
    wells: str = "A01:B04"
    z: str = "0-33"
    model: str = str(REPO / "examples" / "models" / "mae-tiny-bbbc006")
    build_args: str = "--device cpu"
    timeline: str = ""


QUICK = Params(wells="A01:A04", z="15-17")


def sample(libc, t0: float) -> dict:
    """One sample of the timeline (sizes in MB)."""
    m = libc.mallinfo2()
    rss = peak_rss()
    return {"s": round(time.perf_counter() - t0, 1), "rss": rss.now_mb, "hwm": rss.peak_mb,
            "arena": m.arena / 2**20, "in_use": m.uordblks / 2**20, "free": m.fordblks / 2**20,
            "mapped": m.hblkhd / 2**20, "mapped_blocks": m.hblks}  # fmt: skip


def run(p: Params) -> Iterator[Result]:
    """Run the build with the sampler; the peak of each column, the first and last RSS."""
    from indexer.cli import main as index_main

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    with tempfile.TemporaryDirectory(prefix="mae-bench-timeline-") as tmp:
        data = Path(p.data) if p.data else synth_plate(Path(tmp) / "data", p.wells, p.z)
        images = sum(1 for _ in data.rglob("*.tif"))
        rows: list[dict] = []
        done = threading.Event()
        t0 = time.perf_counter()

        def sampler() -> None:
            while not done.is_set():
                rows.append(sample(libc, t0))
                done.wait(1.0)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        try:
            index_main(["build", str(data), "--index", str(Path(tmp) / "index"), "--model", p.model,
                        *shlex.split(p.build_args), "--no-progress"], standalone_mode=False)  # fmt: skip
        except SystemExit as e:  # the CLI ends with its exit status even when it succeeds
            if e.code not in (0, None):
                raise RuntimeError(f"mae-index build exited {e.code}") from e
        finally:
            done.set()
            thread.join()
            rows.append(sample(libc, t0))
    if p.timeline:
        lines = ["\t".join(rows[0])] + ["\t".join(f"{v:.1f}" for v in r.values()) for r in rows]
        Path(p.timeline).write_text("\n".join(lines) + "\n")
    at = {"images": images, "samples": len(rows), "build_seconds": rows[-1]["s"]}
    peak = max(rows, key=lambda r: r["rss"])
    yield Result("peak sampled RSS", "rss", peak["rss"], "MB", {**at, "at_s": peak["s"]})
    yield Result("high-water mark at the end", "peak_rss", rows[-1]["hwm"], "MB", at)
    yield Result("first sample", "rss", rows[0]["rss"], "MB", at)
    yield Result("last sample", "rss", rows[-1]["rss"], "MB", at)
    for col, unit in (
        ("arena", "MB"),
        ("in_use", "MB"),
        ("free", "MB"),
        ("mapped", "MB"),
        ("mapped_blocks", ""),
    ):
        yield Result("glibc heap, largest sample", col, max(r[col] for r in rows), unit, at)
