"""The ``build`` and ``info`` jobs: open the stores, run the chosen engine with a progress bar, close."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from indexer.build.local import build_index
from indexer.build.plan import REJECTED_CSV, BuildSummary
from indexer.config import BuildConfig
from indexer.errors import StoreUnavailableError
from indexer.sources import iter_sources
from indexer.stores import open_stores


def run_build(config: BuildConfig, progress: bool = True, ray=None) -> BuildSummary:
    """Run one build with a tqdm progress bar on stderr; stores are flushed and closed at the end.

    With ``ray`` (a :class:`indexer.build.ray_engine.RayConfig`) the build runs on Ray Data instead.
    """
    from tqdm.auto import tqdm

    from indexer.encoder import load_encoder

    encoder = load_encoder(config.model)
    with open_stores(config.index_dir, config.redis, dim=encoder.dim) as stores:
        if ray is not None:
            from indexer.build.ray_engine import run_ray_build

            return run_ray_build(config, ray, list(stores), encoder)
        total = sum(1 for _ in iter_sources(config.sources))
        bar = tqdm(total=total, unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
        last = [0]

        def tick(done: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        try:
            return build_index(config, list(stores), encoder=encoder, progress=tick)
        finally:
            bar.close()


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
    return {"count": store.count(), "manifest": manifest, "rejected": rejected, "values": values}
