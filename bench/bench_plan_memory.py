"""RSS of what a build holds per image before it embeds anything, at N images (no tracemalloc).

Lists DATA as a build does (into a ``SourceList``), opens the FAISS folder INDEX read-only, finds the already-indexed ids and books every
listed image in a ledger, printing the process's RSS after each step. Point it at a full plate and
at a 1k subset to see what grows with N:

    python bench/bench_plan_memory.py runs/plate/data runs/plate/index
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import rss_mb  # noqa: E402


def main(data: Path, index: Path) -> None:
    """Print RSS after imports, listing, opening the FAISS store, ``index_state`` and the ledger."""
    import faiss  # noqa: F401  (the imports a build has anyway, so that they are not counted per image)
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from indexer.core.config import SourceConfig
    from indexer.images.source_list import SourceList
    from indexer.images.sources import iter_sources
    from indexer.ingest.plan import Ledger, index_state
    from indexer.stores.faiss.store import FaissStore

    base = last = rss_mb()
    print(f"imports: {base:.0f} MB")

    n = 0

    def step(what: str, t0: float) -> None:
        nonlocal last
        gc.collect()
        now = rss_mb()
        per_image = f", {(now - last) * 2**20 / n:.0f} B per image" if n else ""
        print(f"{what} in {time.perf_counter() - t0:.1f} s: {now:.0f} MB (+{now - last:.1f}{per_image})")
        last = now

    t0 = time.perf_counter()
    items = SourceList.collect(iter_sources(SourceConfig(paths=(data,))))
    n = len(items)
    step(f"listed {len(items)} images", t0)
    t0 = time.perf_counter()
    store = FaissStore(index, read_only=True)
    step(f"opened the FAISS store ({store.count()} records)", t0)
    t0 = time.perf_counter()
    existing, _ = index_state([store])
    step(f"index_state ({len(existing)} already indexed)", t0)
    t0 = time.perf_counter()
    ledger = Ledger()
    for i, item in enumerate(items):
        ledger.admit(10**15 + i, item.path)
    step("ledger admitted every image", t0)
    print(f"total over the imports: +{last - base:.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
