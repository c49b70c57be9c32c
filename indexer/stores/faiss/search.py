"""Searching a FAISS folder: filtered and unfiltered search, exact search over the shards, recall.

The pure parts (the running exact top-k, turning result rows into
hits) are functions; :class:`SearchMixin` holds :class:`~indexer.stores.faiss.store.FaissStore`'s
search methods, which need its records, index and shards; :class:`ExactSearch` is the store searched
exactly whatever its kind (the reference ``verify`` and ``mae-eval`` measure against). A filtered
search runs on the CPU index with an ``IDSelector``; an unfiltered one may use a GPU copy
(:mod:`indexer.stores.faiss.gpu`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.core.errors import StoreUnavailableError
from indexer.core.records import Hit, ImageRecord, MetadataFilter
from indexer.stores.base import DISTANCE_SLACK, SPARE_CANDIDATES, check_queries, rank_hits
from indexer.stores.faiss.kinds import recall_at, search_parameters
from indexer.stores.faiss.rerank import candidates, rerank, reranks
from indexer.stores.faiss.shards import SHARDS, read_vectors

if TYPE_CHECKING:
    from indexer.stores.faiss.store import FaissStore

#: Stored vectors used as queries when tuning nprobe/efSearch and in ``verify``'s recall check.
TUNE_QUERIES = 200
#: ``_gpu_index`` before a GPU copy was tried (``None``: tried, CPU only).
UNTRIED = object()


def load_faiss():
    """The ``faiss`` module, or :class:`StoreUnavailableError` saying how to install it."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is a core dependency
        raise StoreUnavailableError("FAISS is not installed: pip install faiss-cpu") from e
    return faiss


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


class SearchMixin:
    """:class:`~indexer.stores.faiss.store.FaissStore`'s search methods (a mixin of that class only: they
    use its records, ``_index``, ``_kind``, ``_gpu_index`` and search settings)."""

    def matching_ids(self, where: MetadataFilter) -> np.ndarray:
        """Ids of records matching ``where`` (:meth:`MetadataFilter.matches`, over the record columns)."""
        return self._records.matching_ids(where)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` by cosine similarity per query, with optional filter and distance bound.

        Exact with the Flat kind. Other kinds search with the manifest's nprobe/efSearch (or this
        store's overrides); a filter is an ``IDSelector`` inside the search, with nprobe/efSearch widened
        by the inverse of the fraction of images it keeps, so that about as many allowed candidates are
        scanned as without it. PQ scores are the codes' approximate inner products.
        """
        empty = not self._records
        queries = check_queries(queries, k, None if empty else self.dim)
        if empty:
            return [[] for _ in queries]
        self._ensure_search_index()
        faiss = load_faiss()
        # Scores are cosine similarity whatever the caller passes (stored vectors are unit already).
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        selector = None
        n_allowed = len(self._records)
        if where is not None and not where.is_empty:
            allowed = self.matching_ids(where)
            n_allowed = len(allowed)
            if not n_allowed:
                return [[] for _ in queries]
            selector = faiss.IDSelectorBatch(allowed)
        settings = self.search_settings
        params = search_parameters(
            self._kind,
            settings.get("nprobe"),
            settings.get("efSearch"),
            selector,
            widen=len(self._records) / n_allowed,
        )
        kk = min(n_allowed, k + SPARE_CANDIDATES)
        factor = settings.get("rerank") if reranks(self._kind) else None
        index = self._index if params is not None else self._unfiltered_search_index()
        scores, ids = index.search(queries, candidates(kk, factor, n_allowed), params=params)
        if factor:
            # The codes chose the candidates; their float vectors (on disk) decide the order.
            rescored = self._ensure_rerank().scores(queries, ids)
            scores, ids = rerank(queries, ids, rescored, kk)
        return hits_per_query(scores, ids, self._records, k, max_distance)

    def _unfiltered_search_index(self, clone=None) -> Any:
        # GPU indexes take no IDSelector, so filtered searches always stay on the CPU index.
        # ``clone`` replaces the copy to the GPUs (tests have no GPU).
        if not self.gpu or not self._kind.exact:
            return self._index
        if self._gpu_index is UNTRIED:
            from indexer.stores.faiss.gpu import clone_to_gpus, faiss_gpu_count, gpu_search_index

            self._gpu_index = None
            if clone is not None or faiss_gpu_count(load_faiss()) > 0:
                probe = np.stack([self._index.reconstruct(i) for i in self._records.ids()[:4].tolist()])
                self._gpu_index = gpu_search_index(load_faiss(), self._index, probe, clone or clone_to_gpus)
        return self._gpu_index if self._gpu_index is not None else self._index

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` inner products of ``queries`` over every stored float vector, read from the
        shards one at a time: ``(scores, ids)``, each (n_queries, k), ids -1 where fewer are stored.

        This is the ground truth an approximate index is measured against; it needs no index.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._pending_records or self._pending_deletes:
            self.flush()
        parts = (
            (ids, read_vectors(self.directory / SHARDS / name, rows))
            for name, (rows, ids) in self._records.live_by_shard().items()
        )
        return exact_top_k(queries, k, parts)

    def exact_searcher(self) -> ExactSearch:
        """This folder searched exactly over the shards' float vectors, whatever its index kind (the
        reference that ``verify`` and ``mae-eval`` measure approximate search against)."""
        return ExactSearch(self)

    def measure_recall(self, k: int = 10, queries: int = TUNE_QUERIES) -> float:
        """Recall@``k`` of the search index against :meth:`exact_search`, with ``queries`` stored vectors
        (spread evenly over the ids) as queries, at the current search settings. Each query's own id is
        left out of both lists (any index finds a stored vector itself)."""
        if not self._records:
            return 1.0
        q_ids = even_sample(self.ids(), queries)
        q = self.get_vectors(q_ids)
        _, exact = self.exact_search(q, k + 1)
        approx = [[h.id for h in hits] for hits in self.search(q, k + 1)]
        width = max(len(a) for a in approx)
        padded = np.array([a + [-1] * (width - len(a)) for a in approx], dtype=np.int64)
        return recall_at(padded, exact, k, exclude=q_ids)


class ExactSearch:
    """Exact search over a :class:`FaissStore`'s shards, with the store's ``search`` signature (no filter)."""

    def __init__(self, store: FaissStore) -> None:
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
        return hits_per_query(scores, ids, store._records, k, max_distance)
