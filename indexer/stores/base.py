"""The VectorStore protocol and the rules every store follows (the records it holds live in
:mod:`indexer.core.records`).

Both stores (FAISS and Redis) implement all of :class:`VectorStore`; the retriever, eval and the CLIs
see only this protocol. Vectors are float32, L2-normalised, so inner product = cosine similarity, and
every store reports ``score`` as cosine similarity (1.0 = identical) whatever it uses inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexer.core.errors import ConfigError
from indexer.core.records import Hit, ImageRecord, MetadataFilter

# --- store rules, named once: every store follows them, so both answer alike ------------------------

#: Extra nearest-neighbour candidates a store fetches beyond ``k``, so that ties at the k-th score are
#: broken by id the same way in every store (:func:`rank_hits`).
SPARE_CANDIDATES = 8
#: Slack on ``max_distance``: Redis computes distances in float32 and prints 12 significant digits, and
#: FAISS's float32 inner products round alike; a hit at exactly the bound must pass in both.
DISTANCE_SLACK = 1e-6
#: Largest difference expected between the same vector read back from two stores, by stored type.
VECTOR_TOLERANCE = {"FLOAT32": 1e-6, "FLOAT16": 1e-3}


@runtime_checkable
class VectorStore(Protocol):
    """What every vector store offers. Ids are non-negative int64, stable across runs (derived from
    image content), so re-adding an id replaces it (upsert). A store is a context manager: leaving
    the ``with`` block closes it."""

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a folder, or a Redis index and server; never a password)."""
        ...

    @property
    def vector_tolerance(self) -> float:
        """Largest difference between a vector written and the same vector read back (its stored type)."""
        ...

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert ``vectors`` (n, dim float32, L2-normalised) with their ``records`` (ids inside)."""
        ...

    def bulk_load(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Add records whose ids the store does not hold: a store may take a faster path than :meth:`add`
        (Redis: pipelined ``HSET`` without MULTI/DEL; FAISS: :meth:`add`). Durable, like every write, at
        the next :meth:`flush`; reads see it at once. An id the store may hold must go through :meth:`add`:
        a field that became ``None`` could survive here."""
        ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        max_distance: float | None = None,
    ) -> list[list[Hit]]:
        """Return, for each query row, up to ``k`` hits by descending cosine similarity (ties by id).

        ``max_distance`` keeps only hits with cosine distance ``1 - score <= max_distance`` (range query).
        """
        ...

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Return the records of ``ids`` (``None`` for an id not in the store)."""
        ...

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Return the stored vectors of ``ids`` as (n, dim) float32; raises KeyError for a missing id."""
        ...

    def ids(self) -> np.ndarray:
        """Return every id in the store, sorted, as int64."""
        ...

    def count(self) -> int:
        """Return the number of vectors stored."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ``ids``; return how many were present."""
        ...

    def field_values(self, name: str) -> list:
        """Return the distinct values of metadata field ``name`` the store holds, sorted (None left out)."""
        ...

    def read_manifest(self) -> dict[str, Any] | None:
        """Return the stored index manifest, or ``None`` for a new, empty store."""
        ...

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Store the index manifest (what the index was built with)."""
        ...

    def read_transform(self) -> bytes | None:
        """Return the fitted embedding normalisation (``.npz`` bytes), or ``None`` when there is none."""
        ...

    def write_transform(self, data: bytes) -> None:
        """Store the fitted embedding normalisation (``.npz`` bytes) beside the manifest."""
        ...

    def flush(self) -> None:
        """Make every write so far durable (FAISS: atomic file write; Redis: send bulk-loaded hashes still
        held back for a full pipeline)."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...

    def check(self, full: bool = False) -> list[str]:
        """Return what is damaged in the store, one line each (empty: sound).

        The cheap check runs on open; ``full`` also reads everything (checksums, every vector).
        """
        ...

    def __enter__(self) -> VectorStore:
        """Return the store itself."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Close the store."""
        ...


def check_queries(queries: np.ndarray, k: int, dim: int | None) -> np.ndarray:
    """Validate a search's ``k`` and query rows the same way in every store; return them (n, dim) float32.

    ``dim`` None (an empty store) checks only ``k``.

    Raises
    ------
    ConfigError
        ``k < 1``, or queries of another dimension.
    ValueError
        A query row is zero or not finite: it has no cosine similarity (Redis would rank NaN distances
        in an arbitrary order).
    """
    queries = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if dim is None:
        return queries
    if queries.shape[1] != dim:
        raise ConfigError(f"query vectors are {queries.shape[1]}-d, the index is {dim}-d")
    norms = np.linalg.norm(queries, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"query rows {bad[:10].tolist()} are zero or not finite: no cosine similarity")
    return queries


def check_batch(vectors: np.ndarray, records: Sequence[ImageRecord]) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, dim) array with one record per row (every store's
    ``add``/``bulk_load`` takes a batch this way).

    Raises
    ------
    ValueError
        Not two-dimensional, or not one row per record.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(records):
        raise ValueError("vectors must be (n, dim) with one record per row")
    return vectors


def check_storable(records: Sequence[ImageRecord]) -> None:
    """Refuse records whose text cannot be stored as UTF-8 (Redis tags, parquet strings, JSON, CSV).

    Paths of files whose names are not UTF-8 are escaped by :func:`indexer.images.sources.display_path`
    before they get here; this check keeps any other caller from half-writing a batch.

    Raises
    ------
    ValueError
        Naming the record and the field.
    """
    for r in records:
        texts = [(name, getattr(r, name)) for name in ("path", "plate", "well", "row", "channel")]
        for name, value in texts + [("tag", t) for t in r.tag_strings]:
            if value is None:
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"record {r.id}: {name} {value!r} is not valid UTF-8 (escape it with "
                    "indexer.images.sources.display_path)"
                ) from e


def rank_hits(ids: np.ndarray, scores: np.ndarray, records: dict[int, ImageRecord], k: int) -> list[Hit]:
    """Sort candidate ``(id, score)`` pairs by descending score, ties by ascending id, keep ``k``.

    Stores share this so that FAISS and Redis order equal scores the same way.
    """
    order = np.lexsort((ids, -scores))[:k]
    return [Hit(rank=r + 1, score=float(scores[i]), record=records[int(ids[i])]) for r, i in enumerate(order)]
