"""One contract, both stores: FAISS and Redis must behave the same through the VectorStore protocol."""

from dataclasses import replace

import numpy as np
import pytest

from indexer.stores.base import ImageRecord, MetadataFilter, VectorStore
from indexer.stores.faiss_store import FaissStore

DIM = 32


@pytest.fixture(params=["faiss", "redis"])
def make_store(request, tmp_path):
    def make(dim=DIM):
        if request.param == "faiss":
            return FaissStore(tmp_path / "idx", dim=dim)
        from indexer.stores.redis_store import RedisStore

        return RedisStore(request.getfixturevalue("redis_config"), dim=dim)

    return make


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    recs = [ImageRecord(id=1000 + i, path=f"/d/img {i}.tif", plate="P1" if i % 4 else "P2", well=["A01", "B02", "C03"][i % 3],
                        row="ABC"[i % 3], column=1 + i % 3, site=1 + i % 2, channel=("w1", "w2")[i % 2], z=i % 5)
            for i in range(n)]  # fmt: skip
    return v, recs


def test_round_trip_upsert_delete(make_store):
    s = make_store()
    assert isinstance(s, VectorStore)
    v, r = _data()
    s.add(v, r)
    assert s.count() == 60 and s.ids().tolist() == [1000 + i for i in range(60)]
    assert s.get([1005, 42]) == [r[5], None]
    np.testing.assert_allclose(s.get_vectors([1005, 1010]), v[[5, 10]], atol=1e-6)
    cleared = replace(r[5], well=None, row=None, z=None)
    s.add(-v[5:6], [cleared])
    assert s.get([1005])[0] == cleared and s.count() == 60
    np.testing.assert_allclose(s.get_vectors([1005]), -v[5:6], atol=1e-6)
    assert s.delete([1001, 1002, 7]) == 2 and s.count() == 58
    with pytest.raises(KeyError):
        s.get_vectors([1001])


def test_search_scores_filters_k_and_distance(make_store):
    s = make_store()
    v, r = _data()
    s.add(v, r)
    (hits,) = s.search(v[:1], 5)
    assert hits[0].id == 1000 and hits[0].score >= 0.999 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert len(s.search(v[:1], 500)[0]) == 60
    cases = [MetadataFilter(well=["b2"]), MetadataFilter(site=[2], z=[1, 3]), MetadataFilter(channel=["w1"], plate=["P2"]),
             MetadataFilter(z_min=1, z_max=2), MetadataFilter(column=[3], row=["C"]), MetadataFilter(),
             MetadataFilter(path=["/d/img 7.tif"])]  # fmt: skip
    for where in cases:
        (hits,) = s.search(v[3:4], 100, where)
        expected = sorted(x.id for x in r if where.matches(x))
        assert sorted(h.id for h in hits) == expected, where
    (hits,) = s.search(v[:1], 100, max_distance=0.8)
    assert hits and all(1 - h.score <= 0.8 + 1e-6 for h in hits)
    sims = v @ v[0]
    assert len(hits) == int((1 - sims <= 0.8).sum())


def test_ties_break_by_id_and_manifest(make_store):
    s = make_store()
    v = np.tile(np.eye(DIM, dtype=np.float32)[:1], (6, 1))
    s.add(v, [ImageRecord(id=i, path=f"{i}") for i in (50, 10, 40, 20, 30, 60)])
    assert [h.id for h in s.search(v[:1], 4)[0]] == [10, 20, 30, 40]
    assert s.read_manifest() is None
    s.write_manifest({"dim": DIM, "model": {"name": "m"}})
    assert s.read_manifest() == {"dim": DIM, "model": {"name": "m"}}


@pytest.mark.redis
def test_redis_and_faiss_agree_on_every_top10(tmp_path, redis_config):
    from indexer.stores.redis_store import RedisStore

    rng = np.random.default_rng(5)
    v = rng.normal(size=(300, 64)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    recs = [ImageRecord(id=int(i), path=f"{i}.tif", well=f"A{1 + i % 12:02d}", site=1 + i % 2, z=int(i % 7))
            for i in rng.permutation(10**6)[:300]]  # fmt: skip
    f = FaissStore(tmp_path / "f", dim=64)
    r = RedisStore(redis_config, dim=64)
    f.add(v, recs)
    r.add(v, recs)
    queries = rng.normal(size=(50, 64)).astype(np.float32)
    for where in (None, MetadataFilter(site=[1]), MetadataFilter(well=["A03", "A07"], z_min=2)):
        for a, b in zip(f.search(queries, 10, where), r.search(queries, 10, where)):
            assert [h.id for h in a] == [h.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
