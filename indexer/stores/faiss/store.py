"""The FAISS store: exact inner-product search over L2-normalised vectors, in an index folder.

Folder layout::

    manifest.json          what the index was built with (indexer.stores.manifest)
    normalize.npz          the fitted --normalize transform, when there is one (indexer.vectors.normalize)
    shards/part-NNNNNN.parquet
                           the source of truth: append-only shards of (id, vector, deleted, metadata),
                           each written atomically; a later shard overrides an earlier one per id
    index.faiss            a snapshot of the search index, of the kind the manifest's ``faiss`` section
                           names (Flat by default; HNSW, IVF-Flat, IVF-PQ: indexer.stores.faiss.kinds)
    index.rerank           PQ kinds only: float16 vectors by id, memory-mapped, re-scoring the codes'
                           candidates (indexer.stores.faiss.rerank_file; derived from the shards like
                           index.faiss, and rebuilt when it does not match them)
    index.state.json       every shard's size, rows and SHA-256, and which shards the snapshot covers
    .write.lock            the writers' lock (indexer.stores.lock)

Writes are buffered and become durable at :meth:`FaissStore.flush` as one new shard (and the state
file); the snapshot is written when a writer closes, so a long build does not rewrite a growing
``index.faiss`` at every checkpoint. A crash can lose only unflushed rows, never corrupt what was
flushed; on open, a snapshot that covers the first shards is caught up with the later ones, and a
missing or damaged one is rebuilt from the shards. Kinds other than Flat are trained on a sample of
the shards and filled from them one shard at a time, so building one needs memory for the index and
one shard, not for every float vector.

This module holds :class:`FaissStore`, a small facade over parts that own their state, each in its
own module, imported one way (store -> folder, index, writes, exact -> shards, state, kinds, ...):

- :mod:`indexer.stores.faiss.folder`: :class:`ShardFolder`, the lock, shards, records, state file,
  snapshot record and damage (no FAISS);
- :mod:`indexer.stores.faiss.index`: :class:`SearchIndex`, the FAISS index, its kind, GPU copy,
  re-rank file and tuning (no folder: testable from ``(ids, vectors)``);
- :mod:`indexer.stores.faiss.writes`: :class:`WriteBuffer`, the rows waiting for the next shard;
- :mod:`indexer.stores.faiss.exact`: exact search, recall, :class:`ExactSearch`.

The store decides when: when to keep the index up to date, to flush, to build, tune and write the
snapshot. The names other code imports from here (``records_to_table``, ``INDEX_STATE``, ...) stay
importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.errors import ConfigError, MaeError
from indexer.core.records import RECORD_FIELDS, Hit, ImageRecord, MetadataFilter
from indexer.stores.base import SPARE_CANDIDATES, VECTOR_TOLERANCE, check_batch, check_queries, check_storable
from indexer.stores.faiss import exact
from indexer.stores.faiss.exact import TUNE_QUERIES, ExactSearch, even_sample, exact_top_k, hits_per_query
from indexer.stores.faiss.folder import ShardFolder
from indexer.stores.faiss.index import SearchIndex, read_snapshot_vectors
from indexer.stores.faiss.kinds import IndexKind, choose_auto, load_faiss, open_kind, parse_kind
from indexer.stores.faiss.opening import take_snapshot
from indexer.stores.faiss.rerank_file import RerankKeeper
from indexer.stores.faiss.shards import SHARDS, records_to_table, table_to_records
from indexer.stores.faiss.state import INDEX, INDEX_STATE, MANIFEST, stored_faiss_section
from indexer.stores.faiss.writes import WriteBuffer
from indexer.stores.record_table import RecordTable

__all__ = ["INDEX", "INDEX_STATE", "MANIFEST", "SHARDS", "FaissStore", "records_to_table", "table_to_records"]

log = logging.getLogger(__name__)

#: ``auto``'s default memory budget for the search index.
DEFAULT_MEMORY = 4 << 30


class FaissStore:
    """A :class:`~indexer.stores.base.VectorStore` backed by FAISS (exact inner product) and parquet.

    Parameters
    ----------
    directory
        The index folder; created when missing.
    dim
        Vector dimension. Needed for a new index; checked against an existing one.
    read_only
        Open for queries only (no lock taken; no shard or snapshot is written).
    gpu
        Run unfiltered searches on a GPU copy of the index where faiss has GPU support and the copy
        passes a probe search (:mod:`indexer.stores.faiss.gpu`); otherwise, or when False, on the CPU.
    wait
        A writer waits for another writer of the folder to finish (saying so once, as a warning); with
        ``False`` it fails at once with :class:`IndexBusyError`.
    allow_damage
        Open a damaged index for writing (``repair`` and ``sync`` rebuild it); other writers refuse.
    kind
        A writer's index kind: a factory string (``Flat``, ``HNSW32``, ``IVF1024,PQ96``, ...) or
        ``auto``; ``None`` keeps the folder's (Flat for a new folder). Another kind than the folder's
        is built from the shards when the writer closes.
    memory
        ``auto``'s memory budget for the index, in bytes (default 4 GiB).
    defer_index
        A writer that only writes (a build): a Flat index is not kept up to date in memory while writing
        but built from the shards when the writer closes (or at its first search), so a build does not
        hold every vector (768 B per image with the tiny model, 3 KB with ViT-B) while it embeds. Other
        kinds keep what they hold: rebuilding a graph or re-filling IVF lists costs more than holding them.
    nprobe, ef_search, rerank
        Search parameters overriding the ones the build chose and the manifest records (``rerank``: a
        PQ kind's candidates per result re-scored with the float vectors; 0 ranks by the codes).

    On open the folder checks itself cheaply against ``index.state.json`` (the shard list, each
    shard's size and row count): :attr:`damage` lists what is missing or unreadable. A reader serves
    the sound shards with a warning; a writer refuses with :class:`IndexDamagedError` unless
    ``allow_damage``. :meth:`check` with ``full=True`` also compares every shard's SHA-256.
    """

    def __init__(
        self,
        directory: Path,
        dim: int | None = None,
        read_only: bool = False,
        gpu: bool = True,
        wait: bool = True,
        allow_damage: bool = False,
        kind: str | None = None,
        memory: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
        defer_index: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        if kind is not None and kind != "auto":
            parse_kind(kind)  # a typo fails before anything is opened
        self._requested_kind = kind
        self._memory = memory if memory is not None else DEFAULT_MEMORY
        self._overrides = {"nprobe": nprobe, "efSearch": ef_search, "rerank": rerank}
        for name, value in self._overrides.items():
            if value is not None and value < (0 if name == "rerank" else 1):
                raise ConfigError(f"{name} must be >= {0 if name == 'rerank' else 1}, got {value}")
        self._defer_index = defer_index and not read_only
        self._settings: dict[str, Any] = {}  # the manifest's faiss section (kind, search parameters)
        self._incremental = True  # the index is kept up to date while writing (else built on close)
        self._buffer = WriteBuffer()
        self._folder = ShardFolder(self.directory, read_only=read_only, wait=wait, dim=dim)
        self._index = SearchIndex(
            parse_kind("Flat"), self._folder, RerankKeeper(self.directory, not read_only), gpu
        )
        try:
            self._open()
            self._folder.settle_damage(allow_damage)
            if dim is not None and self.dim is not None and dim != self.dim:
                raise ConfigError(f"index at {self.directory} holds {self.dim}-d vectors, not {dim}-d")
        except BaseException:
            self._release()
            raise

    # ---------------------------------------------------------------- opening
    def _open(self) -> None:
        load_faiss()
        folder = self._folder
        state = folder.read_state()
        # The manifest's faiss section; the state file keeps a copy for folders without a manifest.
        self._settings = stored_faiss_section(self.directory) or state.faiss
        stored = self._settings.get("index")
        kind, known = open_kind(stored, self._requested_kind)
        if not known:
            folder.note_damage(f"{MANIFEST} names an unknown FAISS index kind {stored!r}")
        self._index.set_kind(kind)
        # Flat is kept up to date while writing, unless the writer defers it; other kinds (and an
        # ``auto`` build that has not chosen yet) are built from the shards when the writer closes.
        self._incremental = (
            kind.exact and not (self._requested_kind == "auto" and not stored) and not self._defer_index
        )
        opened = folder.read_shards(state)
        if folder.dim is not None:
            take_snapshot(folder, self._index, opened, self._incremental)

    # ---------------------------------------------------------------- identity
    @property
    def dim(self) -> int | None:
        """Vector dimension (``None`` for a new, empty folder)."""
        return self._folder.dim

    def expect_dim(self, dim: int) -> None:
        """Check that vectors of ``dim`` fit this index (a new one takes it).

        Raises
        ------
        ConfigError
            The index holds vectors of another dimension.
        """
        self._folder.expect_dim(dim)

    @property
    def damage(self) -> list[str]:
        """What the open found missing or unreadable (empty: sound)."""
        return self._folder.damage

    @property
    def gpu(self) -> bool:
        """Whether unfiltered searches may run on a GPU copy."""
        return self._index.gpu

    @property
    def location(self) -> str:
        """The index folder, for messages."""
        return str(self.directory)

    @property
    def identity(self) -> dict[str, str]:
        """Which store and index this is, for outputs: ``{"store": "faiss", "index": folder}``."""
        return {"store": "faiss", "index": str(self.directory)}

    @property
    def vector_tolerance(self) -> float:
        """Vectors are kept as float32."""
        return VECTOR_TOLERANCE["FLOAT32"]

    @property
    def kind(self) -> IndexKind:
        """The kind of search index this folder holds (or this writer builds when it closes)."""
        return self._index.kind

    @property
    def search_index(self) -> SearchIndex:
        """The search index part, to read (its kind, size, GPU copy), never to change."""
        return self._index

    @property
    def folder(self) -> ShardFolder:
        """The folder part (shards, state file, lock), to read, never to change."""
        return self._folder

    @property
    def search_settings(self) -> dict[str, Any]:
        """The manifest's ``faiss`` section: index kind, nprobe/efSearch and the recall measured when
        they were chosen, with this store's overrides applied."""
        out = dict(self._settings or {"index": self.kind.factory})
        out.update({k: v for k, v in self._overrides.items() if v is not None})
        return out

    # ---------------------------------------------------------------- reads
    def count(self) -> int:
        """Number of vectors stored (flushed or not)."""
        return len(self._folder.records)

    def ids(self) -> np.ndarray:
        """All ids, sorted int64."""
        return self._folder.ids()

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Records of ``ids`` (``None`` where absent)."""
        return self._folder.records.get_many(ids)

    @property
    def record_table(self) -> RecordTable:
        """The store's records in columns, to read (never to change): the explorer's catalog answers from
        it instead of a copy."""
        return self._folder.records

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids`` as (n, dim) float32, exact (from the shards where the index keeps
        only codes); KeyError for a missing id."""
        absent = ~self._folder.records.contains(ids)
        if absent.any():
            raise KeyError(f"id {np.asarray(ids).reshape(-1)[np.argmax(absent)]} is not in the index")
        if not len(ids):
            return np.empty((0, self.dim or 0), dtype=np.float32)
        if self._index.held and self.kind.exact:
            return self._index.reconstruct(ids)
        if self._buffer.has_rows:
            self.flush()
        return self._folder.vectors(ids)

    def field_values(self, name: str) -> list:
        """Distinct values of metadata field ``name``, sorted (None left out)."""
        if name == "tags":
            return self._folder.records.tag_strings()
        if name not in RECORD_FIELDS:
            raise ConfigError(f"no metadata field {name!r}")
        return self._folder.records.distinct(name)

    def matching_ids(self, where: MetadataFilter) -> np.ndarray:
        """Ids of records matching ``where`` (:meth:`MetadataFilter.matches`, over the record columns)."""
        return self._folder.records.matching_ids(where)

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
        records = self._folder.records
        queries = check_queries(queries, k, self.dim if records else None)
        if not records:
            return [[] for _ in queries]
        self._ensure_search_index()
        # Scores are cosine similarity whatever the caller passes (stored vectors are unit already).
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        allowed = None if where is None or where.is_empty else self.matching_ids(where)
        if allowed is not None and not len(allowed):
            return [[] for _ in queries]
        settings = self.search_settings
        if self._buffer and self._index.needs_rerank_file(settings):
            self.flush()  # the re-rank file is made from the shards
        scores, ids = self._index.search(queries, k + SPARE_CANDIDATES, allowed, len(records), settings)
        return hits_per_query(scores, ids, records, k, max_distance)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` inner products of ``queries`` over every stored float vector, read from the
        shards one at a time: ``(scores, ids)``, each (n_queries, k), ids -1 where fewer are stored.

        This is the ground truth an approximate index is measured against; it needs no index.
        """
        if self._buffer:
            self.flush()
        return exact_top_k(queries, k, self._folder.live_parts())

    def exact_searcher(self) -> ExactSearch:
        """This folder searched exactly over the shards' float vectors, whatever its index kind (the
        reference that ``verify`` and ``mae-eval`` measure approximate search against)."""
        return ExactSearch(self)

    def measure_recall(self, k: int = 10, queries: int = TUNE_QUERIES) -> float:
        """Recall@``k`` of the search index against :meth:`exact_search`, with ``queries`` stored vectors
        (spread evenly over the ids) as queries, at the current search settings. Each query's own id is
        left out of both lists (any index finds a stored vector itself)."""
        return exact.measure_recall(self, k, queries)

    def check(self, full: bool = False) -> list[str]:
        """Problems found in the folder: those noticed on open, and with ``full`` every shard whose
        SHA-256 differs from the one recorded when it was written, and the manifest's checksum."""
        problems = list(self.damage)
        if not full:
            return problems
        problems.extend(self._folder.checksum_problems())
        problems.extend(self._index.rerank_problems(self._folder.snapshot.rerank))
        try:
            self.read_manifest()
        except MaeError as e:
            problems.append(str(e))
        return problems

    def snapshot_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` held by ``index.faiss`` on disk, whatever the shards say (``repair``).

        Returns empty arrays when the snapshot is missing or unreadable, or of a kind that keeps no
        exact vectors with their ids (IVF, PQ).
        """
        return read_snapshot_vectors(self.directory / INDEX, self.dim)

    # ---------------------------------------------------------------- writes
    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert vectors and their records (durable at the next :meth:`flush`).

        Raises
        ------
        ValueError
            Shapes do not match, an id repeats, or a text field is not valid UTF-8 (checked before
            anything is changed, so a caller writing several stores can keep them in step).
        """
        self._folder.check_writable()
        vectors = check_batch(vectors, records)
        if not len(records):
            return
        check_storable(records)
        dim = vectors.shape[1]
        if self.dim is None:
            self._folder.expect_dim(dim)
        if dim != self.dim:
            raise ConfigError(f"vectors are {dim}-d but the index at {self.directory} is {self.dim}-d")
        table, index = self._folder.records, self._index
        if not index.held and self._incremental and not table:
            index.start()
        ids = np.array([r.id for r in records], dtype=np.int64)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        index.remove(ids[table.contains(ids)])
        if index.held and self._defer_index and self.kind.exact:
            index.drop()  # a snapshot loaded on open: rebuilt from the shards on close
        else:
            index.add(ids, vectors)
        table.put(records)
        self._buffer.add(vectors, records)

    def bulk_load(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Add records whose ids are not stored yet: :meth:`add` (it already buffers until :meth:`flush`;
        its check for a stored id is one dict lookup per id)."""
        self.add(vectors, records)

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ids; return how many were present (durable at the next :meth:`flush`)."""
        self._folder.check_writable()
        table = self._folder.records
        present = [i for i in sorted({int(i) for i in ids}) if i in table]
        if not present:
            return 0
        self._index.remove(np.array(present, dtype=np.int64))
        self._index.mark_stale()  # a graph that dropped itself has changed too
        for i in present:
            self._buffer.delete(table.pop(i))
        return len(present)

    def flush(self) -> None:
        """Write buffered rows as one new shard (atomically) and record it in the state file.

        ``index.faiss`` is not rewritten here (that is :meth:`finalize`, when a writer closes): a
        checkpoint costs the new rows, not the whole index.

        Raises
        ------
        StoreFullError
            The disk is full; nothing flushed before is lost, and the rows stay buffered.
        """
        if self.read_only or not self._buffer:
            return
        self._folder.write_shard(self._buffer.table(self.dim))
        self._buffer.clear()
        self._folder.write_state(self._settings)

    def _ensure_search_index(self) -> None:
        """Make the in-memory index hold every stored row (a writer's pending rows are flushed first)."""
        if self._index.held or not self._folder.records or self.dim is None:
            return
        if self._buffer:
            self.flush()
        self._index.build()

    def _write_snapshot(self) -> None:
        if self.dim is None:
            return
        self._ensure_search_index()
        self._folder.write_state(self._settings, self._index.write_snapshot if self._index.held else None)

    def finalize(self) -> None:
        """Bring the search index in line with the shards and write it: choose the kind (``auto``), build
        or catch up the index, tune nprobe/efSearch against exact search on a sample, write
        ``index.faiss``, the state file and the manifest's ``faiss`` section. Called by :meth:`close`."""
        self._folder.check_writable()
        self.flush()
        if self.dim is None or self.damage:
            return
        index, n = self._index, self.count()
        if self._requested_kind == "auto":
            index.set_kind(parse_kind(choose_auto(n, self.dim, self._memory)))
        if not index.changed and index.held and self._settings.get("index") == index.kind.factory:
            return
        rebuilt = not index.held
        self._ensure_search_index()
        section: dict[str, Any] = {"index": index.kind.factory}
        if self._requested_kind == "auto" or self._settings.get("requested") == "auto":
            section.update(requested="auto", memory_bytes=self._memory)
        if index.held and not index.kind.exact:
            q_ids = even_sample(self.ids(), TUNE_QUERIES)
            q = self.get_vectors(q_ids)
            _, exact = self.exact_search(q, 11)  # each query's own id is left out: 10 others
            section.update(index.tune(q, exact, q_ids, n))
            section["tuned_on"] = len(q)
        if index.kind.trained:
            section["trained_on"] = int(index.trained_on if rebuilt else self._settings.get("trained_on", 0))
        section["count"] = n
        self._settings = section
        self._incremental = True
        self._write_snapshot()
        self._folder.refresh_manifest(section)
        index.mark_saved()

    def compact(self) -> None:
        """Rewrite all shards as one (drops overridden and deleted rows)."""
        self._folder.check_writable()
        self.flush()
        if len(self._folder.shard_names()) <= 1 or not self.count():
            return
        ids = self.ids()
        self.replace_all(self.get_vectors(ids), self.get(ids))

    def replace_all(
        self, vectors: np.ndarray, records: Sequence[ImageRecord], keep_old_in: str | None = None
    ) -> None:
        """Make the index hold exactly ``records`` (one new shard), then drop every older shard.

        Parameters
        ----------
        keep_old_in
            Move the old shards into this sub-folder instead of deleting them (``repair`` keeps the
            damaged ones for inspection).
        """
        self._folder.check_writable()
        check_storable(records)
        self._buffer.clear()
        table = records_to_table(vectors, records) if len(records) else None
        self._folder.replace(records, table, keep_old_in)
        if self.dim is not None and self._incremental and len(records):
            self._index.fill(np.array([r.id for r in records], dtype=np.int64), vectors)
        else:
            self._index.drop()
        self._write_snapshot()

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The index manifest, or ``None`` for a new folder."""
        return self._folder.read_manifest()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically, sealed with a checksum of its content.

        Its ``faiss`` section (index kind, search parameters) is this folder's own: it replaces whatever
        the given manifest carries (a manifest copied from Redis by ``sync`` has none).
        """
        self._folder.write_manifest(manifest, self._settings or {"index": self.kind.factory})

    def read_transform(self) -> bytes | None:
        """The fitted normalisation (``normalize.npz`` beside the manifest), or ``None``."""
        return self._folder.read_transform()

    def write_transform(self, data: bytes) -> None:
        """Write the fitted normalisation atomically as ``normalize.npz``."""
        self._folder.write_transform(data)

    def close(self) -> None:
        """Flush pending writes, write the search index (:meth:`finalize`) and let the lock go."""
        try:
            if not self.read_only:
                self.flush()
                if self._index.changed and not self.damage:
                    self.finalize()
        finally:
            self._release()

    def _release(self) -> None:
        self._index.close()
        self._folder.release()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
