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

This module holds :class:`FaissStore` itself: opening a folder, the write path (buffer, shard, state
file, snapshot), reads and the manifest. Its parts live beside it, one job each:

- :mod:`indexer.stores.faiss.shards`: the parquet shard format, one shard's reads and writes;
- :mod:`indexer.stores.faiss.state`: ``index.state.json``, the damage it reveals, folder housekeeping;
- :mod:`indexer.stores.faiss.index`: the search index's kind, building it, catching it up, ``finalize``;
- :mod:`indexer.stores.faiss.search`: filtered and exact search, recall, :class:`ExactSearch`.

The names other code imports from here (``records_to_table``, ``INDEX_STATE``, ...) stay importable
from here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.atomic import atomic_write, atomic_write_json
from indexer.core.errors import (
    ConfigError,
    IndexDamagedError,
    MaeError,
    StoreFullError,
    StoreUnavailableError,
)
from indexer.core.records import RECORD_FIELDS, ImageRecord
from indexer.stores.base import VECTOR_TOLERANCE
from indexer.stores.faiss.index import IndexMixin
from indexer.stores.faiss.kinds import DEFAULT_KIND, parse_kind
from indexer.stores.faiss.rerank_file import RerankKeeper
from indexer.stores.faiss.search import TUNE_QUERIES, UNTRIED, ExactSearch, SearchMixin, load_faiss
from indexer.stores.faiss.shards import (
    SHARDS,
    ShardInfo,
    disk_full,
    read_shard,
    records_to_table,
    shard_paths,
    table_to_records,
)
from indexer.stores.faiss.state import (
    INDEX,
    INDEX_STATE,
    MANIFEST,
    STATE_FORMAT,
    TRANSFORM,
    checksum_problems,
    open_problems,
    parse_state,
    probe_writable,
    read_state,
    remove_stale_temp_files,
    snapshot_covers,
    stored_faiss_section,
)
from indexer.stores.faiss.writes import WriteMixin
from indexer.stores.lock import FolderLock
from indexer.stores.manifest import read_folder_manifest, seal_manifest
from indexer.stores.record_table import RecordTable

__all__ = [
    "DEFAULT_MEMORY",
    "INDEX",
    "INDEX_STATE",
    "MANIFEST",
    "SHARDS",
    "STATE_FORMAT",
    "TRANSFORM",
    "TUNE_QUERIES",
    "ExactSearch",
    "FaissStore",
    "ShardInfo",
    "records_to_table",
    "table_to_records",
]

log = logging.getLogger(__name__)

#: ``auto``'s default memory budget for the search index.
DEFAULT_MEMORY = 4 << 30


