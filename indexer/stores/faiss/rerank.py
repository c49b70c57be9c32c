"""Re-ranking PQ candidates with the exact vectors: choosing the factor, merging, tuning (pure logic).

A PQ code keeps a few bytes of a 768-d vector: its approximate inner products order the true
neighbours only roughly (recall@10 about 0.5 on clustered 768-d vectors at 64 bytes, whatever
nprobe). Re-ranking fixes the order: the index returns ``k x R`` candidates by their codes, and the
candidates are re-scored with their float vectors, which live on disk beside ``index.faiss``
(:mod:`indexer.stores.faiss.rerank_file`), not in memory. The memory budget pays for the codes; each query
reads ``k x R`` rows from disk.

:func:`tune_rerank` picks the cheapest ``(nprobe, R)`` that reaches a recall target, by a cost model
(:func:`search_cost`) of the bytes one query touches. No I/O here: the vectors come through a callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from indexer.stores.faiss.kinds import (
    RERANK_ITEM_BYTES,
    IndexKind,
    recall_at,
    search_ladder,
    search_parameters,
)

#: Re-rank factors :func:`tune_rerank` tries (0: the codes' own order, no vectors read).
RERANK_LADDER = (0, 2, 4, 8, 16, 32, 64)
#: A re-ranked candidate costs this many times its bytes, against a PQ code scanned in a list: it is
#: a random row read (a page-cache hit at best) and a float dot product, not a table lookup.
RANDOM_READ_WEIGHT = 2.0

#: ``rescore(queries, ids) -> scores``: exact inner products of each query with its candidate ids
#: (``ids`` (nq, c), -1 for none; the scores of -1 are ignored).
Rescore = Callable[[np.ndarray, np.ndarray], np.ndarray]


def reranks(kind: IndexKind) -> bool:
    """True for kinds whose codes are lossy (PQ): they keep a re-rank file and tune a re-rank factor."""
    return kind.pq_m is not None


def candidates(k: int, factor: int | None, available: int) -> int:
    """How many candidates to take from the index for ``k`` results at re-rank ``factor`` (at most
    ``available``, the vectors a search may return)."""
    return int(min(available, k * max(1, factor or 1)))


def rerank(
    queries: np.ndarray, ids: np.ndarray, exact_scores: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Order each query's candidates by their exact scores (descending, ties by ascending id, as every
    store ranks) and keep ``keep``: ``(scores, ids)``, each (nq, keep), id -1 and score -inf where a
    query had fewer candidates."""
    scores = np.where(ids >= 0, exact_scores, -np.inf).astype(np.float32)
    # -1 (no candidate) sorts last whatever its score: give it the largest id as the tie-break.
    tie = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    order = np.lexsort((tie, -scores), axis=1)[:, :keep]
    out_s = np.take_along_axis(scores, order, axis=1)
    out_i = np.take_along_axis(ids, order, axis=1)
    if out_s.shape[1] < keep:
        pad = keep - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_s, np.where(np.isfinite(out_s), out_i, -1)


def search_cost(kind: IndexKind, n: int, dim: int, nprobe: int, factor: int, k: int = 10) -> float:
    """Bytes one query touches, as a cost to compare settings by: the PQ codes in ``nprobe`` of the
    ``nlist`` lists, plus ``k x factor`` re-ranked rows (weighted as random reads)."""
    code = (kind.pq_m or 0) * kind.pq_bits / 8
    scanned = nprobe * n / max(1, kind.nlist or 1) * code
    reread = k * factor * dim * RERANK_ITEM_BYTES * RANDOM_READ_WEIGHT if factor else 0.0
    return float(scanned + reread)


def tune_rerank(
    index: Any,
    kind: IndexKind,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    rescore: Rescore,
    n: int,
    k: int = 10,
    target: float = 0.95,
    query_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """The cheapest ``(nprobe, rerank)`` reaching ``target`` recall@k against ``exact_ids``, by
    :func:`search_cost`.

    One search per nprobe takes ``k x max(RERANK_LADDER)`` candidates; each factor R re-ranks their
    first ``k x R`` (the codes' top ``k x R``, what a search at R returns). nprobe grows until even no
    re-ranking at it would cost more than the best setting found. With ``query_ids`` (stored vectors as
    queries) each query's own id is left out, as in :func:`~indexer.stores.faiss.kinds.tune_search`.

    Returns ``{"nprobe": p, "rerank": R, "recall_at_k": measured}``; the most accurate setting tried
    when none reaches the target (the measured recall says how far it is).
    """
    kq = k + (query_ids is not None)
    top = max(RERANK_LADDER)
    dim = queries.shape[1]
    best: dict[str, Any] | None = None
    best_cost = np.inf
    closest: tuple[float, float, dict[str, Any]] | None = None
    for _, nprobe in search_ladder(kind):
        if search_cost(kind, n, dim, nprobe, 0, k) >= best_cost:
            break
        params = search_parameters(kind, nprobe, None)
        _, cand = index.search(queries, candidates(kq, top, n), params=params)
        exact_all = rescore(queries, cand)
        for factor in RERANK_LADDER:
            width = candidates(kq, factor, n)
            if factor:
                _, ids = rerank(queries, cand[:, :width], exact_all[:, :width], kq)
            else:
                ids = cand[:, :kq]
            r = round(recall_at(ids, exact_ids, k, exclude=query_ids), 4)
            cost = search_cost(kind, n, dim, nprobe, factor, k)
            setting = {"nprobe": int(nprobe), "rerank": int(factor), f"recall_at_{k}": r}
            if r >= target and cost < best_cost:
                best, best_cost = setting, cost
            if closest is None or (r, -cost) > closest[:2]:
                closest = (r, -cost, setting)
    if best is not None:
        return best
    return closest[2] if closest is not None else {}
