"""The shard folders of the Ray build (:mod:`indexer.ingest.ray_engine`): where an index's shards go,
importing the finished ones into the FAISS mirror, and the raw vectors a first ``--normalize`` build
stages there before its fit."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.errors import MaeError
from indexer.core.records import ImageRecord
from indexer.ingest.plan import Ledger

SHARD_DIR = "ray-shards"
RAW_DIR = "raw"
log = logging.getLogger(__name__)


def shard_root(index_dir: Path, shard_url: str | None, manifest: dict | None) -> str | None:
    """Where the Ray shards of the index at ``index_dir`` (``manifest``: its manifest, ``None`` for a new
    folder) are written, looked for and deleted; its staged raw vectors go to ``<root>/raw``.

    By default ``<index>/ray-shards``: the folder's own, kept by its write lock. A custom ``shard_url`` may
    be shared by several indexes (one bucket for a team's builds, or a stale folder of another index), so
    each index keeps to ``<shard_url>/<index_uid>`` (the identity its manifest and its Redis index share):
    it imports, reuses and deletes only its own shards, and leaves another index's for that index's
    re-run. ``None``: a custom URL and an index without a uid yet (a new folder), which has none there.
    """
    from indexer.stores.binding import UID_KEY

    if shard_url is None:
        return str(Path(index_dir) / SHARD_DIR)
    uid = (manifest or {}).get(UID_KEY)
    return f"{shard_url.rstrip('/')}/{uid}" if uid else None


def _shard_files(url: str) -> tuple[Any, list[str]]:
    """The filesystem of ``url`` and its finished parquet shards, sorted (none when the folder is absent)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return fs, []
    return fs, sorted(p for p in fs.ls(root, detail=False) if str(p).endswith(".parquet"))


def warn_loose_shards(shard_url: str) -> list[str]:
    """Log one warning for finished shards lying directly under a custom ``shard_url``, and return them.

    Builds before shards were kept per index (:func:`shard_root`) left a killed run's shards there. No
    index imports them now, so their images would be embedded again without a word; which index wrote
    them is not recorded in them, so they are reported, not guessed at.
    """
    _, loose = _shard_files(shard_url)
    if loose:
        log.warning(
            "%d Ray shard(s) lie directly under %s (e.g. %s), left by a build from before shards were "
            "kept per index; no build imports them, so their images are embedded again. To reuse them, "
            "move them under <shard_url>/<index_uid>/ (index_uid: the manifest of the index that wrote "
            "them); otherwise delete them.",
            len(loose), shard_url, Path(str(loose[0])).name,
        )  # fmt: skip
    return loose


def import_shards(shard_url: str, faiss_store) -> int:
    """Add every finished shard under ``shard_url`` to the FAISS store, flush, then delete the shards."""
    import pyarrow.parquet as pq

    from indexer.stores.faiss.store import table_to_records

    fs, paths = _shard_files(shard_url)  # not the raw/ folder below it: a folder is not a shard
    if not paths:
        return 0
    n = 0
    for p in paths:
        with fs.open(p, "rb") as f:
            ids, vectors, records, deleted = table_to_records(pq.read_table(f))
        # A shard written before writers kept one row per id may repeat one (same content, same vector).
        _, first = np.unique(ids, return_index=True)
        if len(first) < len(ids):
            first = np.sort(first)
            vectors, records = vectors[first], [records[i] for i in first]
        faiss_store.add(vectors, records)
        n += len(records)
    faiss_store.flush()  # atomic: the mirror holds all of these shards or none
    for p in paths:
        fs.rm(p)
    return n


def first_listed(ledger: Ledger, record: ImageRecord, items: dict[str, Any]) -> ImageRecord:
    """The record the duplicate rule chose for ``record``'s content: the first-listed path's, with the
    metadata the listing parsed (``items``: path -> listed item) and the ``source`` decoding found.

    A plane of a stack (path ``file#i``) is not a listed item: its record (one whole record, the one the
    shard holds) is kept as it is.
    """
    from indexer.ingest.prepare import image_record

    path = ledger.first_path(record.id)
    if path not in items:
        return record
    return replace(image_record(items[path], record.id), source=record.source)


def staged_ids(raw_url: str) -> set[int]:
    """The ids of the raw vectors staged under ``raw_url`` (only the id column is read)."""
    import pyarrow.parquet as pq

    fs, paths = _shard_files(raw_url)
    ids: set[int] = set()
    for p in paths:
        with fs.open(p, "rb") as f:
            ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return ids


def read_staged(raw_url: str, order: list[int], ledger: Ledger, items: dict[str, Any]):
    """The staged raw vectors of ``order`` (ids, in listing order) and their first-listed records.

    One array of ``len(order)`` vectors, filled shard by shard: the raw vectors a fit needs, no more
    (rows of other ids, or a second copy of one, are dropped as each shard is read).

    Raises
    ------
    MaeError
        A staged shard vanished, so some vectors are missing (a re-run embeds them again).
    """
    import pyarrow.parquet as pq

    from indexer.stores.faiss.store import table_to_records

    position = {image_id: n for n, image_id in enumerate(order)}
    vectors: np.ndarray | None = None
    records: list[ImageRecord | None] = [None] * len(order)
    fs, paths = _shard_files(raw_url)
    for p in paths:
        with fs.open(p, "rb") as f:
            ids, shard_vectors, shard_records, _ = table_to_records(pq.read_table(f))
        for i, image_id in enumerate(ids.tolist()):
            n = position.get(image_id)
            if n is None or records[n] is not None:
                continue
            if vectors is None:
                vectors = np.empty((len(order), shard_vectors.shape[1]), dtype=np.float32)
            vectors[n] = shard_vectors[i]
            records[n] = first_listed(ledger, shard_records[i], items)
    missing = sum(r is None for r in records)
    if missing or vectors is None:
        raise MaeError(
            f"{missing} of the {len(order)} raw vectors staged under {raw_url} are missing (a shard was "
            "removed during the build): run the same build again; it embeds them anew"
        )
    return vectors, records


def drop_staged(raw_url: str) -> None:
    """Delete the raw shards (every vector they hold is in every store, or not wanted by this listing)."""
    fs, paths = _shard_files(raw_url)
    for p in paths:
        fs.rm(p)