class FaissStore(WriteMixin, SearchMixin, IndexMixin):
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
        self._defer_index = defer_index and not read_only
        if kind is not None and kind != "auto":
            parse_kind(kind)  # a typo fails before anything is opened
        self._requested_kind = kind
        self._memory = memory if memory is not None else DEFAULT_MEMORY
        self._overrides = {"nprobe": nprobe, "efSearch": ef_search, "rerank": rerank}
        for name, value in self._overrides.items():
            if value is not None and value < (0 if name == "rerank" else 1):
                raise ConfigError(f"{name} must be >= {0 if name == 'rerank' else 1}, got {value}")
        self._faiss_section: dict[str, Any] = {}
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
        self._gpu_index: Any = UNTRIED
        if read_only and not (self.directory / SHARDS).is_dir() and not (self.directory / MANIFEST).exists():
            raise StoreUnavailableError(
                f"no index at {self.directory}: build one first with `mae-index build DATA --index {self.directory}`"
            )
        self._records = RecordTable()
        self._pending_vectors: list[np.ndarray] = []
        self._pending_records: list[ImageRecord] = []
        self._pending_deletes: list[ImageRecord] = []
        self._index = None
        self._shard_info: dict[str, ShardInfo] = {}
        self.damage: list[str] = []
        self.dim = dim
        self._lock: FolderLock | None = None
        if not read_only:
            self._lock = FolderLock(self.directory).acquire(wait=wait, on_wait=log.warning)
        try:
            if not read_only:
                probe_writable(self.directory)
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
        return shard_paths(self.directory)

    def _load(self) -> None:
        load_faiss()
        if not self.read_only:
            remove_stale_temp_files(self.directory)
        state, problem = read_state(self.directory)
        if problem:
            self.damage.append(problem)
        folder = parse_state(state)
        # The manifest's faiss section; the state file keeps a copy for folders without a manifest.
        self._faiss_section = stored_faiss_section(self.directory) or folder.faiss
        self._resolve_kind()
        paths = self._shard_paths()
        on_disk = {p.name for p in paths}
        self.damage.extend(
            open_problems(state is not None, folder.shards, on_disk, (self.directory / INDEX).exists())
        )
        shards = [p.name for p in paths]
        snap_names = folder.snapshot_shards
        covered = snapshot_covers(shards, snap_names)
        prefix_ids = self._read_shards(paths, folder.shards, snap_names[-1] if covered else None)
        self._snap_names, self._snap_kind = (snap_names, folder.snapshot_kind) if covered else ([], None)
        if self.dim is None:
            return
        self._open_index(folder, shards, covered, prefix_ids)

    def _read_shards(
        self, paths: list[Path], recorded: dict[str, ShardInfo], last_covered: str | None
    ) -> set[int]:
        """Read every sound shard into the records and where their vectors lie (a damaged one is noted in
        :attr:`damage` and skipped); return the ids held once shard ``last_covered`` is read (the
        snapshot's), empty when there is none."""
        prefix_ids: set[int] = set()
        for p in paths:
            parsed = read_shard(p, recorded.get(p.name), self.dim)
            if isinstance(parsed, str):
                self.damage.append(parsed)
            else:
                self._shard_info[p.name] = parsed.info
                if self.dim is None and len(parsed.ids):
                    self.dim = parsed.dim
                self._records.load_shard(p.name, parsed.ids, parsed.meta, parsed.tags, parsed.deleted)
            if p.name == last_covered:
                prefix_ids = set(self._records.ids().tolist())
        self._records.seal()
        return prefix_ids

    def check(self, full: bool = False) -> list[str]:
        """Problems found in the folder: those noticed on open, and with ``full`` every shard whose
        SHA-256 differs from the one recorded when it was written, and the manifest's checksum."""
        problems = list(self.damage)
        if not full:
            return problems
        problems.extend(checksum_problems(self.directory, self._shard_info))
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
        return self._records.ids()

    def get(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Records of ``ids`` (``None`` where absent)."""
        return self._records.get_many(ids)

    @property
    def record_table(self) -> RecordTable:
        """The store's records in columns, to read (never to change): the explorer's catalog answers from
        it instead of a copy."""
        return self._records

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids`` as (n, dim) float32, exact (from the shards where the index keeps
        only codes); KeyError for a missing id."""
        absent = ~self._records.contains(ids)
        if absent.any():
            raise KeyError(f"id {np.asarray(ids).reshape(-1)[np.argmax(absent)]} is not in the index")
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        if not len(ids):
            return out
        if self._index is not None and self._kind.exact:
            # One call: a Python loop of reconstruct() took 36x as long (26k ids of a 52k Flat index).
            return self._index.reconstruct_batch(np.asarray(ids, dtype=np.int64).reshape(-1))
        if self._pending_records:
            self.flush()
        names, shards, rows = self._records.location(ids)
        for code in np.unique(shards).tolist():
            pos = np.flatnonzero(shards == code)
            out[pos] = self._shard_vectors(names[code], rows[pos])
        return out

    def field_values(self, name: str) -> list:
        """Distinct values of metadata field ``name``, sorted (None left out)."""
        if name == "tags":
            return self._records.tag_strings()
        if name not in RECORD_FIELDS:
            raise ConfigError(f"no metadata field {name!r}")
        return self._records.distinct(name)

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
            if disk_full(e):
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
