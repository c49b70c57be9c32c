"""The writer both engines share (indexer.ingest.writer), on a real FAISS folder."""

import numpy as np
import pytest

from indexer.core.records import ImageRecord
from indexer.ingest.writer import StoreWriter, queue_vectors
from indexer.stores.faiss.store import FaissStore
from indexer.vectors.normalize import fit_transform


def _batch(n=7, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors, [ImageRecord(id=100 + i, path=f"img{i}.tif", site=1 + i % 2) for i in range(n)]


class _Counting(FaissStore):
    """A real FAISS folder that counts the batches it is given (what the writer queued)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def add(self, vectors, records):
        self.batches.append(len(records))
        super().add(vectors, records)


@pytest.mark.parametrize("kind", ["none", "center", "whiten"])
def test_queue_vectors_writes_the_transformed_vectors_in_batches(tmp_path, kind):
    vectors, records = _batch()
    transform = fit_transform(vectors, kind, 1e-6)
    store = _Counting(tmp_path / "idx", dim=8)
    writer = StoreWriter([store], flush_every=1000)
    queue_vectors(writer, vectors, records, transform, batch_size=3)
    writer.close()
    assert store.batches == [3, 3, 1] and writer.written == 7
    ids = np.array([r.id for r in records])
    expected = vectors if transform is None else transform.apply(vectors)
    np.testing.assert_allclose(store.get_vectors(ids), expected, atol=1e-6)
    assert store.get(ids.tolist()) == records
    if transform is not None:  # unit vectors, not the raw ones
        np.testing.assert_allclose(np.linalg.norm(store.get_vectors(ids), axis=1), 1.0, atol=1e-5)
        assert not np.allclose(store.get_vectors(ids), vectors, atol=1e-2)
    store.close()


def test_queue_vectors_without_a_batch_size_queues_one_batch(tmp_path):
    vectors, records = _batch(n=5)
    store = _Counting(tmp_path / "idx", dim=8)
    writer = StoreWriter([store], flush_every=1000)
    queue_vectors(writer, vectors, records, None)
    writer.close()
    assert store.batches == [5] and store.count() == 5
    store.close()


def test_a_store_error_on_the_writer_thread_is_raised_by_close(tmp_path):
    vectors, records = _batch(n=4)

    class Failing(_Counting):
        def add(self, vectors, records):
            raise RuntimeError("injected: the store failed")

    store = Failing(tmp_path / "idx", dim=8)
    writer = StoreWriter([store], flush_every=1000)
    queue_vectors(writer, vectors, records, None, batch_size=2)
    with pytest.raises(RuntimeError, match="injected"):
        writer.close()
    assert store.count() == 0 and writer.written == 0
    store.close()
