"""Keep two stores in step: verify that a store and its FAISS mirror agree, and rebuild a mirror.

Works through the :class:`~indexer.stores.base.VectorStore` protocol only, so any pair of stores can be
compared; in practice the primary is Redis and the mirror is the exact FAISS index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from indexer.core.errors import IndexDamagedError, ShrinkRefusedError
from indexer.stores.base import VectorStore
from indexer.stores.manifest import same_embedding
from indexer.stores.recall import recall_at_k


@dataclass
class VerifyReport:
    """Result of :func:`verify_stores`. ``ok`` is False on any divergence."""

    count_primary: int
    count_mirror: int
    missing_in_primary: list[int] = field(default_factory=list)
    missing_in_mirror: list[int] = field(default_factory=list)
    sampled: int = 0
    max_vector_diff: float = 0.0
    vector_tolerance: float = 1e-6
    k: int = 10
    recall_at_k: float = 1.0
    min_recall: float = 0.99
    manifest_equal: bool = True
    damage_primary: list[str] = field(default_factory=list)
    damage_mirror: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when neither store is damaged, counts, ids, manifests and sampled vectors agree and recall@k
        reaches ``min_recall`` (a NaN recall, when the mirror finds nothing for any sampled query, fails)."""
        return (
            not self.damage_primary
            and not self.damage_mirror
            and self.count_primary == self.count_mirror
            and not self.missing_in_primary
            and not self.missing_in_mirror
            and self.manifest_equal
            and self.max_vector_diff <= self.vector_tolerance
            and self.recall_at_k >= self.min_recall
        )

    def to_dict(self) -> dict:
        """JSON-ready report (id lists cut to 20 entries)."""
        d = asdict(self)
        for key in ("missing_in_primary", "missing_in_mirror"):
            d[key + "_count"] = len(d[key])
            d[key] = d[key][:20]
        d["ok"] = self.ok
        return d


def verify_stores(
    primary: VectorStore,
    mirror: VectorStore,
    sample: int = 200,
    k: int = 10,
    seed: int = 0,
    vector_tolerance: float = 1e-6,
    min_recall: float = 0.99,
    exact: Any = None,
) -> VerifyReport:
    """Compare ``primary`` against its exact ``mirror``: counts, id sets, manifests, ``sample`` stored
    vectors (max absolute difference) and recall@k of the primary's search against the mirror's exact
    search, using sampled stored vectors as queries.

    ``vector_tolerance`` should be about 1e-3 for a FLOAT16 primary. Both stores also run their full
    self-check (:meth:`VectorStore.check`): shard checksums, the manifest, every Redis hash's vector;
    damaged images are named and left out of the vector sample. ``exact`` (an object with the
    stores' ``search``) replaces the mirror's own search as the reference, for a mirror whose index is
    approximate (:meth:`FaissStore.exact_searcher`).
    """
    damage_p, damage_m = primary.check(full=True), mirror.check(full=True)
    ids_p = primary.ids()
    ids_m = mirror.ids()
    report = VerifyReport(
        count_primary=primary.count(),
        count_mirror=mirror.count(),
        missing_in_primary=sorted(set(ids_m.tolist()) - set(ids_p.tolist())),
        missing_in_mirror=sorted(set(ids_p.tolist()) - set(ids_m.tolist())),
        vector_tolerance=vector_tolerance,
        k=k,
        min_recall=min_recall,
        damage_primary=damage_p,
        damage_mirror=damage_m,
    )
    report.manifest_equal = same_embedding(_manifest_or_empty(primary), _manifest_or_empty(mirror))
    common = np.intersect1d(ids_p, ids_m)
    if not len(common):
        report.recall_at_k = 0.0 if len(ids_p) or len(ids_m) else 1.0
        return report
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(common, size=min(sample, len(common)), replace=False))
    chosen, vp = _sound_vectors(primary, chosen)
    if not len(chosen):
        report.recall_at_k = 0.0
        return report
    vm = mirror.get_vectors(chosen)
    report.sampled = len(chosen)
    report.max_vector_diff = float(np.abs(vp - vm).max())
    approx = [[h.id for h in hits] for hits in primary.search(vm, k)]
    reference = exact if exact is not None else mirror
    exact = [[h.id for h in hits] for hits in reference.search(vm, k)]
    # NaN when the exact mirror finds nothing for any sampled query: a broken mirror, not a perfect one,
    # so the report fails (NaN >= min_recall is False).
    report.recall_at_k = recall_at_k(approx, exact, k)
    return report


def _manifest_or_empty(store: VectorStore) -> dict | None:
    try:
        return store.read_manifest()
    except IndexDamagedError:
        return {}  # named by the store's check() already


