"""The FAISS folder's search index: its kind, building it from the shards, catching a snapshot up.

``index.faiss`` is derived from the shards. :class:`IndexMixin` holds the
:class:`~indexer.stores.faiss.store.FaissStore` methods that keep the in-memory index in step with
them: which kind the folder holds or a writer asks for, taking the snapshot on open (and catching it
up with shards written after it), building a kind from the shards one shard at a time, removing ids,
and :meth:`IndexMixin.finalize`, which chooses ``auto``'s kind and tunes nprobe/efSearch (or the
re-rank factor) before the snapshot is written. The kinds and the tuning themselves are pure, in
:mod:`indexer.stores.faiss.kinds` and :mod:`indexer.stores.faiss.rerank`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from indexer.core.errors import ConfigError, MaeError
from indexer.core.safe_files import require_regular
from indexer.stores.faiss.kinds import (
    DEFAULT_KIND,
    IndexKind,
    choose_auto,
    new_index,
    parse_kind,
    tune_search,
)
from indexer.stores.faiss.rerank import reranks, tune_rerank
from indexer.stores.faiss.rerank_file import RerankFile
from indexer.stores.faiss.search import TUNE_QUERIES, UNTRIED, even_sample, load_faiss
from indexer.stores.faiss.shards import SHARDS, read_ids, read_vectors, shard_paths
from indexer.stores.faiss.state import INDEX, MANIFEST, FolderState

# The store's own logger: these messages are the store's, wherever its methods are written.
log = logging.getLogger("indexer.stores.faiss.store")


class IndexMixin:
    """:class:`~indexer.stores.faiss.store.FaissStore`'s search-index methods (a mixin of that class
    only: they use its records, ``_index``, ``_kind``, ``_faiss_section`` and re-rank
    keeper)."""

    @property
    def kind(self) -> IndexKind:
        """The kind of search index this folder holds (or this writer builds when it closes)."""
        return self._kind

    @property
    def search_settings(self) -> dict[str, Any]:
        """The manifest's ``faiss`` section: index kind, nprobe/efSearch and the recall measured when
        they were chosen, with this store's overrides applied."""
        out = dict(self._faiss_section or {"index": self._kind.factory})
        out.update({k: v for k, v in self._overrides.items() if v is not None})
        return out

    def _resolve_kind(self) -> None:
        stored = self._faiss_section.get("index")
        try:
            self._kind = parse_kind(stored or DEFAULT_KIND)
        except ConfigError:
            self.damage.append(f"{MANIFEST} names an unknown FAISS index kind {stored!r}")
            self._kind = parse_kind(DEFAULT_KIND)
        if self._requested_kind not in (None, "auto"):
            self._kind = parse_kind(self._requested_kind)
        # Flat is kept up to date while writing, unless the writer defers it; other kinds (and an
        # ``auto`` build that has not chosen yet) are built from the shards when the writer closes.
        self._incremental = (
            self._kind.exact and not (self._requested_kind == "auto" and not stored) and not self._defer_index
        )

    def _remove(self, ids: np.ndarray) -> None:
        """Remove ``ids`` from the in-memory index; a graph that cannot remove is dropped (rebuilt later)."""
        if self._index is None or not len(ids):
            return
        faiss = load_faiss()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self._kind.removes:
            self._index = None
        elif self._kind.trained:  # the IVF hash-table direct map removes only through an id array
            self._index.remove_ids(faiss.IDSelectorArray(ids))
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _shard_vectors(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 vectors of one shard of this folder (``rows`` of it only, when given)."""
        return read_vectors(self.directory / SHARDS / name, rows)

    def _build_from_shards(self, kind: IndexKind) -> Any:
        """A new index of ``kind`` over every stored vector: trained on an even sample, then filled one
        shard at a time (memory: the index, the training sample and one shard)."""
        index = new_index(kind, self.dim)
        self._trained_on = 0
        if kind.trained:
            sample = self.get_vectors(even_sample(self.ids(), kind.train_size(len(self._records))))
            index.train(sample)
            self._trained_on = len(sample)
        for name, (rows, ids) in self._records.live_by_shard().items():
            index.add_with_ids(self._shard_vectors(name, rows), ids)
        return index

    def _ensure_rerank(self) -> RerankFile:
        """The re-rank file matching the index, rebuilt from the shards (one at a time) when it does not."""
        current = self._rerank.current
        if current is not None:
            return current
        if self._pending_records or self._pending_deletes:
            self.flush()
        names = [p.name for p in shard_paths(self.directory)]
        live = self._records.live_by_shard()
        parts = ((ids, self._shard_vectors(name, rows)) for name, (rows, ids) in live.items())
        return self._rerank.build(self.ids(), self.dim, parts, names[-1] if names else "")

    def _ensure_search_index(self) -> None:
        """Make the in-memory index hold every stored row (a writer's pending rows are flushed first)."""
        if self._index is not None or not self._records or self.dim is None:
            return
        if self._pending_records or self._pending_deletes:
            self.flush()
        self._index = self._build_from_shards(self._kind)
        self._gpu_index = UNTRIED
        self._changed = True
        self._rerank.invalidate()

    def _open_index(
        self, folder: FolderState, shards: list[str], covered: bool, prefix_ids: set[int]
    ) -> None:
        """Take ``index.faiss`` on open when it is sound, covers the first ``shards`` and is of this
        store's kind, catching it up with the shards written after it; otherwise build the index from
        the shards (or leave that to :meth:`finalize`, for kinds not kept up to date while writing).

        ``prefix_ids`` are the ids the covered shards hold; a later shard may override them.
        """
        snap_names = folder.snapshot_shards
        index_path = self.directory / INDEX
        index = None
        if not self.damage and covered and index_path.exists() and folder.snapshot_kind == self._kind.factory:
            try:
                require_regular(index_path)  # a FIFO here would hang every query
                index = load_faiss().read_index(str(index_path))
                if index.d != self.dim:
                    index = None
            except (OSError, ValueError, RuntimeError):
                index = None  # a damaged snapshot is rebuilt from the shards
        later = shards[len(snap_names) :] if covered else shards
        if index is not None and later:
            # A writer killed after its last snapshot: catch up with the shards written since.
            self._index = index
            touched = set()
            for name in later:
                touched.update(read_ids(self.directory / SHARDS / name).tolist())
            self._remove(np.array(sorted(touched & prefix_ids), dtype=np.int64))
            if self._index is not None:
                live = self._records.live_by_shard()
                for name in later:
                    if name in live:
                        rows, ids = live[name]
                        self._index.add_with_ids(self._shard_vectors(name, rows), ids)
            index = self._index
            self._changed = True
            self._rerank.invalidate()
        if index is not None and index.ntotal != len(self._records):
            index = None
        self._index = index
        if self._index is None and self._incremental and self._records:
            self._index = self._build_from_shards(self._kind)
            self._changed = True
        if self._kind.factory != folder.snapshot_kind or self._index is None:
            self._changed = True
        self._snap_rerank = dict(folder.rerank) if covered else {}
        if reranks(self._kind) and self._index is not None and not self._changed:
            # index.faiss is the snapshot as written: its re-rank file is usable if it matches too.
            if not self._rerank.adopt(self._snap_rerank, len(self._records), self.dim, snap_names[-1]):
                log.info("%s does not match the shards: it is rebuilt from them", self._rerank.path.name)
                self._changed = True

    def finalize(self) -> None:
        """Bring the search index in line with the shards and write it: choose the kind (``auto``), build
        or catch up the index, tune nprobe/efSearch against exact search on a sample, write
        ``index.faiss``, the state file and the manifest's ``faiss`` section. Called by :meth:`close`."""
        self._check_writable()
        self.flush()
        if self.dim is None or self.damage:
            return
        if self._requested_kind == "auto":
            chosen = parse_kind(choose_auto(len(self._records), self.dim, self._memory))
            if chosen != self._kind:
                self._kind, self._index = chosen, None
        stored = self._faiss_section.get("index")
        if not self._changed and self._index is not None and stored == self._kind.factory:
            return
        rebuilt = self._index is None
        self._ensure_search_index()
        section: dict[str, Any] = {"index": self._kind.factory}
        if self._requested_kind == "auto" or self._faiss_section.get("requested") == "auto":
            section.update(requested="auto", memory_bytes=self._memory)
        if self._index is not None and not self._kind.exact:
            q_ids = even_sample(self.ids(), TUNE_QUERIES)
            q = self.get_vectors(q_ids)
            _, exact = self.exact_search(q, 11)  # each query's own id is left out: 10 others
            if reranks(self._kind):
                scores = self._ensure_rerank().scores
                n = len(self._records)
                section.update(
                    tune_rerank(self._index, self._kind, q, exact, scores, n, k=10, query_ids=q_ids)
                )
            else:
                section.update(tune_search(self._index, self._kind, q, exact, k=10, query_ids=q_ids))
            section["tuned_on"] = len(q)
        if self._kind.trained:
            trained = getattr(self, "_trained_on", 0) if rebuilt else self._faiss_section.get("trained_on", 0)
            section["trained_on"] = int(trained)
        section["count"] = len(self._records)
        self._faiss_section = section
        self._incremental = True
        self._write_snapshot()
        if (self.directory / MANIFEST).exists():
            try:
                manifest = self.read_manifest()
            except MaeError:
                manifest = None  # a damaged manifest is reported by check(); never overwrite it here
            if manifest is not None:
                self.write_manifest(manifest)
        self._changed = False

    def snapshot_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` held by ``index.faiss`` on disk, whatever the shards say (``repair``).

        Returns empty arrays when the snapshot is missing or unreadable, or of a kind that keeps no
        exact vectors with their ids (IVF, PQ).
        """
        path = self.directory / INDEX
        empty = (np.zeros(0, dtype=np.int64), np.zeros((0, self.dim or 0), dtype=np.float32))
        if not path.exists():
            return empty
        try:
            faiss = load_faiss()
            require_regular(path)
            index = faiss.read_index(str(path))
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            vectors = np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else empty[1]
        except (RuntimeError, AttributeError, ValueError, OSError) as e:
            log.warning("%s cannot be read (%s)", path, e)
            return empty
        return ids, vectors.astype(np.float32)
