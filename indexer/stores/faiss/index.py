"""A FAISS search index over ``(id, vector)`` rows: its kind, building and changing it, its GPU copy,
the PQ re-rank file, searching and tuning.

:class:`SearchIndex` knows no folder. Its rows come from a :class:`VectorSource`: an index folder's
shards (:class:`~indexer.stores.faiss.folder.ShardFolder`) or arrays in memory (:class:`ArrayVectors`,
:meth:`SearchIndex.from_vectors`), and its snapshot is written where it is told. Whatever changes the
index (:meth:`~SearchIndex.add`, :meth:`~SearchIndex.remove`, a rebuild) also drops the GPU copy and
the re-rank file made for the old one, in one place. The kinds and the tuning themselves are pure, in
:mod:`indexer.stores.faiss.kinds` and :mod:`indexer.stores.faiss.rerank`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.core.atomic import atomic_write
from indexer.core.safe_files import require_regular
from indexer.stores.faiss.exact import even_sample
from indexer.stores.faiss.gpu import clone_to_gpus, faiss_gpu_count, gpu_search_index
from indexer.stores.faiss.kinds import (
    IndexKind,
    load_faiss,
    new_index,
    parse_kind,
    search_parameters,
    tune_search,
)
from indexer.stores.faiss.rerank import candidates, rerank, reranks, tune_rerank
from indexer.stores.faiss.rerank_file import RerankFile, RerankKeeper

log = logging.getLogger("indexer.stores.faiss.store")

#: The GPU copy before one was tried (``None``: tried, CPU only).
UNTRIED = object()


class VectorSource(Protocol):
    """The rows an index is built from (a folder's shards, or :class:`ArrayVectors`)."""

    dim: int | None

    def ids(self) -> np.ndarray:
        """Every id, sorted int64."""

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The float32 vectors of ``ids``."""

    def live_parts(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Every row as ``(ids, vectors)`` parts, one at a time."""

    def shard_names(self) -> list[str]:
        """The shards the rows come from, in order (the re-rank file names the last)."""


class ArrayVectors:
    """Rows held in memory, as a :class:`VectorSource`."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        self._ids = np.asarray(ids, dtype=np.int64)[order]
        self._vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])
        self.dim: int | None = self._vectors.shape[1]

    def ids(self) -> np.ndarray:
        """Every id, sorted."""
        return self._ids

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The vectors of ``ids``."""
        return self._vectors[np.searchsorted(self._ids, np.asarray(ids, dtype=np.int64))]

    def live_parts(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """All rows as one part."""
        yield self._ids, self._vectors

    def shard_names(self) -> list[str]:
        """None: the rows are in memory."""
        return []


class SearchIndex:
    """The FAISS index of one :class:`VectorSource`'s rows (or none yet: :attr:`held`).

    Parameters
    ----------
    kind
        The index kind (:func:`~indexer.stores.faiss.kinds.parse_kind`).
    source
        Where the rows come from when the index is built, trained or re-ranked.
    rerank
        The re-rank file keeper of PQ kinds (a folder's ``index.rerank``); default: temporary files.
    gpu
        Run unfiltered searches of the Flat kind on a GPU copy where one works
        (:mod:`indexer.stores.faiss.gpu`).
    """

    def __init__(
        self, kind: IndexKind, source: VectorSource, rerank: RerankKeeper | None = None, gpu: bool = True
    ) -> None:
        self.kind = kind
        self.gpu = gpu
        self.trained_on = 0  # vectors the last build trained on
        self._source = source
        self._rerank = rerank if rerank is not None else RerankKeeper(None, writable=False)
        self._index: Any = None
        self._gpu_index: Any = UNTRIED
        self._changed = False  # differs from the snapshot it was loaded from (or there was none)

    @classmethod
    def from_vectors(
        cls, kind: IndexKind | str, ids: np.ndarray, vectors: np.ndarray, gpu: bool = True
    ) -> SearchIndex:
        """An index of ``kind`` built over ``(ids, vectors)`` (trained on them where the kind learns)."""
        kind = parse_kind(kind) if isinstance(kind, str) else kind
        index = cls(kind, ArrayVectors(ids, vectors), gpu=gpu)
        index.build()
        return index

    # ---------------------------------------------------------------- state
    @property
    def held(self) -> bool:
        """Whether an index is in memory (else it is built from the source when needed)."""
        return self._index is not None

    @property
    def ntotal(self) -> int:
        """Vectors in the index (0 when none is held)."""
        return int(self._index.ntotal) if self._index is not None else 0

    @property
    def changed(self) -> bool:
        """Whether the index differs from the snapshot it was loaded from (there is one to write)."""
        return self._changed

    @property
    def faiss_index(self) -> Any:
        """The CPU FAISS index itself, or ``None``: to inspect, never to change."""
        return self._index

    def _touch(self) -> None:
        # The one "index changed" update: the GPU copy and the re-rank file were made for the old one.
        self._gpu_index = UNTRIED
        self._changed = True
        self._rerank.invalidate()

    def mark_stale(self) -> None:
        """The snapshot on disk does not match what this index should be: write it anew."""
        self._touch()

    def mark_saved(self) -> None:
        """The snapshot on disk is this index now."""
        self._changed = False

    # ---------------------------------------------------------------- changes
    def start(self) -> None:
        """Hold an empty index (a writer keeping a Flat index up to date from its first row)."""
        self._index = new_index(self.kind, self._source.dim)

    def build(self) -> None:
        """Build the index over every row of the source: trained on an even sample, then filled one part
        at a time (memory: the index, the training sample and one part)."""
        index = new_index(self.kind, self._source.dim)
        self.trained_on = 0
        if self.kind.trained:
            ids = self._source.ids()
            sample = self._source.vectors(even_sample(ids, self.kind.train_size(len(ids))))
            index.train(sample)
            self.trained_on = len(sample)
        for ids, vectors in self._source.live_parts():
            index.add_with_ids(vectors, ids)
        self._index = index
        self._touch()

    def fill(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the index by one holding exactly ``(ids, vectors)`` (kinds that need no training)."""
        self._index = new_index(self.kind, self._source.dim)
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )
        self._touch()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add rows (their ids not in the index) to the index held, if any."""
        if self._index is not None:
            self._index.add_with_ids(vectors, ids)
        self._touch()

    def remove(self, ids: np.ndarray) -> None:
        """Remove ``ids``; a graph that cannot remove is dropped (rebuilt when needed)."""
        if self._index is None or not len(ids):
            return
        faiss = load_faiss()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self.kind.removes:
            self._index = None
        elif self.kind.trained:  # the IVF hash-table direct map removes only through an id array
            self._index.remove_ids(faiss.IDSelectorArray(ids))
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
        self._touch()

    def drop(self) -> None:
        """Let the index go (it is rebuilt from the source when needed)."""
        self._index = None
        self._touch()

    def set_kind(self, kind: IndexKind) -> None:
        """Change the kind: the index held, of the old kind, is dropped."""
        if kind != self.kind:
            self.kind = kind
            if self._index is not None:
                self.drop()

    # ---------------------------------------------------------------- snapshot
    def load(self, path: Path) -> bool:
        """Take the snapshot at ``path``; False (nothing taken) when it is missing, unreadable (it is
        rebuilt from the source) or of another dimension."""
        if not Path(path).exists():
            return False
        try:
            require_regular(Path(path))  # a FIFO here would hang every query
            index = load_faiss().read_index(str(path))
        except (OSError, ValueError, RuntimeError):
            return False
        if index.d != self._source.dim:
            return False
        self._index = index
        return True

    def catch_up(self, removed: np.ndarray, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Bring a loaded snapshot up to date with rows written after it: ``removed`` ids go, ``parts``
        of ``(ids, vectors)`` come in."""
        self.remove(removed)
        if self._index is not None:
            for ids, vectors in parts:
                self._index.add_with_ids(vectors, ids)
        self._touch()

    def adopt_rerank(self, entry: dict[str, Any], count: int, last_shard: str) -> bool:
        """Use the folder's re-rank file if it matches the snapshot (``entry``: the state file's record
        of it); return whether it did."""
        return self._rerank.adopt(entry, count, self._source.dim, last_shard)

    def write_snapshot(self, path: Path) -> tuple[str, dict[str, Any]]:
        """Write the index to ``path`` atomically (and a PQ kind's re-rank file beside it; other kinds'
        is removed); return the kind and what a state file records of the re-rank file."""
        faiss = load_faiss()
        atomic_write(path, lambda p: faiss.write_index(self._index, str(p)))
        if not reranks(self.kind):
            self._rerank.drop()
            return self.kind.factory, {}
        self.rerank_file()
        return self.kind.factory, self._rerank.state_entry()

    # ---------------------------------------------------------------- reads
    def reconstruct(self, ids: Sequence[int]) -> np.ndarray:
        """The vectors of ``ids`` as the index holds them (exact for Flat)."""
        # One call: a Python loop of reconstruct() took 36x as long (26k ids of a 52k Flat index).
        return self._index.reconstruct_batch(np.asarray(ids, dtype=np.int64).reshape(-1))

    def needs_rerank_file(self, settings: Mapping[str, Any]) -> bool:
        """Whether a search at ``settings`` would build the re-rank file from the source first."""
        return bool(reranks(self.kind) and settings.get("rerank")) and self._rerank.current is None

    def rerank_file(self) -> RerankFile:
        """The re-rank file matching the index, rebuilt from the source (one part at a time) when it does not."""
        current = self._rerank.current
        if current is not None:
            return current
        names = self._source.shard_names()
        last = names[-1] if names else ""
        return self._rerank.build(self._source.ids(), self._source.dim, self._source.live_parts(), last)

    def rerank_problems(self, entry: dict[str, Any]) -> list[str]:
        """The folder's re-rank file against the state file's record of it (reads the whole file)."""
        return self._rerank.problems(entry)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        n_total: int,
        settings: Mapping[str, Any],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products of unit ``queries``: ``(scores, ids)``, ids -1 where fewer.

        ``allowed`` (ids, non-empty) filters inside the search, with nprobe/efSearch widened by the
        inverse of the fraction of the ``n_total`` rows it keeps; ``settings`` give nprobe, efSearch
        and a PQ kind's re-rank factor (candidates re-scored with the float vectors on disk).
        """
        faiss = load_faiss()
        selector = None if allowed is None else faiss.IDSelectorBatch(allowed)
        n_allowed = n_total if allowed is None else len(allowed)
        params = search_parameters(
            self.kind, settings.get("nprobe"), settings.get("efSearch"), selector, widen=n_total / n_allowed
        )
        kk = min(n_allowed, k)
        factor = settings.get("rerank") if reranks(self.kind) else None
        index = self._index if params is not None else self.unfiltered_index()
        scores, ids = index.search(queries, candidates(kk, factor, n_allowed), params=params)
        if factor:
            # The codes chose the candidates; their float vectors (on disk) decide the order.
            rescored = self.rerank_file().scores(queries, ids)
            scores, ids = rerank(queries, ids, rescored, kk)
        return scores, ids

    def unfiltered_index(self, clone: Callable[[Any, Any], Any] | None = None) -> Any:
        """The index an unfiltered search runs on: a GPU copy where one was asked for, is possible and
        passes a probe search (tried once per change), else the CPU index. ``clone`` replaces the copy
        to the GPUs (tests have no GPU)."""
        # GPU indexes take no IDSelector, so filtered searches always stay on the CPU index.
        if not self.gpu or not self.kind.exact:
            return self._index
        if self._gpu_index is UNTRIED:
            self._gpu_index = None
            if clone is not None or faiss_gpu_count(load_faiss()) > 0:
                probe = np.stack([self._index.reconstruct(i) for i in self._source.ids()[:4].tolist()])
                self._gpu_index = gpu_search_index(load_faiss(), self._index, probe, clone or clone_to_gpus)
        return self._gpu_index if self._gpu_index is not None else self._index

    def tune(
        self, queries: np.ndarray, exact_ids: np.ndarray, query_ids: np.ndarray, n: int
    ) -> dict[str, Any]:
        """Search settings reaching the recall target on ``queries`` (stored vectors ``query_ids``, whose
        exact neighbours are ``exact_ids``): nprobe/efSearch, or a PQ kind's nprobe and re-rank factor."""
        if reranks(self.kind):
            scores = self.rerank_file().scores
            return tune_rerank(
                self._index, self.kind, queries, exact_ids, scores, n, k=10, query_ids=query_ids
            )
        return tune_search(self._index, self.kind, queries, exact_ids, k=10, query_ids=query_ids)

    def close(self) -> None:
        """Remove a reader's temporary re-rank file."""
        self._rerank.close()


def read_snapshot_vectors(path: Path, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` held by the snapshot at ``path``, whatever the shards say (``repair``).

    Empty arrays when it is missing or unreadable, or of a kind that keeps no exact vectors with their
    ids (IVF, PQ).
    """
    empty = (np.zeros(0, dtype=np.int64), np.zeros((0, dim or 0), dtype=np.float32))
    if not Path(path).exists():
        return empty
    try:
        faiss = load_faiss()
        require_regular(Path(path))
        index = faiss.read_index(str(path))
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vectors = np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else empty[1]
    except (RuntimeError, AttributeError, ValueError, OSError) as e:
        log.warning("%s cannot be read (%s)", path, e)
        return empty
    return ids, vectors.astype(np.float32)
