"""``mae-index repair``: rebuild a damaged FAISS index folder from whatever is intact.

Sources, in order of trust: the sound shards (vectors and metadata); Redis, when given (vectors and
metadata of the images the shards lost); ``index.faiss`` (vectors of images found nowhere else, without
their metadata). An image recovered from ``index.faiss`` alone is kept with an empty path, and a build
counts such an image as not yet indexed, so running the same build again restores its metadata.

The result is one new shard, a fresh snapshot and state file; the old shards (damaged ones included)
are moved to ``DIR/damaged/`` rather than deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.core.config import RedisConfig
from indexer.core.errors import IndexDamagedError, MaeError
from indexer.core.records import ImageRecord

DAMAGED_DIR = "damaged"


@dataclass
class RepairReport:
    """What :func:`repair_index` found and recovered."""

    damage: list[str] = field(default_factory=list)
    from_shards: int = 0
    from_redis: int = 0
    from_snapshot: int = 0  # vectors without metadata
    total: int = 0
    manifest_restored: bool = False
    redis_damage: list[str] = field(default_factory=list)
    redis_rewritten: int = 0  # damaged or lost Redis hashes rewritten from the folder
    redis_manifest_restored: bool = False  # Redis had lost its manifest; rewritten from the folder's

    @property
    def repaired(self) -> bool:
        """True when something was damaged and was rewritten."""
        return bool(self.damage) or bool(self.redis_rewritten) or self.redis_manifest_restored

    def to_dict(self) -> dict:
        """JSON-ready report."""
        return {**self.__dict__, "repaired": self.repaired}


def repair_index(index_dir: Path, redis: RedisConfig | None = None, wait: bool = True) -> RepairReport:
    """Rebuild the index folder ``index_dir`` from its sound shards, Redis and ``index.faiss``;
    and Redis hashes that are damaged or lost from the folder's sound copy.

    Parameters
    ----------
    index_dir
        The FAISS index folder.
    redis
        Also recover from this Redis index (images the shards lost, and a damaged manifest).
    wait
        Wait for another writer of the folder (else fail at once).

    Returns
    -------
    RepairReport
        Nothing is rewritten when the folder is sound.
    """
    from indexer.stores.faiss.shards import FOREIGN, UNMARKED
    from indexer.stores.faiss.store import FaissStore

    store = FaissStore(index_dir, allow_damage=True, wait=wait)
    try:
        report = RepairReport(damage=store.check(full=True))
        foreign = [d for d in report.damage if FOREIGN in d or UNMARKED in d]
        if foreign:  # rebuilding from another index's shards would make them this index's
            raise IndexDamagedError(f"not repaired: {foreign[0]}")
        if redis is not None and not report.damage:
            _rewrite_damaged_hashes(store, redis, report)
        if not report.damage:
            report.total = report.from_shards = store.count()
            return report
        ids = store.ids()
        records: list[ImageRecord] = list(store.get(ids))
        vectors = [store.get_vectors(ids)]
        have = set(ids.tolist())
        report.from_shards = len(ids)
        manifest_ok = True
        try:
            store.read_manifest()
        except MaeError:
            manifest_ok = False
        if redis is not None:
            from indexer.stores.redis.store import RedisStore

            source = RedisStore(redis, dim=store.dim)
            try:
                report.redis_damage = source.check(full=True)
                bad = set(source.damaged_ids())
                _rewrite_damaged_hashes(store, redis, report, source, bad)
                wanted = [int(i) for i in source.ids() if int(i) not in have and int(i) not in bad]
                for start in range(0, len(wanted), 1000):
                    chunk = wanted[start : start + 1000]
                    recs = source.get(chunk)
                    keep = [i for i, r in zip(chunk, recs) if r is not None]
                    if keep:
                        records += [r for r in recs if r is not None]
                        vectors.append(source.get_vectors(keep))
                        have.update(keep)
                        report.from_redis += len(keep)
                if not manifest_ok and source.read_manifest() is not None:
                    store.write_manifest(source.read_manifest())
                    report.manifest_restored = True
            finally:
                source.close()
        snap_ids, snap_vectors = store.snapshot_vectors()
        extra = [n for n, i in enumerate(snap_ids.tolist()) if i not in have]
        if extra and snap_vectors.shape[1] == (store.dim or snap_vectors.shape[1]):
            records += [ImageRecord(id=int(snap_ids[n]), path="") for n in extra]
            vectors.append(snap_vectors[extra])
            report.from_snapshot = len(extra)
        if store.dim is None and snap_vectors.size:
            store.expect_dim(snap_vectors.shape[1])
        all_vectors = np.concatenate(vectors) if records else np.zeros((0, store.dim or 0), np.float32)
        store.replace_all(all_vectors, records, keep_old_in=DAMAGED_DIR)
        report.total = store.count()
        return report
    finally:
        store.close()


def _rewrite_damaged_hashes(store, redis: RedisConfig, report: RepairReport, source=None, bad=None) -> None:
    """Rewrite from the folder's sound copy the Redis hashes that are damaged (a missing or corrupt
    vector) or missing (lost from Redis while the folder kept them)."""
    from indexer.stores.redis.store import RedisStore

    own = source is None
    source = source or RedisStore(redis, dim=store.dim)
    try:
        bad = set(source.damaged_ids()) if bad is None else bad
        mine = set(store.ids().tolist())
        lost = mine - set(source.ids().tolist())
        fixable = sorted((bad & mine) | lost)
        if fixable:
            source.add(store.get_vectors(fixable), store.get(fixable))
            report.redis_rewritten = len(fixable)
        # A Redis restarted without its data lost its manifest (and transform) too: without them it
        # answers no query, so a repair that rewrote the hashes alone would say "repaired" and be wrong.
        manifest = store.read_manifest()
        if manifest is not None and source.read_manifest() is None:
            source.write_manifest(manifest)
            transform = store.read_transform()
            if transform is not None and source.read_transform() is None:
                source.write_transform(transform)
            report.redis_manifest_restored = True
    finally:
        if own:
            source.close()
