"""The FAISS store: exact inner-product search over L2-normalised vectors, in an index folder.

Folder layout::

    manifest.json          what the index was built with (indexer.stores.manifest)
    normalize.npz          the fitted --normalize transform, when there is one (indexer.normalize)
    shards/part-NNNNNN.parquet
                           the source of truth: append-only shards of (id, vector, deleted, metadata),
                           each written atomically; a later shard overrides an earlier one per id
    index.faiss            a snapshot of the search index, of the kind the manifest's ``faiss`` section
                           names (Flat by default; HNSW, IVF-Flat, IVF-PQ: indexer.stores.faiss_kinds)
    index.rerank           PQ kinds only: float16 vectors by id, memory-mapped, re-scoring the codes'
                           candidates (indexer.stores.rerank_file; derived from the shards like
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
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexer.atomic import atomic_write, atomic_write_json, file_sha256, temp_file_pid
from indexer.errors import (
    ConfigError,
    IndexDamagedError,
    MaeError,
    StoreFullError,
    StoreUnavailableError,
)
from indexer.stores.base import (
    DISTANCE_SLACK,
    RECORD_FIELDS,
    SPARE_CANDIDATES,
    VECTOR_TOLERANCE,
    Hit,
    ImageRecord,
    MetadataFilter,
    check_batch,
    check_queries,
    check_storable,
    rank_hits,
    tags_match,
)
from indexer.stores.faiss_kinds import (
    DEFAULT_KIND,
    IndexKind,
    choose_auto,
    new_index,
    parse_kind,
    recall_at,
    search_parameters,
    tune_search,
)
from indexer.stores.faiss_rerank import candidates, rerank, reranks, tune_rerank
from indexer.stores.lock import FolderLock, pid_alive
from indexer.stores.manifest import read_folder_manifest, seal_manifest
from indexer.stores.rerank_file import RerankFile, RerankKeeper

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRANSFORM = "normalize.npz"
SHARDS = "shards"
INDEX = "index.faiss"
INDEX_STATE = "index.state.json"
_SHARD_RE = re.compile(r"^part-(\d{6})\.parquet$")
_STR_FIELDS = ("path", "plate", "well", "row", "channel", "source")
_TRIM = " \t\n\r\f\v"
_INT_FIELDS = ("column", "site", "z")
_UNTRIED = object()  # no GPU copy made yet (None: tried, CPU only)
STATE_FORMAT = 3
_SHARD_NAMES = threading.Lock()
#: ``auto``'s default memory budget for the search index.
DEFAULT_MEMORY = 4 << 30
#: Stored vectors used as queries when tuning nprobe/efSearch and in ``verify``'s recall check.
TUNE_QUERIES = 200


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is a core dependency
        raise StoreUnavailableError("FAISS is not installed: pip install faiss-cpu") from e
    return faiss


def _arrow_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim)), ("deleted", pa.bool_())]
        + [(f, pa.string()) for f in _STR_FIELDS]
        + [(f, pa.int32()) for f in _INT_FIELDS]
        + [("tags", pa.string())]  # JSON {key: value}; null without tags (older shards lack the column)
    )


def records_to_table(vectors: np.ndarray, records: Sequence[ImageRecord], deleted: bool = False):
    """Return a pyarrow Table of one shard (id, vector, deleted flag, metadata columns)."""
    import pyarrow as pa

    dim = vectors.shape[1]
    n = len(records)
    cols: dict[str, Any] = {
        "id": pa.array([r.id for r in records], pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
        "deleted": pa.array([deleted] * n, pa.bool_()),
    }
    for f in _STR_FIELDS:
        cols[f] = pa.array([getattr(r, f) for r in records], pa.string())
    for f in _INT_FIELDS:
        cols[f] = pa.array([getattr(r, f) for r in records], pa.int32())
    cols["tags"] = pa.array([json.dumps(dict(r.tags)) if r.tags else None for r in records], pa.string())
    return pa.table(cols, schema=_arrow_schema(dim))


def table_to_records(table) -> tuple[np.ndarray, np.ndarray, list[ImageRecord], np.ndarray]:
    """Inverse of :func:`records_to_table`: ``(ids, vectors, records, deleted)``."""
    ids = table.column("id").to_numpy()
    vec_col = table.column("vector").combine_chunks()
    dim = vec_col.type.list_size
    vectors = vec_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    deleted = table.column("deleted").to_numpy(zero_copy_only=False).astype(bool)
    # Shards written before a field existed (``source``) lack its column: the value is unknown.
    meta = {
        f: table.column(f).to_pylist() if f in table.column_names else [None] * len(ids)
        for f in RECORD_FIELDS
    }
    tags = table.column("tags").to_pylist() if "tags" in table.column_names else [None] * len(ids)
    records = [
        ImageRecord(
            id=int(ids[i]), **{f: meta[f][i] for f in RECORD_FIELDS}, tags=json.loads(tags[i] or "{}")
        )
        for i in range(len(ids))
    ]
    return ids.astype(np.int64), vectors, records, deleted


def _shared_values(values: list) -> list:
    """``values`` with equal strings made one object (interned, so across shards too): this store keeps
    every record in memory, and a column read back gives a new string per row although a plate has one
    plate name, 384 wells, 2 channels and one source. Paths are distinct: not for them."""
    return [sys.intern(v) if isinstance(v, str) else v for v in values]


@dataclass(frozen=True)
class ShardInfo:
    """What the state file records about one shard: enough to notice a missing, truncated or changed one."""

    name: str
    bytes: int
    rows: int
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "bytes": self.bytes, "rows": self.rows, "sha256": self.sha256}


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    # faiss reports a failed write as a RuntimeError carrying the C library's message.
    return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


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
        out = []
        for row_s, row_i in zip(scores, ids):
            keep = row_i >= 0
            if max_distance is not None:
                keep &= (1.0 - row_s) <= max_distance + 1e-6
            out.append(rank_hits(row_i[keep], row_s[keep], store._records, k))
        return out


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
        passes a probe search (:mod:`indexer.stores.faiss_gpu`); otherwise, or when False, on the CPU.
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
    ) -> None:
        self.directory = Path(directory)
        if kind is not None and kind != "auto":
            parse_kind(kind)  # a typo fails before anything is opened
        self._requested_kind = kind
        self._memory = memory if memory is not None else DEFAULT_MEMORY
        self._overrides = {"nprobe": nprobe, "efSearch": ef_search, "rerank": rerank}
        for name, value in self._overrides.items():
            if value is not None and value < (0 if name == "rerank" else 1):
                raise ConfigError(f"{name} must be >= {0 if name == 'rerank' else 1}, got {value}")
        self._faiss_section: dict[str, Any] = {}
        self._where: dict[int, tuple[str, int]] = {}
        self._changed = False  # something to write to index.faiss when this writer closes
        self._incremental = True
        self._trained_on = 0
        self._snap_names: list[str] = []
        self._snap_kind: str | None = None
        self._kind = parse_kind(DEFAULT_KIND)
        self.read_only = read_only
        self._rerank = RerankKeeper(self.directory, writable=not read_only)
        self._snap_rerank: dict[str, Any] = {}  # what the state file records of index.rerank
        self.gpu = gpu
        self._gpu_index: Any = _UNTRIED
        if read_only and not (self.directory / SHARDS).is_dir() and not (self.directory / MANIFEST).exists():
            raise StoreUnavailableError(
                f"no index at {self.directory}: build one first with `mae-index build DATA --index {self.directory}`"
            )
        self._records: dict[int, ImageRecord] = {}
        self._pending_vectors: list[np.ndarray] = []
        self._pending_records: list[ImageRecord] = []
        self._pending_deletes: list[ImageRecord] = []
        self._meta_frame: pd.DataFrame | None = None
        self._index = None
        self._shard_info: dict[str, ShardInfo] = {}
        self.damage: list[str] = []
        self.dim = dim
        self._lock: FolderLock | None = None
        if not read_only:
            self._lock = FolderLock(self.directory).acquire(wait=wait, on_wait=log.warning)
        try:
            if not read_only:
                self._probe_writable()
            self._load()
            if self.damage:
                summary = "; ".join(self.damage)
                if not read_only and not allow_damage:
                    raise IndexDamagedError(
                        f"the index at {self.directory} is damaged: {summary}. Run `mae-index repair --index "
                        f"{self.directory}` (add --redis-url to recover from Redis too) before writing to it"
                    )
                log.warning(
                    "the index at %s is damaged: %s. Serving the %d images of the sound shards; run "
                    "`mae-index repair --index %s` to rebuild it",
                    self.directory, summary, len(self._records), self.directory,
                )  # fmt: skip
            if self.dim is None:
                try:
                    manifest = self.read_manifest()
                except IndexDamagedError:
                    if not allow_damage:
                        raise
                    manifest = None  # repair takes the dimension from index.faiss or Redis
                self.dim = manifest["dim"] if manifest else None
            if dim is not None and self.dim is not None and dim != self.dim:
                raise ConfigError(f"index at {self.directory} holds {self.dim}-d vectors, not {dim}-d")
        except BaseException:
            self._release()
            raise
        self._durable = len(self._records)

    def expect_dim(self, dim: int) -> None:
        """Check that vectors of ``dim`` fit this index (a new one takes it).

        Raises
        ------
        ConfigError
            The index holds vectors of another dimension.
        """
        if self.dim is not None and self.dim != dim:
            raise ConfigError(f"index at {self.directory} holds {self.dim}-d vectors, not {dim}-d")
        self.dim = dim

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

    # ---------------------------------------------------------------- loading
    def _shard_paths(self) -> list[Path]:
        d = self.directory / SHARDS
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if _SHARD_RE.match(p.name))

    def _new_index(self, dim: int):
        return new_index(parse_kind(DEFAULT_KIND), dim)

    # ---------------------------------------------------------------- index kind
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

    def _stored_faiss_section(self) -> dict[str, Any]:
        """The ``faiss`` section of the manifest on disk, or empty (a damaged manifest is reported by
        :meth:`read_manifest`, not here)."""
        try:
            data = json.loads((self.directory / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        section = data.get("faiss") if isinstance(data, dict) else None
        return dict(section) if isinstance(section, dict) else {}

    def _resolve_kind(self) -> None:
        stored = self._faiss_section.get("index")
        try:
            self._kind = parse_kind(stored or DEFAULT_KIND)
        except ConfigError:
            self.damage.append(f"{MANIFEST} names an unknown FAISS index kind {stored!r}")
            self._kind = parse_kind(DEFAULT_KIND)
        if self._requested_kind not in (None, "auto"):
            self._kind = parse_kind(self._requested_kind)
        # Flat is kept up to date while writing; other kinds (and an ``auto`` build that has not
        # chosen yet) are built from the shards when the writer closes.
        self._incremental = self._kind.exact and not (self._requested_kind == "auto" and not stored)

    def _remove(self, ids: np.ndarray) -> None:
        """Remove ``ids`` from the in-memory index; a graph that cannot remove is dropped (rebuilt later)."""
        if self._index is None or not len(ids):
            return
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self._kind.removes:
            self._index = None
        elif self._kind.trained:  # the IVF hash-table direct map removes only through an id array
            self._index.remove_ids(faiss.IDSelectorArray(ids))
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _shard_vectors(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 vectors of one shard (``rows`` of it only, when given), exact as written."""
        import pyarrow.parquet as pq

        col = pq.read_table(self.directory / SHARDS / name, columns=["vector"]).column("vector")
        col = col.combine_chunks()
        if rows is not None:
            col = col.take(rows)
        dim = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)

    def _live_by_shard(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per shard (in shard order): ``(rows, ids)`` of the rows that hold an id's current vector."""
        grouped: dict[str, list[tuple[int, int]]] = {}
        for image_id, (name, row) in self._where.items():
            grouped.setdefault(name, []).append((row, image_id))
        out = {}
        for name in sorted(grouped):
            pairs = np.array(sorted(grouped[name]), dtype=np.int64)
            out[name] = (pairs[:, 0], pairs[:, 1])
        return out

    def _sample_ids(self, n: int) -> np.ndarray:
        """``n`` stored ids spread evenly over the sorted ids (deterministic)."""
        ids = self.ids()
        if n >= len(ids):
            return ids
        return ids[np.linspace(0, len(ids) - 1, n).round().astype(np.int64)]

    def _build_from_shards(self, kind: IndexKind) -> Any:
        """A new index of ``kind`` over every stored vector: trained on an even sample, then filled one
        shard at a time (memory: the index, the training sample and one shard)."""
        index = new_index(kind, self.dim)
        self._trained_on = 0
        if kind.trained:
            sample = self.get_vectors(self._sample_ids(kind.train_size(len(self._records))))
            index.train(sample)
            self._trained_on = len(sample)
        for name, (rows, ids) in self._live_by_shard().items():
            index.add_with_ids(self._shard_vectors(name, rows), ids)
        return index

    def _ensure_rerank(self) -> RerankFile:
        """The re-rank file matching the index, rebuilt from the shards (one at a time) when it does not."""
        current = self._rerank.current
        if current is not None:
            return current
        if self._pending_records or self._pending_deletes:
            self.flush()
        names = [p.name for p in self._shard_paths()]
        live = self._live_by_shard()
        parts = ((ids, self._shard_vectors(name, rows)) for name, (rows, ids) in live.items())
        return self._rerank.build(self.ids(), self.dim, parts, names[-1] if names else "")

    def _ensure_search_index(self) -> None:
        """Make the in-memory index hold every stored row (a writer's pending rows are flushed first)."""
        if self._index is not None or not self._records or self.dim is None:
            return
        if self._pending_records or self._pending_deletes:
            self.flush()
        self._index = self._build_from_shards(self._kind)
        self._gpu_index = _UNTRIED
        self._changed = True
        self._rerank.invalidate()

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` inner products of ``queries`` over every stored float vector, read from the
        shards one at a time: ``(scores, ids)``, each (n_queries, k), ids -1 where fewer are stored.

        This is the ground truth an approximate index is measured against; it needs no index.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._pending_records or self._pending_deletes:
            self.flush()
        best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_i = np.full((len(queries), k), -1, dtype=np.int64)
        for name, (rows, ids) in self._live_by_shard().items():
            scores = queries @ self._shard_vectors(name, rows).T
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
            # Descending score, ties by ascending id, as every store ranks.
            order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
            best_s = np.take_along_axis(all_s, order, axis=1)
            best_i = np.take_along_axis(all_i, order, axis=1)
        return best_s, best_i

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
        q_ids = self._sample_ids(queries)
        q = self.get_vectors(q_ids)
        _, exact = self.exact_search(q, k + 1)
        approx = [[h.id for h in hits] for hits in self.search(q, k + 1)]
        width = max(len(a) for a in approx)
        padded = np.array([a + [-1] * (width - len(a)) for a in approx], dtype=np.int64)
        return recall_at(padded, exact, k, exclude=q_ids)

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
            q_ids = self._sample_ids(TUNE_QUERIES)
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

    def _remove_stale_temp_files(self) -> None:
        # A process killed inside atomic_write leaves its temp file behind; it is never part of the index.
        # Only a dead writer's: the lock keeps other writers out, but this process may have a write in
        # flight on another thread, and a writer that ignores the lock must not lose its work either.
        for folder in (self.directory, self.directory / SHARDS):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    pid = temp_file_pid(p.name)
                    if pid is None or not pid_alive(pid):
                        p.unlink(missing_ok=True)

    def _probe_writable(self) -> None:
        # Before anything is embedded: a folder that takes the lock may still refuse new files
        # (permissions, a read-only mount). The probe's name is a temp file's, so a sweep removes it.
        for folder in (self.directory, self.directory / SHARDS):
            if not folder.is_dir():
                continue
            try:
                fd, probe = tempfile.mkstemp(prefix=f".probe.{os.getpid()}-", suffix=".tmp", dir=folder)
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise StoreUnavailableError(
                    f"index folder {folder} is not writable ({e.strerror or e}): choose another --index "
                    "folder, or fix its permissions"
                ) from e

    def _read_state(self) -> dict[str, Any] | None:
        path = self.directory / INDEX_STATE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or not isinstance(state.get("shards"), list):
                raise ValueError("not an object with a shard list")
            return state
        except (OSError, ValueError) as e:
            self.damage.append(f"{INDEX_STATE} is unreadable ({e})")
            return None

    def _read_shard(self, path: Path, expected: ShardInfo | None):
        """Read one shard's ids, deleted flags and metadata (not its vectors), or note it as damaged and
        return ``None``."""
        import pyarrow.parquet as pq

        size = path.stat().st_size
        if expected is not None and expected.bytes != size:
            self.damage.append(
                f"shard {SHARDS}/{path.name} has {size} bytes, the state file says {expected.bytes} "
                f"(truncated or overwritten; it held {expected.rows} rows)"
            )
            return None
        try:
            schema = pq.read_schema(path)
            table = pq.read_table(path, columns=[n for n in schema.names if n != "vector"])
            ids = table.column("id").to_numpy().astype(np.int64)
            deleted = table.column("deleted").to_numpy(zero_copy_only=False).astype(bool)
            meta = {f: table.column(f).to_pylist() for f in RECORD_FIELDS}
            meta.update({f: _shared_values(meta[f]) for f in RECORD_FIELDS if f != "path"})
            # Shards written before tags existed lack the column.
            tags = table.column("tags").to_pylist() if "tags" in table.column_names else [None] * len(ids)
            records = [
                ImageRecord(
                    id=int(ids[i]), **{f: meta[f][i] for f in RECORD_FIELDS}, tags=json.loads(tags[i] or "{}")
                )
                for i in range(len(ids))
            ]
            dim = schema.field("vector").type.list_size
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError and more for a damaged file
            held = f"; it held {expected.rows} rows" if expected is not None else ""
            self.damage.append(
                f"shard {SHARDS}/{path.name} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}{held})"
            )
            return None
        if expected is not None and expected.rows != len(ids):
            self.damage.append(
                f"shard {SHARDS}/{path.name} has {len(ids)} rows, the state file says {expected.rows}"
            )
            return None
        if self.dim is not None and len(ids) and dim != self.dim:
            self.damage.append(f"shard {SHARDS}/{path.name} holds {dim}-d vectors, not {self.dim}-d")
            return None
        self._shard_info[path.name] = ShardInfo(
            path.name, size, len(ids), expected.sha256 if expected is not None else None
        )
        return ids, dim, records, deleted

    def _load(self) -> None:
        faiss = _faiss()
        if not self.read_only:
            self._remove_stale_temp_files()
        state = self._read_state()
        # The manifest's faiss section; the state file keeps a copy for folders without a manifest.
        self._faiss_section = self._stored_faiss_section() or dict(
            ((state or {}).get("snapshot") or {}).get("faiss") or {}
        )
        self._resolve_kind()
        recorded: dict[str, ShardInfo] = {}
        if state is not None:
            for entry in state["shards"]:
                if isinstance(entry, dict):  # format 2; format 1 listed names only
                    recorded[entry["name"]] = ShardInfo(
                        entry["name"], int(entry["bytes"]), int(entry["rows"]), entry.get("sha256")
                    )
        # Which shards index.faiss covers, and of which kind: format 3 says so; before, it covered all.
        snap = (state or {}).get("snapshot") or {}
        snap_names = list(
            snap.get(
                "shards", [e["name"] if isinstance(e, dict) else e for e in (state or {}).get("shards", [])]
            )
        )
        snap_kind = snap.get("index", DEFAULT_KIND)
        paths = self._shard_paths()
        on_disk = {p.name for p in paths}
        for name, info in recorded.items():
            if name not in on_disk:
                self.damage.append(f"shard {SHARDS}/{name} is missing (it held {info.rows} rows)")
        index_path = self.directory / INDEX
        if state is None and not paths and index_path.exists():
            self.damage.append(f"{INDEX} exists but every shard and {INDEX_STATE} are missing")
        shards = [p.name for p in paths]
        covered = bool(snap_names) and shards[: len(snap_names)] == snap_names
        prefix_ids: set[int] = set()
        for p in paths:
            parsed = self._read_shard(p, recorded.get(p.name))
            if parsed is not None:
                ids, dim, records, deleted = parsed
                if self.dim is None and len(ids):
                    self.dim = dim
                for row, rec in enumerate(records):
                    if deleted[row]:
                        self._where.pop(rec.id, None)
                        self._records.pop(rec.id, None)
                    else:
                        self._where[rec.id] = (p.name, row)
                        self._records[rec.id] = rec
            if covered and p.name == snap_names[-1]:
                prefix_ids = set(self._where)
        self._snap_names, self._snap_kind = (snap_names, snap_kind) if covered else ([], None)
        if self.dim is None:
            return
        index = None
        if not self.damage and covered and index_path.exists() and snap_kind == self._kind.factory:
            try:
                index = faiss.read_index(str(index_path))
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
                touched.update(self._shard_ids(name).tolist())
            self._remove(np.array(sorted(touched & prefix_ids), dtype=np.int64))
            if self._index is not None:
                live = self._live_by_shard()
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
        if self._kind.factory != snap_kind or self._index is None:
            self._changed = True
        self._snap_rerank = dict(snap.get("rerank") or {}) if covered else {}
        if reranks(self._kind) and self._index is not None and not self._changed:
            # index.faiss is the snapshot as written: its re-rank file is usable if it matches too.
            if not self._rerank.adopt(self._snap_rerank, len(self._records), self.dim, snap_names[-1]):
                log.info("%s does not match the shards: it is rebuilt from them", self._rerank.path.name)
                self._changed = True

    def _shard_ids(self, name: str) -> np.ndarray:
        """The ids of one shard's rows, for catching a snapshot up."""
        import pyarrow.parquet as pq

        return pq.read_table(self.directory / SHARDS / name, columns=["id"]).column("id").to_numpy()

    # ---------------------------------------------------------------- writes
    def _ensure_index(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
        if dim != self.dim:
            raise ConfigError(f"vectors are {dim}-d but the index at {self.directory} is {self.dim}-d")
        if self._index is None and self._incremental and not self._records:
            self._index = new_index(self._kind, self.dim)

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Upsert vectors and their records (durable at the next :meth:`flush`).

        Raises
        ------
        ValueError
            Shapes do not match, an id repeats, or a text field is not valid UTF-8 (checked before
            anything is changed, so a caller writing several stores can keep them in step).
        """
        self._check_writable()
        vectors = check_batch(vectors, records)
        if not len(records):
            return
        check_storable(records)
        self._ensure_index(vectors.shape[1])
        ids = np.array([r.id for r in records], dtype=np.int64)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        present = ids[[int(i) in self._records for i in ids]]
        self._remove(present)
        if self._index is not None:
            self._index.add_with_ids(vectors, ids)
        self._gpu_index = _UNTRIED
        self._changed = True
        self._rerank.invalidate()
        for r in records:
            self._records[r.id] = r
        if self._pending_deletes:  # a delete then a re-add before one flush: the re-add wins
            added = set(ids.tolist())
            self._pending_deletes = [r for r in self._pending_deletes if r.id not in added]
        self._pending_vectors.append(vectors)
        self._pending_records.extend(records)
        self._meta_frame = None

    def bulk_load(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Add records whose ids are not stored yet: :meth:`add` (it already buffers until :meth:`flush`;
        its check for a stored id is one dict lookup per id)."""
        self.add(vectors, records)

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ids; return how many were present (durable at the next :meth:`flush`)."""
        self._check_writable()
        present = sorted({int(i) for i in ids} & self._records.keys())
        if not present:
            return 0
        self._remove(np.array(present, dtype=np.int64))
        self._gpu_index = _UNTRIED
        self._changed = True
        self._rerank.invalidate()
        for i in present:
            self._pending_deletes.append(self._records.pop(i))
        self._meta_frame = None
        return len(present)

    def _write_shard(self, table) -> str:
        """Write ``table`` as the next shard, atomically, record its size, rows and checksum, and point
        each id at its row; return the shard's name.

        The name is allocated while this process holds the folder's write lock, so two writers never
        pick the same one (the thread lock covers two stores of one folder in one process).
        """
        import pyarrow.parquet as pq

        def write(p: Path) -> None:
            pq.write_table(table, p)
            info[0] = ShardInfo(shard.name, p.stat().st_size, table.num_rows, file_sha256(p))

        with _SHARD_NAMES:
            existing = self._shard_paths()
            next_no = int(_SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
            shard = self.directory / SHARDS / f"part-{next_no:06d}.parquet"
            info: list[ShardInfo | None] = [None]
            try:
                atomic_write(shard, write)
            except (OSError, RuntimeError) as e:
                if _disk_full(e):
                    raise StoreFullError(
                        f"the disk holding {self.directory} is full: {table.num_rows} rows could not be "
                        f"written. The index keeps the {self._durable} images written before; free some "
                        "space and run the same command again to add the rest"
                    ) from e
                raise
        self._shard_info[shard.name] = info[0]
        ids = table.column("id").to_numpy()
        deleted = table.column("deleted").to_numpy(zero_copy_only=False)
        for row, (image_id, gone) in enumerate(zip(ids.tolist(), deleted.tolist())):
            if gone:
                self._where.pop(image_id, None)
            else:
                self._where[image_id] = (shard.name, row)
        return shard.name

    def flush(self) -> None:
        """Write buffered rows as one new shard (atomically) and record it in the state file.

        ``index.faiss`` is not rewritten here (that is :meth:`finalize`, when a writer closes): a
        checkpoint costs the new rows, not the whole index.

        Raises
        ------
        StoreFullError
            The disk is full; nothing flushed before is lost, and the rows stay buffered.
        """
        if self.read_only or (not self._pending_records and not self._pending_deletes):
            return
        import pyarrow as pa

        tables = []
        if self._pending_records:
            tables.append(records_to_table(np.concatenate(self._pending_vectors), self._pending_records))
        if self._pending_deletes:
            zeros = np.zeros((len(self._pending_deletes), self.dim), dtype=np.float32)
            tables.append(records_to_table(zeros, self._pending_deletes, deleted=True))
        self._write_shard(pa.concat_tables(tables))
        self._pending_vectors, self._pending_records, self._pending_deletes = [], [], []
        self._durable = len(self._records)
        self._write_state()

    def _write_state(self, snapshot: bool = False) -> None:
        """Write ``index.state.json`` (every shard's size, rows and checksum; what ``index.faiss``
        covers), and with ``snapshot`` first ``index.faiss`` itself, covering every shard."""
        faiss = _faiss()
        names = [p.name for p in self._shard_paths()]
        for name in names:
            if name not in self._shard_info:  # written by a crashed writer after our open: describe it
                p = self.directory / SHARDS / name
                import pyarrow.parquet as pq

                self._shard_info[name] = ShardInfo(name, p.stat().st_size, pq.read_metadata(p).num_rows)
        try:
            if snapshot and self._index is not None:
                atomic_write(self.directory / INDEX, lambda p: faiss.write_index(self._index, str(p)))
                self._snap_names, self._snap_kind = names, self._kind.factory
                self._snap_rerank = {}
                if reranks(self._kind):
                    self._ensure_rerank()
                    self._snap_rerank = self._rerank.state_entry()
                else:
                    self._rerank.drop()
            state = {
                "format": STATE_FORMAT,
                "shards": [self._shard_info[n].to_dict() for n in names],
                "snapshot": {
                    "shards": list(self._snap_names),
                    "index": self._snap_kind,
                    "faiss": self._faiss_section,
                    **({"rerank": self._snap_rerank} if self._snap_rerank else {}),
                },
                "ntotal": len(self._records),
            }
            atomic_write_json(self.directory / INDEX_STATE, state)
        except (OSError, RuntimeError) as e:
            if not _disk_full(e):
                raise
            # The shards are the truth and are written; a stale snapshot is rebuilt from them on open.
            log.warning("disk full: %s not refreshed; it is rebuilt from the shards on the next open", INDEX)

    def _write_snapshot(self) -> None:
        if self.dim is None:
            return
        self._ensure_search_index()
        self._write_state(snapshot=True)

    def compact(self) -> None:
        """Rewrite all shards as one (drops overridden and deleted rows)."""
        self._check_writable()
        self.flush()
        if len(self._shard_paths()) <= 1 or not self._records:
            return
        ids = self.ids()
        self.replace_all(self.get_vectors(ids), [self._records[int(i)] for i in ids])

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
        self._check_writable()
        check_storable(records)
        old = self._shard_paths()
        self._pending_vectors, self._pending_records, self._pending_deletes = [], [], []
        self._where = {}
        if len(records):
            self._write_shard(records_to_table(vectors, records))
        self._records = {r.id: r for r in records}
        index = None
        if self.dim is not None and self._incremental and len(records):
            index = new_index(self._kind, self.dim)
            index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.array([r.id for r in records], dtype=np.int64),
            )
        self._index, self._gpu_index, self._meta_frame = index, _UNTRIED, None
        self._changed = True
        self._rerank.invalidate()
        # Oldest first, so a tombstone is never removed before the older row it hides.
        for p in old:
            if keep_old_in:
                dest = self.directory / keep_old_in
                dest.mkdir(exist_ok=True)
                os.replace(p, dest / p.name)
            else:
                os.unlink(p)
            self._shard_info.pop(p.name, None)
        self.damage = []
        self._durable = len(self._records)
        self._snap_names = []
        self._write_snapshot()

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
            faiss = _faiss()
            index = faiss.read_index(str(path))
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            vectors = np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else empty[1]
        except (RuntimeError, AttributeError, ValueError) as e:
            log.warning("%s cannot be read (%s)", path, e)
            return empty
        return ids, vectors.astype(np.float32)

    def check(self, full: bool = False) -> list[str]:
        """Problems found in the folder: those noticed on open, and with ``full`` every shard whose
        SHA-256 differs from the one recorded when it was written, and the manifest's checksum."""
        problems = list(self.damage)
        if not full:
            return problems
        for name, info in sorted(self._shard_info.items()):
            p = self.directory / SHARDS / name
            if info.sha256 is not None and p.exists() and file_sha256(p) != info.sha256:
                problems.append(
                    f"shard {SHARDS}/{name} does not match its recorded SHA-256 (changed since written)"
                )
        problems.extend(self._rerank.problems(self._snap_rerank))
        try:
            self.read_manifest()
        except MaeError as e:
            problems.append(str(e))
        return problems

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreUnavailableError(f"index at {self.directory} was opened read-only")

    def _release(self) -> None:
        self._rerank.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---------------------------------------------------------------- reads
    def count(self) -> int:
        """Number of vectors stored (flushed or not)."""
        return len(self._records)

    def ids(self) -> np.ndarray:
        """All ids, sorted int64."""
        return np.array(sorted(self._records), dtype=np.int64)

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Records of ``ids`` (``None`` where absent)."""
        return [self._records.get(int(i)) for i in ids]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids`` as (n, dim) float32, exact (from the shards where the index keeps
        only codes); KeyError for a missing id."""
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        for i in ids:
            if int(i) not in self._records:
                raise KeyError(f"id {i} is not in the index")
        if self._index is not None and self._kind.exact:
            for row, i in enumerate(ids):
                out[row] = self._index.reconstruct(int(i))
            return out
        if self._pending_records:
            self.flush()
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for pos, i in enumerate(ids):
            name, row = self._where[int(i)]
            by_shard.setdefault(name, []).append((pos, row))
        for name, pairs in by_shard.items():
            pos, rows = (np.array(c, dtype=np.int64) for c in zip(*pairs))
            out[pos] = self._shard_vectors(name, rows)
        return out

    def field_values(self, name: str) -> list:
        """Distinct values of metadata field ``name``, sorted (None left out)."""
        if name == "tags":
            return sorted({t for r in self._records.values() for t in r.tag_strings})
        if name not in RECORD_FIELDS:
            raise ConfigError(f"no metadata field {name!r}")
        return sorted({v for r in self._records.values() if (v := getattr(r, name)) is not None})

    def _frame(self) -> pd.DataFrame:
        if self._meta_frame is None:
            rows = [{**r.to_dict(), "tags": r.tag_strings} for r in self._records.values()]
            self._meta_frame = pd.DataFrame(rows, columns=["id", *RECORD_FIELDS, "tags"])
        return self._meta_frame

    def matching_ids(self, where: MetadataFilter) -> np.ndarray:
        """Ids of records matching ``where`` (vectorised version of :meth:`MetadataFilter.matches`)."""
        df = self._frame()
        mask = np.ones(len(df), dtype=bool)
        for name in ("plate", "well", "row", "column", "site", "channel", "z", "path", "source"):
            allowed = getattr(where, name)
            if allowed:
                # Surrounding ASCII whitespace is not significant, as in Redis tags.
                col = df[name].str.strip(_TRIM) if name in _STR_FIELDS else df[name]
                mask &= col.isin(list(allowed)).to_numpy()
        if where.z_min is not None:
            mask &= (df["z"].astype("float") >= where.z_min).to_numpy()
        if where.z_max is not None:
            mask &= (df["z"].astype("float") <= where.z_max).to_numpy()
        if where.tags:
            groups = where.tag_groups()
            mask &= np.fromiter((tags_match(groups, t) for t in df["tags"]), dtype=bool, count=len(df))
        return df["id"].to_numpy(dtype=np.int64)[mask]

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
        faiss = _faiss()
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
        out = []
        for row_scores, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            if max_distance is not None:
                keep &= (1.0 - row_scores) <= max_distance + DISTANCE_SLACK
            out.append(rank_hits(row_ids[keep], row_scores[keep], self._records, k))
        return out

    def _unfiltered_search_index(self, clone=None) -> Any:
        # GPU indexes take no IDSelector, so filtered searches always stay on the CPU index.
        # ``clone`` replaces the copy to the GPUs (tests have no GPU).
        if not self.gpu or not self._kind.exact:
            return self._index
        if self._gpu_index is _UNTRIED:
            from indexer.stores.faiss_gpu import clone_to_gpus, faiss_gpu_count, gpu_search_index

            self._gpu_index = None
            if clone is not None or faiss_gpu_count(_faiss()) > 0:
                probe = np.stack([self._index.reconstruct(i) for i in list(self._records)[:4]])
                self._gpu_index = gpu_search_index(_faiss(), self._index, probe, clone or clone_to_gpus)
        return self._gpu_index if self._gpu_index is not None else self._index

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The index manifest, or ``None`` for a new folder."""
        data = read_folder_manifest(self.directory)
        if data is None:
            return None
        # The faiss section is this folder's own (kind, search parameters: search_settings), not part
        # of what the index was built with; every store returns the same manifest.
        return {k: v for k, v in data.items() if k != "faiss"}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically, sealed with a checksum of its content.

        Its ``faiss`` section (index kind, search parameters) is this folder's own: it replaces whatever
        the given manifest carries (a manifest copied from Redis by ``sync`` has none).
        """
        self._check_writable()
        section = self._faiss_section or {"index": self._kind.factory}
        try:
            atomic_write_json(self.directory / MANIFEST, seal_manifest({**manifest, "faiss": section}))
        except OSError as e:
            if _disk_full(e):
                raise StoreFullError(
                    f"the disk holding {self.directory} is full: the manifest could not be written; free some "
                    "space and run the same command again"
                ) from e
            raise

    def read_transform(self) -> bytes | None:
        """The fitted normalisation (``normalize.npz`` beside the manifest), or ``None``."""
        p = self.directory / TRANSFORM
        return p.read_bytes() if p.is_file() else None

    def write_transform(self, data: bytes) -> None:
        """Write the fitted normalisation atomically as ``normalize.npz``."""
        self._check_writable()
        atomic_write(self.directory / TRANSFORM, lambda p: p.write_bytes(data))

    def close(self) -> None:
        """Flush pending writes, write the search index (:meth:`finalize`) and let the lock go."""
        try:
            if not self.read_only:
                self.flush()
                if self._changed and not self.damage:
                    self.finalize()
        finally:
            self._release()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
