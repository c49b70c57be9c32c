"""An index folder on disk: its writers' lock, parquet shards, state file, snapshot record and damage.

:class:`ShardFolder` owns everything of a FAISS index folder but the search index itself, and imports
no FAISS: it reads the shards into a :class:`~indexer.stores.record_table.RecordTable` (noting each
damaged one), hands out their float vectors one shard at a time (:meth:`ShardFolder.live_parts`),
writes new shards and ``index.state.json``, and records which shards ``index.faiss`` covers. The
snapshot file itself is written by whoever holds the index, through the callable
:meth:`ShardFolder.write_state` is given. The shard format is :mod:`indexer.stores.faiss.shards`;
the state document and housekeeping are :mod:`indexer.stores.faiss.state`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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
from indexer.core.limits import MAX_TRANSFORM_BYTES
from indexer.core.records import ImageRecord
from indexer.core.safe_files import read_bounded
from indexer.stores.faiss.shards import (
    SHARDS,
    ShardInfo,
    describe_shard,
    disk_full,
    read_ids,
    read_shard,
    read_vectors,
    shard_paths,
    unmarked_problem,
    write_shard,
)
from indexer.stores.faiss.state import (
    INDEX,
    MANIFEST,
    TRANSFORM,
    FolderState,
    checksum_problems,
    open_problems,
    parse_state,
    probe_writable,
    read_state,
    remove_stale_temp_files,
    snapshot_covers,
    state_document,
    stored_index_uid,
    write_state,
)
from indexer.stores.lock import FolderLock
from indexer.stores.manifest import read_folder_manifest, seal_manifest
from indexer.stores.record_table import RecordTable

# The store's own logger: these messages are the store's.
log = logging.getLogger("indexer.stores.faiss.store")

#: ``write_state``'s snapshot writer: writes ``index.faiss`` at the path given, returns its kind and
#: what the state file records of its re-rank file (empty for none).
SnapshotWriter = Callable[[Path], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Snapshot:
    """What the state file says ``index.faiss`` is: the shards it covers, its kind, its re-rank file."""

    shards: list[str] = field(default_factory=list)
    kind: str | None = None
    rerank: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenedShards:
    """What :meth:`ShardFolder.read_shards` found: the shards in order, whether ``index.faiss`` covers
    the first of them, and the ids those covered shards hold (a later shard may override them)."""

    shards: list[str]
    covered: bool
    prefix_ids: set[int]


class ShardFolder:
    """One index folder's shards, records, state file and lock (a writer holds it until :meth:`release`).

    Parameters
    ----------
    directory
        The folder; a writer creates it when missing.
    read_only
        No lock, no file written.
    wait
        A writer waits for another one to finish (else :class:`IndexBusyError` at once).
    dim
        The vector dimension expected, when known; shards of another are damaged.
    """

    def __init__(self, directory: Path, read_only: bool = False, wait: bool = True, dim: int | None = None):
        self.directory = Path(directory)
        self.read_only = read_only
        if read_only and not (self.directory / SHARDS).is_dir() and not (self.directory / MANIFEST).exists():
            raise StoreUnavailableError(
                f"no index at {self.directory}: build one first with `mae-index build DATA --index {self.directory}`"
            )
        self.dim = dim
        self.records = RecordTable()
        self.damage: list[str] = []
        self.durable = 0  # images a crash would keep: written to shards
        self.snapshot = Snapshot()
        #: The manifest's index uid, which every shard written carries (read once, on open; follows
        #: :meth:`write_manifest`).
        self.index_uid: str | None = None
        self._shard_info: dict[str, ShardInfo] = {}
        self._lock: FolderLock | None = None
        if not read_only:
            self._lock = FolderLock(self.directory).acquire(wait=wait, on_wait=log.warning)
            try:
                probe_writable(self.directory)
            except BaseException:
                self.release()
                raise

    # ---------------------------------------------------------------- opening
    def read_state(self) -> FolderState:
        """Read ``index.state.json`` (a writer first sweeps dead writers' temp files); an unreadable
        one is noted in :attr:`damage` and reads as none."""
        if not self.read_only:
            remove_stale_temp_files(self.directory)
        state, problem = read_state(self.directory)
        if problem:
            self.damage.append(problem)
        return parse_state(state)

    def read_shards(self, state: FolderState) -> OpenedShards:
        """Read every sound shard into :attr:`records` (a missing or damaged one is noted in
        :attr:`damage` and skipped: another index's, and one without a uid after one with this folder's)
        and what ``index.faiss`` covers of them."""
        self.index_uid = stored_index_uid(self.directory)
        marked: str | None = None  # the first shard carrying this folder's uid
        paths = shard_paths(self.directory)
        shards = [p.name for p in paths]
        self.damage.extend(
            open_problems(state.found, state.shards, set(shards), (self.directory / INDEX).exists())
        )
        covered = snapshot_covers(shards, state.snapshot_shards)
        last_covered = state.snapshot_shards[-1] if covered else None
        prefix_ids: set[int] = set()
        for p in paths:
            parsed = read_shard(p, state.shards.get(p.name), self.dim, self.index_uid)
            if not isinstance(parsed, str) and self.index_uid:
                if parsed.index_uid:
                    marked = marked or p.name
                elif marked:
                    parsed = unmarked_problem(p.name, marked, self.index_uid)
            if isinstance(parsed, str):
                self.damage.append(parsed)
            else:
                self._shard_info[p.name] = parsed.info
                if self.dim is None and len(parsed.ids):
                    self.dim = parsed.dim
                self.records.load_shard(p.name, parsed.ids, parsed.meta, parsed.tags, parsed.deleted)
            if p.name == last_covered:
                prefix_ids = set(self.records.ids().tolist())
        self.records.seal()
        if covered:
            self.snapshot = Snapshot(list(state.snapshot_shards), state.snapshot_kind, dict(state.rerank))
        self.durable = len(self.records)
        return OpenedShards(shards, covered, prefix_ids)

    def note_damage(self, problem: str) -> None:
        """Note a problem found outside the shards (an unknown index kind in the manifest)."""
        self.damage.append(problem)

    # ---------------------------------------------------------------- reads
    def shard_names(self) -> list[str]:
        """The folder's shards, in order."""
        return [p.name for p in shard_paths(self.directory)]

    def ids(self) -> np.ndarray:
        """Every live id, sorted int64."""
        return self.records.ids()

    def shard_vectors(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 vectors of shard ``name`` (``rows`` of it only, when given)."""
        return read_vectors(self.directory / SHARDS / name, rows)

    def live_parts(self, names: Iterable[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` of the live rows, one shard at a time (of ``names`` only, when given)."""
        live = self.records.live_by_shard()
        for name in live if names is None else names:
            if name in live:
                rows, ids = live[name]
                yield ids, self.shard_vectors(name, rows)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored float32 vectors of ``ids`` (every one live and written to a shard)."""
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        if not len(ids):
            return out
        names, shards, rows = self.records.location(ids)
        for code in np.unique(shards).tolist():
            pos = np.flatnonzero(shards == code)
            out[pos] = self.shard_vectors(names[code], rows[pos])
        return out

    def ids_written(self, names: Iterable[str]) -> set[int]:
        """Every id the rows of shards ``names`` hold (live, overridden or deleted)."""
        return {i for name in names for i in read_ids(self.directory / SHARDS / name).tolist()}

    def checksum_problems(self) -> list[str]:
        """Shards whose SHA-256 differs from the one recorded when they were written (reads them all)."""
        return checksum_problems(self.directory, self._shard_info)

    # ---------------------------------------------------------------- writes
    def check_writable(self) -> None:
        """Refuse to write a folder opened read-only."""
        if self.read_only:
            raise StoreUnavailableError(f"index at {self.directory} was opened read-only")

    def write_shard(self, table) -> str:
        """Write ``table`` as the next shard (:func:`~indexer.stores.faiss.shards.write_shard`), record
        its size, rows and checksum, and point each of its records at its row; return the shard's name.

        Raises
        ------
        StoreFullError
            The disk is full; no shard was added.
        """
        try:
            info = write_shard(self.directory, table, self.index_uid)
        except (OSError, RuntimeError) as e:
            if disk_full(e):
                raise StoreFullError(
                    f"the disk holding {self.directory} is full: {table.num_rows} rows could not be "
                    f"written. The index keeps the {self.durable} images written before; free some "
                    "space and run the same command again to add the rest"
                ) from e
            raise
        self._shard_info[info.name] = info
        ids = table.column("id").to_numpy()
        deleted = table.column("deleted").to_numpy(zero_copy_only=False)
        self.records.place(info.name, ids, deleted)
        self.durable = len(self.records)
        return info.name

    def write_state(self, settings: dict[str, Any], snapshot: SnapshotWriter | None = None) -> None:
        """Write ``index.state.json`` (every shard's size, rows and checksum; what ``index.faiss``
        covers; the search ``settings``), and with ``snapshot`` first ``index.faiss`` itself, covering
        every shard. A full disk leaves the old state and snapshot, with a warning: the shards are the
        truth, and a stale snapshot is rebuilt from them on open."""
        names = self.shard_names()
        for name in names:
            if name not in self._shard_info:  # written by a crashed writer after our open: describe it
                self._shard_info[name] = describe_shard(self.directory / SHARDS / name)
        try:
            if snapshot is not None:
                kind, rerank = snapshot(self.directory / INDEX)
                self.snapshot = Snapshot(names, kind, rerank)
            document = state_document(
                [self._shard_info[n] for n in names],
                self.snapshot.shards,
                self.snapshot.kind,
                settings,
                self.snapshot.rerank,
                len(self.records),
            )
            write_state(self.directory, document)
        except (OSError, RuntimeError) as e:
            if not disk_full(e):
                raise
            log.warning("disk full: %s not refreshed; it is rebuilt from the shards on the next open", INDEX)

    def replace(self, records: Sequence[ImageRecord], table, keep_old_in: str | None = None) -> None:
        """Make the folder hold exactly ``records``: ``table`` (their shard; ``None`` for none) is
        written, then every older shard is dropped, or moved into the sub-folder ``keep_old_in``."""
        old = shard_paths(self.directory)
        self.records = RecordTable(records)
        if table is not None:
            self.write_shard(table)
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
        self.durable = len(self.records)
        self.snapshot = dataclasses.replace(self.snapshot, shards=[])

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The index manifest without its ``faiss`` section, or ``None`` for a new folder."""
        data = read_folder_manifest(self.directory)
        if data is None:
            return None
        # The faiss section is this folder's own (kind, search parameters), not part of what the index
        # was built with; every store returns the same manifest.
        return {k: v for k, v in data.items() if k != "faiss"}

    def write_manifest(self, manifest: dict[str, Any], settings: dict[str, Any]) -> None:
        """Write the manifest with ``settings`` as its ``faiss`` section, atomically, sealed with a
        checksum of its content."""
        self.check_writable()
        try:
            atomic_write_json(self.directory / MANIFEST, seal_manifest({**manifest, "faiss": settings}))
            uid = manifest.get("index_uid")
            self.index_uid = uid if isinstance(uid, str) else None  # what stored_index_uid now reads
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
        if not p.exists() and not p.is_symlink():
            return None
        return read_bounded(p, MAX_TRANSFORM_BYTES)  # a regular file of bounded size: never /dev/zero

    def write_transform(self, data: bytes) -> None:
        """Write the fitted normalisation atomically as ``normalize.npz``."""
        self.check_writable()
        atomic_write(self.directory / TRANSFORM, lambda p: p.write_bytes(data))

    def refresh_manifest(self, settings: dict[str, Any]) -> None:
        """Rewrite the manifest's ``faiss`` section as ``settings``, when there is a sound manifest (a
        damaged one is reported by a check, never overwritten here)."""
        if not (self.directory / MANIFEST).exists():
            return
        try:
            manifest = self.read_manifest()
        except MaeError:
            return
        if manifest is not None:
            self.write_manifest(manifest, settings)

    def settle_damage(self, allow_damage: bool) -> None:
        """After an open: refuse to write a damaged folder (unless ``allow_damage``: ``repair`` and
        ``sync`` rebuild it), or warn that a reader serves the sound shards. Then take the dimension
        from the manifest when no shard gave it (a damaged manifest is tolerated with ``allow_damage``:
        repair takes the dimension from ``index.faiss`` or Redis)."""
        if self.damage:
            summary = "; ".join(self.damage)
            if not self.read_only and not allow_damage:
                raise IndexDamagedError(
                    f"the index at {self.directory} is damaged: {summary}. Run `mae-index repair --index "
                    f"{self.directory}` (add --redis-url to recover from Redis too) before writing to it"
                )
            log.warning(
                "the index at %s is damaged: %s. Serving the %d images of the sound shards; run "
                "`mae-index repair --index %s` to rebuild it",
                self.directory, summary, len(self.records), self.directory,
            )  # fmt: skip
        if self.dim is None:
            try:
                manifest = self.read_manifest()
            except IndexDamagedError:
                if not allow_damage:
                    raise
                manifest = None
            if manifest:
                self.expect_dim(manifest["dim"])

    def expect_dim(self, dim: int) -> None:
        """Check that vectors of ``dim`` fit this folder (a new one takes it); :class:`ConfigError` if not."""
        if self.dim is not None and self.dim != dim:
            raise ConfigError(f"index at {self.directory} holds {self.dim}-d vectors, not {dim}-d")
        self.dim = dim

    def release(self) -> None:
        """Let the writers' lock go (a reader holds none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
