"""Peak RSS of a FAISS store written as a build writes it, without the model.

N records of DIM-d in batches of 64, a checkpoint (flush) every 1,024, the C heap trimmed at each one
as ``mae-index build`` does (``indexer.ingest.heap.release_free_memory``, which also releases pyarrow's
pool; ``arrow_release=false`` trims glibc only, as before that was added). Rows: RSS and the kernel's
high-water mark over the start, every 10,240 rows and at the end.

    python -m bench run store_write --set n=52224
    python -m bench run store_write --set n=52224 --set arrow_release=false
"""

from __future__ import annotations

import ctypes
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import Result
from bench.measure import peak_rss


@dataclass(frozen=True)
class Params:
    """``n`` records of ``dim``-d; ``arrow_release``: release pyarrow's pool too at each checkpoint."""

    n: int = 52_224
    dim: int = 192
    arrow_release: bool = True


QUICK = Params(n=10_240)


def run(p: Params) -> Iterator[Result]:
    """Write the store; RSS and its peak over the start, every 10,240 rows and once closed."""
    import faiss  # noqa: F401  (loaded before the start is measured)
    import pyarrow.parquet  # noqa: F401

    from indexer.core.records import ImageRecord
    from indexer.ingest.heap import release_free_memory
    from indexer.stores.faiss.store import FaissStore

    def release() -> None:
        if p.arrow_release:
            release_free_memory()
        else:
            ctypes.CDLL(None).malloc_trim(0)

    paths = [f"/data/BBBC006_v1_images_z_{i % 34:02d}/mcf-z-stacks-03212011_a{i % 24 + 1:02d}_s{i % 2 + 1}_"
             f"w1{i:08d}-0000-0000-0000-000000000000.tif" for i in range(p.n)]  # fmt: skip
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = FaissStore(Path(tmp) / "index")
        release()
        start = peak_rss()
        yield Result("start", "rss", start.now_mb, "MB")
        for s in range(0, p.n, 64):
            records = [ImageRecord(id=10**12 + i, path=paths[i], plate="p", well="A01", row="A", column=1, site=1,
                                   channel="w1", z=i % 34) for i in range(s, min(p.n, s + 64))]  # fmt: skip
            store.add(rng.standard_normal((len(records), p.dim)).astype(np.float32), records)
            if (s // 64) % 16 == 15:
                store.flush()
                release()
            if (s // 64) % 160 == 159:
                now = peak_rss()
                at = {"rows": s + 64}
                yield Result(f"{s + 64} rows written", "rss_over_start", now.now_mb - start.now_mb, "MB", at)
                yield Result(
                    f"{s + 64} rows written", "peak_rss_over_start", now.peak_mb - start.now_mb, "MB", at
                )
        store.close()
        release()
        end = peak_rss()
        yield Result(f"{p.n} rows, closed", "rss_over_start", end.now_mb - start.now_mb, "MB", {"rows": p.n})
        yield Result(
            f"{p.n} rows, closed", "peak_rss_over_start", end.peak_mb - start.now_mb, "MB", {"rows": p.n}
        )
        yield Result(f"{p.n} rows, closed", "peak_per_row", (end.peak_mb - start.now_mb) * 2**20 / p.n, "B",
                     {"rows": p.n})  # fmt: skip
