"""Keep two stores in step: verify that a store and its FAISS mirror agree, and rebuild a mirror.

Works through the :class:`~indexer.stores.base.VectorStore` protocol only, so any pair of stores can be
compared; in practice the primary is Redis and the mirror is the exact FAISS index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

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

    @property
    def ok(self) -> bool:
        """True when counts, ids, manifests and sampled vectors agree and recall@k reaches ``min_recall``
        (a NaN recall, when the mirror finds nothing for any sampled query, fails)."""
        return (
            self.count_primary == self.count_mirror
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
) -> VerifyReport:
    """Compare ``primary`` against its exact ``mirror``: counts, id sets, manifests, ``sample`` stored
    vectors (max absolute difference) and recall@k of the primary's search against the mirror's exact
    search, using sampled stored vectors as queries.

    ``vector_tolerance`` should be about 1e-3 for a FLOAT16 primary.
    """
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
    )
    report.manifest_equal = same_embedding(primary.read_manifest(), mirror.read_manifest())
    common = np.intersect1d(ids_p, ids_m)
    if not len(common):
        report.recall_at_k = 0.0 if len(ids_p) or len(ids_m) else 1.0
        return report
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(common, size=min(sample, len(common)), replace=False))
    vp, vm = primary.get_vectors(chosen), mirror.get_vectors(chosen)
    report.sampled = len(chosen)
    report.max_vector_diff = float(np.abs(vp - vm).max())
    approx = [[h.id for h in hits] for hits in primary.search(vm, k)]
    exact = [[h.id for h in hits] for hits in mirror.search(vm, k)]
    # NaN when the exact mirror finds nothing for any sampled query: a broken mirror, not a perfect one,
    # so the report fails (NaN >= min_recall is False).
    report.recall_at_k = recall_at_k(approx, exact, k)
    return report


def sync_mirror(
    source: VectorStore, target: VectorStore, batch: int = 1000, progress: Callable[[int], None] | None = None
) -> int:
    """Make ``target`` hold exactly what ``source`` holds (ids, vectors, records, manifest, normalisation).

    Ids in the target but not in the source are deleted. Returns the number of vectors copied.
    """
    manifest = source.read_manifest()
    if manifest is not None:
        transform = source.read_transform()  # the vectors copied were made by it: it travels with them
        if transform is not None:
            target.write_transform(transform)
        target.write_manifest(manifest)
    src_ids = source.ids()
    stale = sorted(set(target.ids().tolist()) - set(src_ids.tolist()))
    if stale:
        target.delete(stale)
    copied = 0
    for start in range(0, len(src_ids), batch):
        chunk = src_ids[start : start + batch]
        records = source.get(chunk)
        keep = [i for i, r in enumerate(records) if r is not None]
        if keep:
            target.add(source.get_vectors(chunk[keep]), [records[i] for i in keep])
            copied += len(keep)
        target.flush()
        if progress:
            progress(copied)
    target.flush()
    return copied
