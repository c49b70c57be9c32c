"""A FAISS writer's buffer: rows added and deleted since the last flush, until they become one shard.

:class:`WriteBuffer` holds, in the order given, the vectors and records added and the records deleted
since the last :meth:`~indexer.stores.faiss.store.FaissStore.flush`, and turns them into the table of
one shard (:func:`~indexer.stores.faiss.shards.records_to_table`: the added rows, then a tombstone per
deleted record). A delete then a re-add of one id before a flush keeps the re-add. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexer.core.records import ImageRecord
from indexer.stores.faiss.shards import records_to_table


class WriteBuffer:
    """Rows waiting for the next shard."""

    def __init__(self) -> None:
        self._vectors: list[np.ndarray] = []
        self._records: list[ImageRecord] = []
        self._deletes: list[ImageRecord] = []

    def __bool__(self) -> bool:
        """Whether anything waits (an add or a delete)."""
        return bool(self._records or self._deletes)

    @property
    def has_rows(self) -> bool:
        """Whether added rows wait (their vectors are not in any shard yet)."""
        return bool(self._records)

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Hold added rows; a delete of one of their ids held before is forgotten (the re-add wins)."""
        if self._deletes:
            added = {r.id for r in records}
            self._deletes = [r for r in self._deletes if r.id not in added]
        self._vectors.append(vectors)
        self._records.extend(records)

    def delete(self, record: ImageRecord) -> None:
        """Hold the deletion of ``record`` (a tombstone in the next shard)."""
        self._deletes.append(record)

    def table(self, dim: int):
        """The pyarrow table of the shard these rows make (``None`` when nothing waits)."""
        import pyarrow as pa

        tables = []
        if self._records:
            tables.append(records_to_table(np.concatenate(self._vectors), self._records))
        if self._deletes:
            zeros = np.zeros((len(self._deletes), dim), dtype=np.float32)
            tables.append(records_to_table(zeros, self._deletes, deleted=True))
        return pa.concat_tables(tables) if tables else None

    def clear(self) -> None:
        """Forget every row held (written, or replaced wholesale)."""
        self._vectors, self._records, self._deletes = [], [], []
