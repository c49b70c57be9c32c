"""RSS of what a build holds per image before it embeds anything, at N images (no tracemalloc).

Lists ``data`` as a build does (into a ``SourceList``), opens the FAISS folder ``index`` read-only,
finds the already-indexed ids and books every listed image in a ledger, reading the process's RSS after
each step. Point it at a full plate and at a 1k subset to see what grows with N:

    python -m bench run plan_memory --set data=runs/plate/data --set index=runs/plate/index

Without ``data``, a synthetic plate of ``wells`` x ``z`` is written first; without ``index``, a FAISS
folder of as many records laid out as the plate (the ``catalog`` group's).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import synth_plate
from bench.groups.catalog import write_index
from bench.harness import Result
from bench.measure import peak_rss


@dataclass(frozen=True)
class Params:
    """``data`` and ``index`` folders (empty: made here from ``wells`` x ``z``)."""

    data: str = ""
    index: str = ""
    wells: str = "A01:D24"
    z: str = "14-17"


QUICK = Params(wells="A01:A08", z="14-17")


def run(p: Params) -> Iterator[Result]:
    """RSS after imports, listing, opening the FAISS store, ``index_state`` and the ledger."""
    import faiss  # noqa: F401  (the imports a build has anyway, so that they are not counted per image)
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from indexer.core.config import SourceConfig
    from indexer.images.source_list import SourceList
    from indexer.images.sources import iter_sources
    from indexer.ingest.plan import Ledger, index_state
    from indexer.stores.faiss.store import FaissStore

    with tempfile.TemporaryDirectory(prefix="mae-bench-plan-") as tmp:
        data = Path(p.data) if p.data else synth_plate(Path(tmp) / "data", p.wells, p.z)
        index = Path(p.index) if p.index else Path(tmp) / "index"
        if not p.index:
            write_index(index, sum(1 for _ in data.rglob("*.tif")))
        gc.collect()
        base = last = peak_rss().now_mb
        yield Result("after the imports", "rss", base, "MB")
        n = 0

        def step(what: str, t0: float) -> Iterator[Result]:
            nonlocal last
            gc.collect()
            now = peak_rss().now_mb
            at = {"images": n}
            yield Result(what, "seconds", time.perf_counter() - t0, "s", at)
            yield Result(what, "rss_added", now - last, "MB", at)
            if n:
                yield Result(what, "rss_added_per_image", (now - last) * 2**20 / n, "B", at)
            last = now

        t0 = time.perf_counter()
        items = SourceList.collect(iter_sources(SourceConfig(paths=(data,))))
        n = len(items)
        yield from step("listed the images", t0)
        t0 = time.perf_counter()
        store = FaissStore(index, read_only=True)
        yield from step(f"opened the FAISS store ({store.count()} records)", t0)
        t0 = time.perf_counter()
        existing, _ = index_state([store])
        yield from step(f"index_state ({len(existing)} already indexed)", t0)
        t0 = time.perf_counter()
        ledger = Ledger()
        for i, item in enumerate(items):
            ledger.admit(10**15 + i, item.path)
        yield from step("ledger admitted every image", t0)
        yield Result("total over the imports", "rss_added", last - base, "MB", {"images": n})
        store.close()
