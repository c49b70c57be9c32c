"""The explorer's catalog at N records: memory it adds over the FAISS store, and per-request cost.

Writes a FAISS folder of N records laid out as BBBC006 (384 wells x 2 sites x 2 channels per z, 8-d
vectors), opens it read-only as ``mae-search serve`` does, then measures in one run:
- the Python and numpy memory (tracemalloc) the catalog adds once it has answered facets, siblings and
  the live panel's relatives, per record; beside it, what a dict ``{id: ImageRecord}`` of every record
  (the catalog before it held columns) adds, measured the same way;
- the time per request of a record's siblings (``GET /api/record/{id}``) and of the live panel's
  exclusions (``POST /api/perturb``, ``exclude=site``), best of 5 batches; beside them, a scan of every
  record per request (the old siblings, ``eval.gallery.exclusions`` over every record).
"""

from __future__ import annotations

import gc
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import best_of
from bench.harness import Result

ROWS = "ABCDEFGHIJKLMNOP"


@dataclass(frozen=True)
class Params:
    """``n`` records (default: the full plate); ``queries`` records asked for per batch."""

    n: int = 52_224
    queries: int = 60


QUICK = Params(n=4096, queries=20)


def write_index(folder: Path, n: int) -> None:
    """N records of the plate's layout in a FAISS folder, a shard per 4,096."""
    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.store import FaissStore

    with FaissStore(folder, dim=8) as writer:
        for s in range(0, n, 4096):
            recs = []
            for i in range(s, min(n, s + 4096)):
                z, w, site, ch = i // 1536, i % 1536 // 4, i % 4 // 2 + 1, i % 2 + 1
                well = f"{ROWS[w // 24]}{w % 24 + 1:02d}"
                path = f"/data/BBBC006_v1_images_z_{z:02d}/mcf-z-stacks-03212011_{well.lower()}_s{site}_w{ch}{i:08d}.tif"
                recs.append(ImageRecord(id=10**12 + i, path=path, plate="mcf-z-stacks-03212011", well=well,
                                        row=well[0], column=w % 24 + 1, site=site, channel=f"w{ch}", z=z))  # fmt: skip
            writer.add(np.ones((len(recs), 8), dtype=np.float32), recs)
            writer.flush()


def held(build) -> tuple[float, object]:
    """Bytes that ``build()``'s result holds (tracemalloc), and the result."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def per_call(fn, ids: list[int], repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds per call of ``fn`` over ``ids``."""
    return best_of(lambda: [fn(i) for i in ids], repeats) / len(ids)


def run(p: Params) -> Iterator[Result]:
    """The catalog's memory and per-request costs at ``p.n`` records, with the scans beside them."""
    from eval import gallery
    from indexer.stores.faiss.store import FaissStore
    from retriever.catalog import Catalog

    n = p.n
    with tempfile.TemporaryDirectory() as tmp:
        write_index(Path(tmp) / "idx", n)
        store = FaissStore(Path(tmp) / "idx", read_only=True)
        ids = store.ids()
        probe = ids[:: max(1, n // p.queries)][: p.queries].tolist()

        def answered() -> Catalog:
            catalog = Catalog(store)
            catalog.facets()
            for i in probe:
                catalog.siblings(i)
                gallery.exclusions_from(catalog.relatives, [i], "site")
            return catalog

        columnar, catalog = held(answered)
        as_dict, records = held(lambda: {r.id: r for r in store.get(ids)})
        yield Result("catalog (columns, facets, group index)", "memory_added", columnar / n, "B/record")
        yield Result("a dict of every record (before)", "memory_added", as_dict / n, "B/record")
        site = per_call(catalog.siblings, probe)
        exclusions = per_call(lambda q: gallery.exclusions_from(catalog.relatives, [q], "site"), probe)
        scan = per_call(
            lambda q: [r for r in records.values() if (r.plate, r.well, r.site) == (records[q].plate,
                       records[q].well, records[q].site)], probe[:10], repeats=3)  # fmt: skip
        scan_ex = per_call(lambda q: gallery.exclusions(records.values(), [q], "site"), probe[:10], repeats=3)
        yield Result("siblings (GET /api/record/{id})", "per_request", site * 1e6, "us")
        yield Result("siblings, a scan of every record (before)", "per_request", scan * 1e6, "us")
        yield Result("exclusions (POST /api/perturb, exclude=site)", "per_request", exclusions * 1e6, "us")
        yield Result("exclusions, gallery.exclusions over every record (before)", "per_request",
                     scan_ex * 1e6, "us")  # fmt: skip
        store.close()
