"""The FAISS folder's write path: buffered adds and deletes, shards, the state file, the snapshot.

:class:`WriteMixin` holds the :class:`~indexer.stores.faiss.store.FaissStore` methods that change a
folder. Adds and deletes change the records (and a Flat index) at once and are buffered; :meth:`flush`
makes them durable as one new shard (:mod:`indexer.stores.faiss.shards`) and records it in
``index.state.json`` (:mod:`indexer.stores.faiss.state`). ``index.faiss`` is written with the state
file only when a writer finalizes, so a checkpoint costs the new rows, not the whole index. A full
disk is a :class:`StoreFullError` that says what was kept; the shards written before stay whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from indexer.core.atomic import atomic_write
from indexer.core.errors import ConfigError, StoreFullError
from indexer.core.records import ImageRecord
from indexer.stores.base import check_batch, check_storable
from indexer.stores.faiss.kinds import new_index
from indexer.stores.faiss.rerank import reranks
from indexer.stores.faiss.search import UNTRIED, load_faiss
from indexer.stores.faiss.shards import SHARDS, describe_shard, disk_full, records_to_table, write_shard
from indexer.stores.faiss.state import INDEX, state_document, write_state
from indexer.stores.record_table import RecordTable

# The store's own logger: these messages are the store's, wherever its methods are written.
log = logging.getLogger("indexer.stores.faiss.store")


class WriteMixin:
    """:class:`~indexer.stores.faiss.store.FaissStore`'s write methods (a mixin of that class only: they
    use its records, pending buffers, ``_where``, ``_shard_info``, index and snapshot bookkeeping)."""

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
        present = ids[self._records.contains(ids)]
        self._remove(present)
        if self._index is not None:
            if self._defer_index and self._kind.exact:
                self._index = None  # a snapshot loaded on open: rebuilt from the shards on close
            else:
                self._index.add_with_ids(vectors, ids)
        self._gpu_index = UNTRIED
        self._changed = True
        self._rerank.invalidate()
        self._records.put(records)
        if self._pending_deletes:  # a delete then a re-add before one flush: the re-add wins
            added = set(ids.tolist())
            self._pending_deletes = [r for r in self._pending_deletes if r.id not in added]
        self._pending_vectors.append(vectors)
        self._pending_records.extend(records)

    def bulk_load(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Add records whose ids are not stored yet: :meth:`add` (it already buffers until :meth:`flush`;
        its check for a stored id is one dict lookup per id)."""
        self.add(vectors, records)

    def delete(self, ids: Sequence[int]) -> int:
        """Delete ids; return how many were present (durable at the next :meth:`flush`)."""
        self._check_writable()
        present = [i for i in sorted({int(i) for i in ids}) if i in self._records]
        if not present:
            return 0
        self._remove(np.array(present, dtype=np.int64))
        self._gpu_index = UNTRIED
        self._changed = True
        self._rerank.invalidate()
        for i in present:
            self._pending_deletes.append(self._records.pop(i))
        return len(present)

    def _write_shard(self, table) -> str:
        """Write ``table`` as the next shard (:func:`~indexer.stores.faiss.shards.write_shard`), record
        its size, rows and checksum, and point each of its records at its row; return the shard's name.

        Raises
        ------
        StoreFullError
            The disk is full; no shard was added.
        """
        try:
            info = write_shard(self.directory, table)
        except (OSError, RuntimeError) as e:
            if disk_full(e):
                raise StoreFullError(
                    f"the disk holding {self.directory} is full: {table.num_rows} rows could not be "
                    f"written. The index keeps the {self._durable} images written before; free some "
                    "space and run the same command again to add the rest"
                ) from e
            raise
        self._shard_info[info.name] = info
        ids = table.column("id").to_numpy()
        deleted = table.column("deleted").to_numpy(zero_copy_only=False)
        self._records.place(info.name, ids, deleted)
        return info.name

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
        faiss = load_faiss()
        names = [p.name for p in self._shard_paths()]
        for name in names:
            if name not in self._shard_info:  # written by a crashed writer after our open: describe it
                self._shard_info[name] = describe_shard(self.directory / SHARDS / name)
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
            document = state_document(
                [self._shard_info[n] for n in names],
                self._snap_names,
                self._snap_kind,
                self._faiss_section,
                self._snap_rerank,
                len(self._records),
            )
            write_state(self.directory, document)
        except (OSError, RuntimeError) as e:
            if not disk_full(e):
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
        self._records = RecordTable(records)
        if len(records):
            self._write_shard(records_to_table(vectors, records))
        index = None
        if self.dim is not None and self._incremental and len(records):
            index = new_index(self._kind, self.dim)
            index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.array([r.id for r in records], dtype=np.int64),
            )
        self._index, self._gpu_index = index, UNTRIED
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
