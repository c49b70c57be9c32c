"""FAISS-specific behaviour: shards, snapshots, crash recovery. The shared contract is in test_store_contract."""

import json
import os

import numpy as np
import pytest

from indexer.core.errors import StoreUnavailableError
from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import INDEX, INDEX_STATE, SHARDS, FaissStore


def _data(n, dim=16, seed=0, start=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    recs = [
        ImageRecord(id=start + i, path=f"img{start + i}.tif", well="A01", site=1 + i % 2, z=16)
        for i in range(n)
    ]
    return v, recs


def test_each_flush_is_one_atomic_shard_and_reopen_restores(tmp_path):
    s = FaissStore(tmp_path, dim=16)
    v, r = _data(10)
    s.add(v[:5], r[:5])
    s.flush()
    s.add(v[5:], r[5:])
    s.flush()
    assert sorted(p.name for p in (tmp_path / SHARDS).iterdir()) == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert not [p for p in tmp_path.rglob("*.tmp")]
    again = FaissStore(tmp_path, read_only=True)
    assert again.count() == 10
    np.testing.assert_array_equal(again.get_vectors([3, 7]), v[[3, 7]])


def test_unflushed_rows_are_lost_but_flushed_ones_survive_a_crash(tmp_path):
    s = FaissStore(tmp_path, dim=16)
    v, r = _data(10)
    s.add(v[:4], r[:4])
    s.flush()
    s.add(v[4:], r[4:])  # process "dies" here: no flush
    assert FaissStore(tmp_path, read_only=True).count() == 4


def test_stale_or_damaged_snapshot_is_rebuilt_from_shards(tmp_path):
    s = FaissStore(tmp_path, dim=16)
    v, r = _data(6)
    s.add(v, r)
    s.flush()
    (tmp_path / INDEX).write_bytes(b"damaged")
    again = FaissStore(tmp_path)
    assert again.count() == 6 and again.search(v[:1], 1)[0][0].id == 0
    state = json.loads((tmp_path / INDEX_STATE).read_text())
    assert state["ntotal"] == 6
    # a snapshot covering fewer shards than exist is ignored too
    s2 = FaissStore(tmp_path)
    v2, r2 = _data(3, seed=1, start=100)
    s2.add(v2, r2)
    s2.flush()
    (tmp_path / INDEX_STATE).write_text(json.dumps({"shards": ["part-000000.parquet"], "ntotal": 6}))
    assert FaissStore(tmp_path, read_only=True).count() == 9


def test_delete_and_compact(tmp_path):
    s = FaissStore(tmp_path, dim=16)
    v, r = _data(8)
    s.add(v, r)
    s.flush()
    assert s.delete([1, 2, 999]) == 2
    s.flush()
    assert FaissStore(tmp_path, read_only=True).count() == 6
    s.compact()
    assert len(os.listdir(tmp_path / SHARDS)) == 1
    again = FaissStore(tmp_path, read_only=True)
    assert again.ids().tolist() == [0, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(again.get_vectors([5]), v[[5]])


def test_read_only_and_missing_index(tmp_path):
    with pytest.raises(StoreUnavailableError, match="mae-index build"):
        FaissStore(tmp_path / "none", read_only=True)
    s = FaissStore(tmp_path, dim=16)
    v, r = _data(2)
    s.add(v, r)
    s.flush()
    ro = FaissStore(tmp_path, read_only=True)
    with pytest.raises(StoreUnavailableError, match="read-only"):
        ro.add(v, r)


def test_temp_files_of_a_killed_writer_are_removed_on_open(tmp_path):
    s = FaissStore(tmp_path, dim=16)
    v, r = _data(3)
    s.add(v, r)
    s.flush()
    (tmp_path / SHARDS / ".part-000001.parquet.abc.tmp").write_bytes(b"half a shard")
    (tmp_path / ".index.faiss.xyz.tmp").write_bytes(b"half an index")
    assert FaissStore(tmp_path).count() == 3
    assert not list(tmp_path.rglob("*.tmp"))
