"""The ``build`` and ``info`` jobs: open the stores, run the chosen engine with a progress bar, close."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from indexer.core.config import BuildConfig
from indexer.core.errors import StoreUnavailableError
from indexer.ingest.local import build_index
from indexer.ingest.plan import REJECTED_CSV, BuildSummary, check_not_empty, list_items
from indexer.stores import open_stores
from indexer.stores.binding import store_identity
from indexer.vectors.transform_file import normalize_record


def run_build(config: BuildConfig, progress: bool = True, ray=None) -> BuildSummary:
    """Run one build with a tqdm progress bar on stderr; stores are flushed and closed at the end.

    With ``ray`` (a :class:`indexer.ingest.ray_engine.RayConfig`) the build runs on Ray Data instead.
    """
    from tqdm.auto import tqdm

    from indexer.ingest.heap import release_free_memory
    from indexer.model.encoder import load_encoder
    from indexer.stores.faiss.store import FaissStore

    items, problems = list_items(
        config
    )  # an empty listing or a bad --metadata table fails here, before the model
    # The folder's write lock, and with it the check that the folder is writable, also come before the
    # model loads and long before anything is embedded.
    # The Flat index is built from the shards when the build closes, not held while it embeds.
    kind = None if config.faiss_index is None else str(config.faiss_index)  # the store takes it as text
    faiss = FaissStore(
        config.index_dir, wait=config.wait, kind=kind, memory=config.faiss_memory, defer_index=True
    )
    try:
        encoder = load_encoder(config.model)
        opened = open_stores(config.index_dir, config.redis, dim=encoder.dim, faiss_store=faiss)
    except BaseException:
        faiss.close()
        raise
    with opened as stores:
        if ray is not None:
            from indexer.ingest.ray_engine import run_ray_build

            summary = run_ray_build(config, ray, list(stores), encoder)
        else:
            bar = tqdm(
                total=len(items), unit="img", desc="embedding", disable=not progress, dynamic_ncols=True
            )
            last = [0]

            def tick(done: int) -> None:
                bar.update(done - last[0])
                last[0] = done

            try:
                # The listing made above, not a second one.
                # Memory freed since the last checkpoint goes back to the kernel at each one: the heap's
                # holes do not add up with the number of images.
                summary = build_index(config, list(stores), encoder=encoder, progress=tick, items=items,
                                      problems=problems, after_checkpoint=release_free_memory)  # fmt: skip
            finally:
                bar.close()
        summary.stores = [store_identity(store) for store in stores]
        for store in stores:  # each store's own check (Redis: every hash indexed, no new indexing failure)
            store.flush()
            summary.store_problems += store.check()
    check_not_empty(summary, config.index_dir)
    return summary


def index_info(index_dir: Path) -> dict[str, Any]:
    """Summarise an index folder: manifest, count, rejected count, distinct metadata values."""
    with open_stores(index_dir, read_only=True) as stores:
        return _describe(index_dir, stores.faiss)


def _describe(index_dir: Path, store) -> dict[str, Any]:
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
    return {
        "count": store.count(),
        "faiss": store.search_settings,
        "manifest": manifest,
        "normalize": normalize_record(manifest),
        "rejected": rejected,
        "values": values,
        "damage": store.check(),
    }
