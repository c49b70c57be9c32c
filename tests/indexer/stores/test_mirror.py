"""verify/sync through the protocol, with two FAISS stores (the Redis pairing is tested with the Redis store)."""

import numpy as np

from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
from indexer.stores.mirror import sync_mirror, verify_stores


def _fill(store, n=50, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store.add(v, [ImageRecord(id=i, path=f"{i}.tif", well="B03", z=i % 3) for i in range(n)])
    store.write_manifest({"model": {"name": "m"}, "pooling": "mean", "preprocess": {}, "dim": dim})
    store.flush()
    return v


def test_sync_then_verify_passes(tmp_path):
    a = FaissStore(tmp_path / "a", dim=16)
    _fill(a)
    b = FaissStore(tmp_path / "b", dim=16)
    b.add(np.eye(16, dtype=np.float32)[:1], [ImageRecord(id=999, path="stale.tif")])
    assert sync_mirror(a, b, batch=7, allow_shrink=True).copied == 50
    report = verify_stores(a, FaissStore(tmp_path / "b", read_only=True), sample=20)
    assert report.ok, report.to_dict()
    assert report.recall_at_k == 1.0 and report.max_vector_diff == 0.0 and report.sampled == 20
    assert b.get([0])[0] == a.get([0])[0]


def test_verify_reports_each_divergence(tmp_path):
    a = FaissStore(tmp_path / "a", dim=16)
    v = _fill(a)
    b = FaissStore(tmp_path / "b", dim=16)
    sync_mirror(a, b)
    b.delete([3])
    noisy = v[[4]] + 0.01
    b.add(noisy / np.linalg.norm(noisy), [a.get([4])[0]])
    r = verify_stores(a, b, sample=49)
    assert not r.ok
    assert r.missing_in_mirror == [3] and r.missing_in_primary == []
    assert r.count_primary == 50 and r.count_mirror == 49
    assert r.max_vector_diff > 1e-3
    d = r.to_dict()
    assert d["ok"] is False and d["missing_in_mirror_count"] == 1


class _BlindMirror(FaissStore):
    """A real FAISS store whose search finds nothing: an injected failure of the exact mirror."""

    def search(self, queries, k, where=None, max_distance=None):
        return [[] for _ in np.atleast_2d(queries)]


def test_a_mirror_that_finds_nothing_fails_verify(tmp_path):
    # With no exact hits, recall@k is undefined (NaN, the one definition eval uses too), and verify fails:
    # a mirror that answers nothing is broken, not perfect.
    a = FaissStore(tmp_path / "a", dim=16)
    _fill(a)
    assert sync_mirror(a, FaissStore(tmp_path / "b", dim=16)).copied == 50
    report = verify_stores(a, _BlindMirror(tmp_path / "b", read_only=True), sample=10)
    assert np.isnan(report.recall_at_k) and report.sampled == 10 and report.manifest_equal
    assert not report.ok and report.to_dict()["ok"] is False


def test_manifests_compare_by_the_embedding_rule(tmp_path):
    a, b = FaissStore(tmp_path / "a", dim=16), FaissStore(tmp_path / "b", dim=16)
    _fill(a)
    _fill(b)
    assert verify_stores(a, b).manifest_equal
    b.write_manifest({"model": {"name": "m"}, "pooling": "cls", "preprocess": {}, "dim": 16})
    assert not verify_stores(a, b).manifest_equal
