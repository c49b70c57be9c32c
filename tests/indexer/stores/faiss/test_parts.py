"""The FAISS store's parts, each on its own: a :class:`WriteBuffer`, a :class:`ShardFolder` (no FAISS),
and a :class:`SearchIndex` built from ``(ids, vectors)`` (no folder)."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.core.records import ImageRecord
from indexer.stores.faiss.folder import ShardFolder
from indexer.stores.faiss.index import SearchIndex
from indexer.stores.faiss.writes import WriteBuffer


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


RECS = [ImageRecord(id=i, path=f"{i}.tif", site=1 + i % 2) for i in range(6)]


def test_a_write_buffer_makes_one_shard_and_a_re_add_beats_a_delete():
    v = unit(6, 4)
    buf = WriteBuffer()
    assert not buf and buf.table(4) is None
    buf.delete(RECS[1])
    buf.add(v[:3], RECS[:3])  # re-adds 1: its pending delete goes
    buf.delete(RECS[5])
    table = buf.table(4)
    assert table.column("id").to_pylist() == [0, 1, 2, 5]
    assert table.column("deleted").to_pylist() == [False, False, False, True]
    assert buf and buf.has_rows
    buf.clear()
    assert not buf and buf.table(4) is None


def test_a_shard_folder_writes_reads_and_checks_its_shards(tmp_path):
    v = unit(6, 4)
    folder = ShardFolder(tmp_path / "f", dim=4)
    buf = WriteBuffer()
    buf.add(v, RECS)
    folder.records.put(RECS)
    assert folder.write_shard(buf.table(4)) == "part-000000.parquet" and folder.durable == 6
    folder.write_state({"index": "Flat"})
    folder.release()

    again = ShardFolder(tmp_path / "f", read_only=True)
    opened = again.read_shards(again.read_state())
    assert opened.shards == ["part-000000.parquet"] and not opened.covered and again.dim == 4
    assert again.ids().tolist() == list(range(6)) and again.damage == []
    [(ids, vectors)] = list(again.live_parts())
    assert ids.tolist() == list(range(6)) and np.array_equal(vectors, v)
    assert np.array_equal(again.vectors([4, 1]), v[[4, 1]])
    assert again.checksum_problems() == [] and again.read_manifest() is None
    with pytest.raises(Exception, match="read-only"):
        again.check_writable()
    # A truncated shard is damage an open notes (and serves none of its rows).
    shard = tmp_path / "f" / "shards" / "part-000000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    damaged = ShardFolder(tmp_path / "f", read_only=True)
    damaged.read_shards(damaged.read_state())
    assert len(damaged.records) == 0 and "truncated" in damaged.damage[0]


def test_a_search_index_from_arrays_trains_searches_filters_and_reranks():
    v = unit(400, 16, seed=3)
    ids = np.arange(1000, 1400, dtype=np.int64)
    index = SearchIndex.from_vectors("IVF4,PQ4", ids, v)
    try:
        assert index.ntotal == 400 and index.trained_on == 400 and index.kind.pq_m == 4
        settings = {"nprobe": 4, "rerank": 16}
        scores, got = index.search(v[:5], 3, None, 400, settings)
        # Re-ranked with the float16 vectors: each stored vector finds itself first, at score ~1.
        assert got[:, 0].tolist() == ids[:5].tolist() and np.allclose(scores[:, 0], 1.0, atol=2e-3)
        allowed = ids[10:20]
        _, only = index.search(v[:2], 3, allowed, 400, settings)
        assert set(only.ravel().tolist()) <= set(allowed.tolist())
        index.remove(ids[:1])
        assert index.ntotal == 399 and index.search(v[:1], 1, None, 399, settings)[1][0, 0] != ids[0]
    finally:
        index.close()
