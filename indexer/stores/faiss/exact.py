"""Exact search over a FAISS folder's float vectors: the ground truth approximate kinds are measured by.

Pure functions (the running exact top-k over ``(ids, vectors)`` parts, a deterministic sample of ids,
turning result rows into hits, recall of one store against its exact search) and
:class:`ExactSearch`, a store searched exactly whatever its index kind, with the store's ``search``
signature (what ``verify`` and ``mae-eval`` measure against). No FAISS and no folder here: the parts
come from the caller (:meth:`~indexer.stores.faiss.folder.ShardFolder.live_parts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from indexer.core.records import Hit, ImageRecord, MetadataFilter
from indexer.stores.base import DISTANCE_SLACK, check_queries, rank_hits
from indexer.stores.faiss.kinds import recall_at

#: Stored vectors used as queries when tuning nprobe/efSearch and in ``verify``'s recall check.
TUNE_QUERIES = 200


class ExactSearchable(Protocol):
    """What :class:`ExactSearch` and :func:`measure_recall` need of a store (:class:`FaissStore` has it)."""

    dim: int | None

    def count(self) -> int: ...  # noqa: D102

    def ids(self) -> np.ndarray: ...  # noqa: D102

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray: ...  # noqa: D102

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...  # noqa: D102

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]: ...  # noqa: D102

    @property
    def record_table(self) -> Mapping[int, ImageRecord]: ...  # noqa: D102


def even_sample(ids: np.ndarray, n: int) -> np.ndarray:
    """``n`` of the sorted ``ids`` spread evenly over them (deterministic; all of them when fewer)."""
    if n >= len(ids):
        return ids
    return ids[np.linspace(0, len(ids) - 1, n).round().astype(np.int64)]


def exact_top_k(
    queries: np.ndarray, k: int, parts: Iterable[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` over ``parts`` of ``(ids, vectors)``, taken one at a
    time: ``(scores, ids)``, each (n_queries, k), ids -1 where fewer are given. Ties by ascending id."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in parts:
        scores = queries @ vectors.T
        all_s = np.concatenate([best_s, scores], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
        # Descending score, ties by ascending id, as every store ranks.
        order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return best_s, best_i


def hits_per_query(
    scores: np.ndarray,
    ids: np.ndarray,
    records: Mapping[int, ImageRecord],
    k: int,
    max_distance: float | None,
) -> list[list[Hit]]:
    """The ranked hits of each query's result row: padding (-1) and candidates beyond ``max_distance``
    (cosine distance) dropped, at most ``k`` each."""
    out = []
    for row_scores, row_ids in zip(scores, ids):
        keep = row_ids >= 0
        if max_distance is not None:
            keep &= (1.0 - row_scores) <= max_distance + DISTANCE_SLACK
        out.append(rank_hits(row_ids[keep], row_scores[keep], records, k))
    return out


def measure_recall(store: ExactSearchable, k: int, queries: int) -> float:
    """Recall@``k`` of ``store``'s search against its exact search, with ``queries`` stored vectors
    (spread evenly over the ids) as queries. Each query's own id is left out of both lists (any index
    finds a stored vector itself)."""
    if not store.count():
        return 1.0
    q_ids = even_sample(store.ids(), queries)
    q = store.get_vectors(q_ids)
    _, exact = store.exact_search(q, k + 1)
    approx = [[h.id for h in hits] for hits in store.search(q, k + 1)]
    width = max(len(a) for a in approx)
    padded = np.array([a + [-1] * (width - len(a)) for a in approx], dtype=np.int64)
    return recall_at(padded, exact, k, exclude=q_ids)


class ExactSearch:
    """Exact search over a store's float vectors, with the store's ``search`` signature (no filter)."""

    def __init__(self, store: ExactSearchable) -> None:
        self.store = store

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """Exact top-``k`` per query by cosine similarity (ties by id)."""
        if where is not None and not where.is_empty:
            raise ValueError("exact search over the shards takes no filter")
        store = self.store
        queries = check_queries(queries, k, store.dim if store.count() else None)
        if not store.count():
            return [[] for _ in queries]
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        scores, ids = store.exact_search(queries, k)
        return hits_per_query(scores, ids, store.record_table, k, max_distance)
