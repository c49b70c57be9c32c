"""Writing embedded batches to the stores: one writer thread with back-pressure, shared by both engines.

The local engine queues each embedded batch here as the model produces it; the Ray engine's driver
queues the vectors it staged (a ``--normalize`` build) through the same writer, so both write through
:func:`indexer.ingest.plan.write_batch` with the same checkpoints. :func:`queue_vectors` is the one place
a fitted ``--normalize`` transform is applied on the way to the writer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from indexer.core.records import ImageRecord
from indexer.ingest.plan import write_batch
from indexer.stores.base import VectorStore
from indexer.vectors.normalize import EmbeddingTransform

#: Batches that may wait for the writer thread before :meth:`StoreWriter.put` blocks.
QUEUED_BATCHES = 4


class StoreWriter:
    """Writes batches to every store on its own thread, so store I/O overlaps the next forward pass.

    ``held``: per store, the ids it may hold (:attr:`indexer.ingest.plan.Plan.held`): those are upserted,
    the rest bulk-loaded. Every ``flush_every`` images each store is flushed (a durable checkpoint), then
    ``after_checkpoint`` is called on the writer thread.
    """

    def __init__(
        self,
        stores: Sequence[VectorStore],
        flush_every: int,
        held: Sequence[frozenset[int] | None] = (),
        after_checkpoint: Callable[[], object] | None = None,
    ) -> None:
        self.stores = stores
        self.after_checkpoint = after_checkpoint
        self.held = list(held) + [None] * (len(stores) - len(held))
        self.flush_every = flush_every
        self.seconds = 0.0
        self.written = 0
        self._since_flush = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mae-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is not None:
                continue
            vectors, records = job
            t0 = time.perf_counter()
            try:
                for store, held in zip(self.stores, self.held):
                    write_batch(store, held, vectors, records)
                self.written += len(records)
                self._since_flush += len(records)
                if self._since_flush >= self.flush_every:
                    for store in self.stores:
                        store.flush()
                    self._since_flush = 0
                    if self.after_checkpoint is not None:
                        self.after_checkpoint()
            except BaseException as e:  # surfaced in the caller's thread by put()/close()
                self._error = e
            self.seconds += time.perf_counter() - t0

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, vectors: np.ndarray, records: list[ImageRecord]) -> None:
        """Queue a batch (blocks while ``QUEUED_BATCHES`` wait: back-pressure keeps memory bounded).

        Raises
        ------
        BaseException
            The error a store raised while writing an earlier batch.
        """
        self._raise()
        self._queue.put((vectors, records))

    def close(self) -> None:
        """Write what is queued, flush every store, and re-raise a write error.

        Raises
        ------
        BaseException
            The error a store raised while writing a queued batch.
        """
        self._queue.put(None)
        self._thread.join()
        self._raise()
        t0 = time.perf_counter()
        for store in self.stores:
            store.flush()
        self.seconds += time.perf_counter() - t0


def queue_vectors(
    writer: StoreWriter,
    vectors: np.ndarray,
    records: Sequence[ImageRecord],
    transform: EmbeddingTransform | None,
    batch_size: int | None = None,
) -> None:
    """Apply the index's fitted ``--normalize`` transform (``None``: none) to ``vectors`` and queue them,
    with their ``records``, on ``writer`` in batches of ``batch_size`` (``None``: one batch).

    Each batch is transformed just before it is queued, so a whole staged set never exists twice in
    memory (raw and transformed).

    Raises
    ------
    ConfigError
        The transform was fitted on vectors of another dimension.
    """
    step = batch_size or max(1, len(records))
    for start in range(0, len(records), step):
        chunk = vectors[start : start + step]
        writer.put(
            chunk if transform is None else transform.apply(chunk), list(records[start : start + step])
        )
