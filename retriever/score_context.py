"""What a score means for this index: where a hit's cosine similarity sits among the index's own
nearest-neighbour scores.

A score of 0.99 says little alone: in an index of z stacks every image has a neighbour at 0.99+. The
reference is the top-1 neighbour score (itself left out) of a seeded sample of indexed images; a hit's
*percentile* is the share of that sample whose nearest neighbour scores at most as high. 50 is a typical
nearest neighbour in this index, 99 closer than almost any image's nearest, 5 farther than almost all.

Computed once per index state (one search of the sample: ~1,000 queries) and kept beside the index as
``score_context.npz`` with the fingerprint of the ids it was made from, so an index that has changed
recomputes it. An index folder that cannot be written keeps it in memory only.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.core.atomic import atomic_write
from indexer.core.errors import MaeError
from indexer.core.records import MetadataFilter
from indexer.vectors.layout import ids_fingerprint

log = logging.getLogger(__name__)

CONTEXT_FILE = "score_context.npz"
#: Indexed images whose nearest neighbour is found, and the seed that picks them.
SAMPLE = 1000
SEED = 0
_CHUNK = 256


@dataclass(frozen=True)
class ScoreContext:
    """The sorted top-1 neighbour scores of a sample of indexed images, and the index state they are of."""

    scores: np.ndarray
    fingerprint: str

    def percentile(self, scores) -> np.ndarray:
        """Per score, the percent (0..100) of the sample whose nearest neighbour scores at most as high;
        NaN where the sample is empty (an index of one image)."""
        scores = np.asarray(scores, dtype=np.float64)
        if not len(self.scores):
            return np.full(scores.shape, np.nan)
        return 100.0 * np.searchsorted(self.scores, scores, side="right") / len(self.scores)

    def summary(self) -> dict:
        """n and the 5th, 50th and 95th percentile scores, for a reader of the JSON."""
        q = np.percentile(self.scores, [5, 50, 95]).tolist() if len(self.scores) else [None] * 3
        return {"n": len(self.scores), "p5": q[0], "p50": q[1], "p95": q[2]}


def nearest_neighbour_scores(store, ids: np.ndarray) -> np.ndarray:
    """The best score of each of ``ids`` against the other indexed images (itself left out), sorted."""
    out = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        results = store.search(store.get_vectors(chunk), 2, MetadataFilter(), None)
        for qid, hits in zip(chunk.tolist(), results):
            other = [h.score for h in hits if h.id != qid]
            if other:
                out.append(float(other[0]))
    return np.sort(np.asarray(out, dtype=np.float64))


def compute(store, sample: int = SAMPLE, seed: int = SEED) -> ScoreContext:
    """The score context of ``store`` (a :class:`~indexer.stores.base.VectorStore`)."""
    all_ids = np.sort(np.asarray(store.ids(), dtype=np.int64))
    ids = all_ids
    if len(ids) > sample:
        ids = np.sort(np.random.default_rng(seed).choice(all_ids, sample, replace=False))
    return ScoreContext(nearest_neighbour_scores(store, ids), ids_fingerprint(all_ids))


def _load(path: Path, fingerprint: str) -> ScoreContext | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) == fingerprint:
                return ScoreContext(f["scores"].astype(np.float64), fingerprint)
    except (OSError, KeyError, ValueError):
        pass
    return None


def load_or_compute(store, directory: Path | None) -> ScoreContext:
    """The score context kept in ``directory`` if it is of the store's current ids; else computed, and
    kept there where the folder can be written."""
    fingerprint = ids_fingerprint(np.asarray(store.ids(), dtype=np.int64))
    path = Path(directory) / CONTEXT_FILE if directory is not None else None
    if path is not None and path.is_file():
        held = _load(path, fingerprint)
        if held is not None:
            return held
    ctx = compute(store)
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, scores=ctx.scores, fingerprint=ctx.fingerprint)
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
        except OSError as e:  # a read-only index folder: recomputed next time
            log.info("score context not kept in %s: %s", directory, e)
    return ctx


def try_load_or_compute(store, directory: Path | None) -> ScoreContext | None:
    """:func:`load_or_compute`, or ``None`` (logged) where the store cannot give it (a damaged index whose
    vectors cannot all be read): hits are still answered, without percentiles."""
    try:
        return load_or_compute(store, directory)
    except (MaeError, KeyError, OSError) as e:
        log.warning("scores without percentiles: the index's nearest-neighbour scores cannot be read: %s", e)
        return None