def _sound_vectors(store: VectorStore, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of the ids whose stored vector is sound (damaged ones left out)."""
    try:
        return ids, store.get_vectors(ids)
    except IndexDamagedError as e:
        sound = np.setdiff1d(ids, np.array(e.ids, dtype=np.int64))
        return sound, store.get_vectors(sound)


@dataclass
class SyncReport:
    """What :func:`sync_mirror` did."""

    copied: int = 0
    deleted: int = 0
    damaged_in_source: list[int] = field(default_factory=list)
    compacted: bool = False


def sync_mirror(
    source: VectorStore,
    target: VectorStore,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
    allow_shrink: bool = False,
) -> SyncReport:
    """Make ``target`` hold what ``source`` holds (ids, vectors, records, manifest, normalisation).

    A source hash that is damaged (no vector, or a corrupt one) is not copied; the target keeps its
    own copy of that image, and the report names it.

    Parameters
    ----------
    allow_shrink
        Delete ids the target holds and the source lacks. Without it such ids are a refusal: a source
        that lost data (hashes deleted by hand, an eviction policy, a flushed database) must not spread
        the loss into the mirror.

    Raises
    ------
    ShrinkRefusedError
        The target would lose ids, and ``allow_shrink`` is False (nothing was changed).
    """
    src_ids = source.ids()
    stale = sorted(set(target.ids().tolist()) - set(src_ids.tolist()))
    if stale and not allow_shrink:
        raise ShrinkRefusedError(
            f"{_where(source)} lacks {len(stale)} of the {target.count()} images the mirror at {_where(target)} "
            f"holds (ids {stale[:10]}{' ...' if len(stale) > 10 else ''}); syncing would delete them from the "
            "mirror too. Nothing was changed. If they were lost from the source, put them back from this mirror "
            f"with `mae-index repair --index {_where(target)} --redis-url URL`; if they were deleted on purpose, "
            "sync again with --allow-shrink"
        )
    report = SyncReport()
    manifest = source.read_manifest()
    if manifest is not None:
        transform = source.read_transform()  # the vectors copied were made by it: it travels with them
        if transform is not None:
            target.write_transform(transform)
        target.write_manifest(manifest)
    if stale:
        report.deleted = target.delete(stale)
    for start in range(0, len(src_ids), batch):
        chunk = src_ids[start : start + batch]
        records = source.get(chunk)
        keep = np.array([i for i, r in zip(chunk, records) if r is not None], dtype=np.int64)
        by_id = {r.id: r for r in records if r is not None}
        if len(keep):
            keep, vectors = _sound_vectors(source, keep)
            report.damaged_in_source += sorted(set(by_id) - set(keep.tolist()))
            target.add(vectors, [by_id[int(i)] for i in keep])
            report.copied += len(keep)
        target.flush()
        if progress:
            progress(report.copied)
    target.flush()
    return report


def _where(store: VectorStore) -> str:
    return str(getattr(store, "location", type(store).__name__))


def sync_and_compact(
    source: VectorStore,
    target,
    progress: Callable[[int], None] | None = None,
    allow_shrink: bool = False,
) -> SyncReport:
    """:func:`sync_mirror`, then compact the target's shards only once it is verified against the source.

    Until then the old shards stay (every change is in new shards on top of them), so a sync that went
    wrong can still be undone by removing the new shards.

    Raises
    ------
    IndexDamagedError
        The synced mirror does not match the source (the old shards are kept).
    """
    report = sync_mirror(source, target, progress=progress, allow_shrink=allow_shrink)
    problems = []
    want = np.setdiff1d(source.ids(), np.array(report.damaged_in_source, dtype=np.int64))
    have = target.ids()
    lost = np.setdiff1d(want, have)
    if len(lost):
        problems.append(f"{len(lost)} images of the source are not in the mirror (ids {lost[:10].tolist()})")
    if not allow_shrink and len(np.setdiff1d(have, source.ids())):
        problems.append("the mirror holds images the source lacks")
    sample = want[:: max(1, len(want) // 200)][:200]
    if len(sample):
        diff = float(np.abs(_sound_vectors(source, sample)[1] - target.get_vectors(sample)).max())
        if diff > 1e-3:
            problems.append(f"sampled vectors differ by up to {diff:.3g}")
    if problems:
        raise IndexDamagedError(
            f"the synced mirror at {_where(target)} does not match {_where(source)}: "
            + "; ".join(problems)
            + ". Its old shards were kept (not compacted)"
        )
    target.compact()
    report.compacted = True
    return report
