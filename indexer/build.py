"""The ``build`` and ``info`` jobs: open the stores, run the pipeline with a progress bar, close."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from indexer.config import BuildConfig, RedisConfig
from indexer.errors import ConfigError, StoreUnavailableError
from indexer.pipeline import REJECTED_CSV, BuildSummary, build_index, check_not_empty, list_items
from indexer.stores.binding import check_pair, choose_redis_index, store_identity
from indexer.stores.manifest import read_folder_manifest


def open_stores(index_dir: Path, redis: RedisConfig | None, dim: int | None = None, read_only: bool = False):
    """Open the FAISS store, and the Redis store when ``redis`` is given; FAISS comes first."""
    from indexer.stores.faiss_store import FaissStore

    stores = [FaissStore(index_dir, dim=dim, read_only=read_only)]
    if redis is not None:
        from indexer.stores.redis_store import RedisStore

        stores.append(RedisStore(redis, dim=dim))
    return stores


def redis_config_for(
    index_dir: Path | None, url: str | None, given: str | None, writing: bool, **settings: Any
) -> RedisConfig | None:
    """The Redis settings to use with ``index_dir``: ``None`` without a URL; the index name given, else
    the folder's record, else (a build) a name of the folder's own (:func:`choose_redis_index`)."""
    if not url:
        return None
    manifest = read_folder_manifest(index_dir) if index_dir is not None else None
    name = choose_redis_index(index_dir, given, manifest, writing)
    return RedisConfig(url=url, index_name=name, **settings)


def check_folder_pair(index_dir: Path, redis_store, faiss_store=None, by_count: bool = True) -> None:
    """Refuse reading ``index_dir`` together with a Redis index that is not its own (:func:`check_pair`).

    Raises
    ------
    StoreUnavailableError
        The folder is no index, or the Redis index holds nothing.
    IndexMismatchError
        The Redis index holds another folder's data.
    """
    folder_manifest = read_folder_manifest(index_dir)
    if folder_manifest is None:
        raise StoreUnavailableError(
            f"no index at {index_dir}: build one first with `mae-index build DATA --index {index_dir}`"
        )
    redis_manifest = redis_store.read_manifest()
    if redis_manifest is None:
        raise StoreUnavailableError(
            f"{redis_store.location} holds no index, though the folder {index_dir} mirrors it (dropped, or "
            f"another server?). Re-run the build into {index_dir} to fill it, or query the folder with "
            "--backend faiss"
        )
    opened: list = [faiss_store]

    def folder():
        if opened[0] is None:
            from indexer.stores.faiss_store import FaissStore

            opened[0] = FaissStore(index_dir, read_only=True)
        return opened[0]

    check_pair(
        str(index_dir),
        folder_manifest,
        redis_store.location,
        redis_manifest,
        counts=(lambda: (folder().count(), redis_store.count())) if by_count else None,
        id_sets=lambda: (set(folder().ids().tolist()), set(redis_store.ids().tolist())),
    )


def open_read_store(index_dir: Path | None, redis: RedisConfig | None, backend: str | None):
    """Open the store a reader searches: Redis when a URL is given (or asked for), checked against the
    folder when one is given; else the FAISS folder.

    Raises
    ------
    ConfigError
        Redis asked for without a URL, or FAISS without a folder.
    """
    backend = backend or ("redis" if redis else "faiss")
    if backend == "redis":
        if redis is None:
            raise ConfigError("--backend redis needs --redis-url (or MAE_REDIS_URL)")
        from indexer.stores.redis_store import RedisStore

        store = RedisStore(redis)
        if index_dir is not None:
            try:
                check_folder_pair(index_dir, store)
            except BaseException:
                store.close()
                raise
        return store
    if index_dir is None:
        raise ConfigError("--index DIR is required for the FAISS backend")
    from indexer.stores.faiss_store import FaissStore

    return FaissStore(index_dir, read_only=True)


def run_build(config: BuildConfig, progress: bool = True, ray=None) -> BuildSummary:
    """Run one build with a tqdm progress bar on stderr; stores are flushed and closed at the end.

    With ``ray`` (a :class:`indexer.ray_build.RayConfig`) the build runs on Ray Data instead.
    """
    from tqdm.auto import tqdm

    from indexer.encoder import load_encoder

    items, _ = list_items(config)  # an empty listing fails here, before the model loads
    encoder = load_encoder(config.model)
    stores = open_stores(config.index_dir, config.redis, dim=encoder.dim)
    if ray is not None:
        from indexer.ray_build import run_ray_build

        try:
            summary = run_ray_build(config, ray, stores, encoder)
            summary.stores = [store_identity(s) for s in stores]
            check_not_empty(summary, config.index_dir)
            return summary
        finally:
            for store in stores:
                store.close()
    total = len(items)
    bar = tqdm(total=total, unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
    last = [0]

    def tick(done: int) -> None:
        bar.update(done - last[0])
        last[0] = done

    try:
        summary = build_index(config, stores, encoder=encoder, progress=tick)
        summary.stores = [store_identity(s) for s in stores]
        check_not_empty(summary, config.index_dir)
        return summary
    finally:
        bar.close()
        for store in stores:
            store.close()


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
    values["tags"] = sorted({t for r in records for t in r.tag_strings})
    return {"count": store.count(), "manifest": manifest, "rejected": rejected, "values": values}
