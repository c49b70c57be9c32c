"""The ``build`` and ``info`` jobs: open the stores, run the pipeline with a progress bar, close."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from indexer.config import BuildConfig, RedisConfig
from indexer.errors import StoreUnavailableError
from indexer.pipeline import REJECTED_CSV, BuildSummary, build_index
from indexer.sources import iter_sources


def open_stores(
    index_dir: Path,
    redis: RedisConfig | None,
    dim: int | None = None,
    read_only: bool = False,
    wait: bool = True,
):
    """Open the FAISS store, and the Redis store when ``redis`` is given; FAISS comes first.

    A writer (``read_only=False``) takes the folder's write lock first: ``wait`` for another writer,
    or fail at once with :class:`~indexer.errors.IndexBusyError`.
    """
    from indexer.stores.faiss_store import FaissStore

    stores = [FaissStore(index_dir, dim=dim, read_only=read_only, wait=wait)]
    if redis is not None:
        from indexer.stores.redis_store import RedisStore

        try:
            stores.append(RedisStore(redis, dim=dim))
        except BaseException:
            stores[0].close()
            raise
    return stores


def run_build(config: BuildConfig, progress: bool = True, ray=None) -> BuildSummary:
    """Run one build with a tqdm progress bar on stderr; stores are flushed and closed at the end.

    With ``ray`` (a :class:`indexer.ray_build.RayConfig`) the build runs on Ray Data instead.
    """
    from tqdm.auto import tqdm

    from indexer.encoder import load_encoder
    from indexer.stores.faiss_store import FaissStore

    # The lock, and with it the check that the folder is writable, come before the model loads and
    # long before anything is embedded.
    faiss_store = FaissStore(
        config.index_dir, wait=config.wait, kind=config.faiss_index, memory=config.faiss_memory
    )
    try:
        encoder = load_encoder(config.model)
        stores = [faiss_store]
        if config.redis is not None:
            from indexer.stores.redis_store import RedisStore

            stores.append(RedisStore(config.redis, dim=encoder.dim))
    except BaseException:
        faiss_store.close()
        raise
    if ray is not None:
        from indexer.ray_build import run_ray_build

        try:
            return _checked(run_ray_build(config, ray, stores, encoder), stores)
        finally:
            for store in stores:
                store.close()
    total = sum(1 for _ in iter_sources(config.sources))
    bar = tqdm(total=total, unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
    last = [0]

    def tick(done: int) -> None:
        bar.update(done - last[0])
        last[0] = done

    try:
        return _checked(build_index(config, stores, encoder=encoder, progress=tick), stores)
    finally:
        bar.close()
        for store in stores:
            store.close()


def _checked(summary: BuildSummary, stores) -> BuildSummary:
    """Ask every store to check itself after a build (Redis: every hash indexed, no new indexing
    failure) and record what it says in the summary."""
    for store in stores:
        store.flush()
        summary.store_problems += store.check()
    return summary


def index_info(index_dir: Path) -> dict[str, Any]:
    """Summarise an index folder: manifest, count, rejected count, distinct metadata values."""
    from indexer.stores.faiss_store import FaissStore

    store = FaissStore(index_dir, read_only=True)
    manifest = store.read_manifest()
    if manifest is None:
        raise StoreUnavailableError(f"{index_dir} has no manifest.json: not an index folder")
    rejected_path = Path(index_dir) / REJECTED_CSV
    rejected = 0
    if rejected_path.exists():
        with open(rejected_path, newline="", encoding="utf-8") as f:
            rejected = sum(1 for _ in csv.reader(f)) - 1
    records = [r for r in store.get(store.ids()) if r is not None]
    values = {}
    for field in ("plate", "channel", "site", "z"):
        values[field] = sorted({getattr(r, field) for r in records if getattr(r, field) is not None})
    values["distinct wells"] = [len({r.well for r in records if r.well})]
    return {
        "count": store.count(),
        "faiss": store.search_settings,
        "manifest": manifest,
        "rejected": rejected,
        "values": values,
        "damage": store.check(),
    }
