"""One contract, both stores: FAISS and Redis must behave the same through the VectorStore protocol.

Every test here runs on a FaissStore in a tmp folder and on a RedisStore (a unique index on the session's
real Redis Stack server); the last one checks that both give the same top-10 on the same data.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from indexer.core.errors import ConfigError
from indexer.core.records import ImageRecord, MetadataFilter
from indexer.stores.base import VectorStore
from indexer.stores.faiss.store import FaissStore

DIM = 32
N = 60


@pytest.fixture(params=["faiss", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request, tmp_path):
    """``make(dim)`` opens the test's store; called again (``dim=None``) it reopens the same index."""

    def make(dim: int | None = DIM):
        if request.param == "faiss":
            return FaissStore(tmp_path / "idx", dim=dim)
        from indexer.stores.redis.store import RedisStore

        return RedisStore(request.getfixturevalue("redis_config"), dim=dim)

    return make


@pytest.fixture
def store(make_store):
    s = make_store()
    yield s
    s.close()


def _unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _records(n: int = N) -> list[ImageRecord]:
    # Every field varies, and every optional field is None somewhere (None matches no filter).
    return [
        ImageRecord(
            id=1000 + i,
            path=f"/data/plate {i % 4}/img_{i}.tif",
            plate=None if i % 11 == 0 else ("P1" if i % 4 else "P2"),
            well=None if i % 13 == 0 else ["A01", "B02", "C03"][i % 3],
            row=None if i % 13 == 0 else "ABC"[i % 3],
            column=None if i % 13 == 0 else 1 + i % 3,
            site=None if i % 7 == 0 else 1 + i % 2,
            channel=("w1", "w2")[i % 2],
            z=None if i % 9 == 0 else i % 5,
        )
        for i in range(n)
    ]


@pytest.fixture
def loaded(store):
    v, recs = _unit(N), _records()
    store.add(v, recs)
    return store, v, recs


def test_an_empty_store(store):
    assert isinstance(store, VectorStore)
    assert store.count() == 0
    assert store.ids().dtype == np.int64 and store.ids().size == 0
    assert store.get([1, 2]) == [None, None]
    assert store.search(_unit(2), 5) == [[], []]
    assert store.read_manifest() is None


def test_add_get_and_get_vectors_round_trip(loaded):
    s, v, recs = loaded
    assert s.count() == N
    ids = s.ids()
    assert ids.dtype == np.int64 and ids.tolist() == sorted(r.id for r in recs)
    assert s.get([r.id for r in recs]) == recs
    assert s.get([1005, 42, 1000]) == [recs[5], None, recs[0]]
    got = s.get_vectors([1010, 1005])
    assert got.dtype == np.float32 and got.shape == (2, DIM)
    np.testing.assert_allclose(got, v[[10, 5]], atol=1e-6)
    with pytest.raises(KeyError):
        s.get_vectors([1005, 42])


def test_upsert_replaces_the_vector_and_clears_fields_set_to_none(loaded):
    s, v, recs = loaded
    changed = replace(recs[5], path="/moved.tif", well=None, row=None, column=None, site=None, z=None)
    s.add(-v[5:6], [changed])
    assert s.count() == N
    assert s.get([1005]) == [changed]
    np.testing.assert_allclose(s.get_vectors([1005]), -v[5:6], atol=1e-6)
    # The cleared fields no longer match the filters they matched before.
    for where in (MetadataFilter(well=[recs[5].well]), MetadataFilter(site=[recs[5].site]),
                  MetadataFilter(z_min=0)):  # fmt: skip
        (hits,) = s.search(v[5:6], N, where)
        assert 1005 not in [h.id for h in hits]
    (hits,) = s.search(-v[5:6], 1, MetadataFilter(path=["/moved.tif"]))
    assert [h.id for h in hits] == [1005] and hits[0].score >= 0.999


def test_delete_returns_how_many_were_present(loaded):
    s, v, recs = loaded
    assert s.delete([1001, 1002, 7, 99999]) == 2
    assert s.delete([1001]) == 0
    assert s.delete([]) == 0
    assert s.count() == N - 2
    assert 1001 not in s.ids().tolist() and 1002 not in s.ids().tolist()
    assert s.get([1001]) == [None]
    with pytest.raises(KeyError):
        s.get_vectors([1001])
    (hits,) = s.search(v[1:2], N)
    assert {1001, 1002}.isdisjoint(h.id for h in hits) and len(hits) == N - 2


def test_add_refuses_bad_input(store):
    v = _unit(3)
    with pytest.raises(ValueError, match="duplicate"):
        store.add(v[:2], [ImageRecord(id=1, path="a"), ImageRecord(id=1, path="b")])
    with pytest.raises(ValueError):
        store.add(v, [ImageRecord(id=1, path="a")])
    store.add(v[:1], [ImageRecord(id=1, path="a")])
    with pytest.raises(ConfigError):
        store.add(_unit(1, DIM + 1), [ImageRecord(id=2, path="b")])
    with pytest.raises(ConfigError):
        store.search(_unit(1, DIM + 1), 1)
    with pytest.raises(ConfigError):
        store.search(v[:1], 0)


FILTERS = {
    "plate": MetadataFilter(plate=["P2"]),
    "well": MetadataFilter(well=["b2"]),  # normalised to B02
    "row": MetadataFilter(row=["c"]),
    "column": MetadataFilter(column=[3]),
    "site": MetadataFilter(site=[2]),
    "channel": MetadataFilter(channel=["1"]),  # normalised to w1
    "z": MetadataFilter(z=[0]),
    "path": MetadataFilter(path=["/data/plate 3/img_7.tif"]),
    "or-within-a-field": MetadataFilter(well=["A01", "C03"]),
    "or-numeric": MetadataFilter(z=[1, 3, 4]),
    "and-across-fields": MetadataFilter(plate=["P1"], site=[1], channel=["w2"]),
    "and-with-or": MetadataFilter(well=["A01", "B02"], z=[0, 2]),
    "z-min": MetadataFilter(z_min=3),
    "z-max": MetadataFilter(z_max=1),
    "z-range": MetadataFilter(z_min=1, z_max=2),
    "z-range-and-tags": MetadataFilter(z_min=1, z_max=3, row=["A", "B"]),
    "empty": MetadataFilter(),
    "matches-nothing": MetadataFilter(plate=["P3"]),
    "contradiction": MetadataFilter(z=[0], z_min=1),
}


@pytest.mark.parametrize("name", FILTERS)
def test_filters_match_the_reference_semantics(loaded, name):
    s, v, recs = loaded
    where = FILTERS[name]
    expected = sorted(r.id for r in recs if where.matches(r))
    (hits,) = s.search(v[3:4], N, where)
    assert sorted(h.id for h in hits) == expected
    assert all(where.matches(h.record) for h in hits)
    # With a small k, the filtered top-k is the exact top-k among the matching records.
    sims = v @ v[3]
    top = sorted(expected, key=lambda i: (-sims[i - 1000], i))[:4]
    assert [h.id for h in s.search(v[3:4], 4, where)[0]] == top


def test_none_where_is_the_empty_filter(loaded):
    s, v, _ = loaded
    assert [h.id for h in s.search(v[:1], 10)[0]] == [h.id for h in s.search(v[:1], 10, MetadataFilter())[0]]


def test_k_larger_than_the_store_returns_what_exists(loaded):
    s, v, recs = loaded
    (hits,) = s.search(v[:1], 10 * N)
    assert len(hits) == N and [h.rank for h in hits] == list(range(1, N + 1))
    (hits,) = s.search(v[:1], 10 * N, MetadataFilter(plate=["P2"]))
    assert len(hits) == sum(r.plate == "P2" for r in recs)


def test_scores_are_cosine_similarity_in_descending_order(loaded):
    s, v, _ = loaded
    results = s.search(v[:5], 10)
    for q, hits in enumerate(results):
        assert hits[0].id == 1000 + q and hits[0].score >= 0.999
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        for h in hits:
            assert isinstance(h.score, float)
            assert h.score == pytest.approx(float(v[h.id - 1000] @ v[q]), abs=1e-5)
    # An unnormalised query gives the same cosine scores.
    (scaled,) = s.search(3.0 * v[:1], 10)
    assert [h.id for h in scaled] == [h.id for h in results[0]]
    np.testing.assert_allclose([h.score for h in scaled], [h.score for h in results[0]], atol=1e-5)


def test_max_distance_keeps_the_hits_within_the_bound(loaded):
    s, v, recs = loaded
    dist = 1.0 - v @ v[0]
    for bound in (0.0, 0.6, 0.9, 1.1):
        (hits,) = s.search(v[:1], N, max_distance=bound)
        assert sorted(h.id for h in hits) == sorted(1000 + i for i in np.flatnonzero(dist <= bound))
        assert all(1.0 - h.score <= bound + 1e-6 for h in hits)
    # Up to k hits: the bound filters the top k, it does not widen it.
    (hits,) = s.search(v[:1], 3, max_distance=1.1)
    assert [h.id for h in hits] == [1000 + i for i in np.argsort(dist, kind="stable")[:3]]
    where = MetadataFilter(channel=["w1"])
    (hits,) = s.search(v[:1], N, where, max_distance=0.9)
    assert sorted(h.id for h in hits) == sorted(
        r.id for r in recs if where.matches(r) and dist[r.id - 1000] <= 0.9
    )


def test_ties_break_by_id(store):
    e = np.eye(DIM, dtype=np.float32)
    v = np.concatenate([np.tile(e[:1], (6, 1)), e[1:3]])
    store.add(v, [ImageRecord(id=i, path=str(i)) for i in (50, 10, 40, 20, 30, 60, 5, 1)])
    (hits,) = store.search(e[:1], 4)
    assert [h.id for h in hits] == [10, 20, 30, 40] and [h.rank for h in hits] == [1, 2, 3, 4]
    assert all(h.score == pytest.approx(1.0, abs=1e-6) for h in hits)
    (hits,) = store.search(e[:1], 8)
    assert [h.id for h in hits] == [10, 20, 30, 40, 50, 60, 1, 5]


def test_manifest_round_trip(store):
    assert store.read_manifest() is None
    manifest = {"format": 1, "dim": DIM, "model": {"name": "mäe/tiny 板", "fingerprint": None}, "pooling": "mean",
                "preprocess": {"image_size": [64, 64], "window": [0.0, 4095.0]}}  # fmt: skip
    store.write_manifest(manifest)
    assert store.read_manifest() == manifest
    store.write_manifest({**manifest, "dim": 8})
    assert store.read_manifest()["dim"] == 8


def test_a_reopened_store_holds_the_same_index(make_store):
    first = make_store()
    v, recs = _unit(N), _records()
    first.add(v, recs)
    manifest = {"dim": DIM, "model": {"name": "m"}, "pooling": "mean", "preprocess": {}}
    first.write_manifest(manifest)
    first.flush()
    first.close()
    again = make_store(None)
    assert again.count() == N and again.read_manifest() == manifest
    assert again.get([1007]) == [recs[7]]
    assert [h.id for h in again.search(v[7:8], 3)[0]][0] == 1007
    again.close()


@pytest.mark.redis
def test_redis_and_faiss_return_the_same_top10_on_a_flat_index(tmp_path, redis_config):
    from indexer.stores.redis.store import RedisStore

    rng = np.random.default_rng(5)
    v = _unit(300, 64, seed=6)
    ids = rng.choice(2**62, size=300, replace=False)  # ids as large as real content hashes
    recs = [
        ImageRecord(
            id=int(i),
            path=f"/d/{i}.tif",
            plate=f"P{rng.integers(3)}",
            well=f"{'ABC'[j % 3]}{1 + j % 12:02d}",
            row="ABC"[j % 3],
            column=1 + j % 12,
            site=int(rng.integers(1, 3)),
            channel=f"w{rng.integers(1, 3)}",
            z=int(rng.integers(0, 7)) if j % 10 else None,
        )
        for j, i in enumerate(ids)
    ]
    faiss_store = FaissStore(tmp_path / "f", dim=64)
    redis_store = RedisStore(redis_config, dim=64)
    assert redis_store.config.algorithm == "FLAT"
    faiss_store.add(v, recs)
    redis_store.add(v, recs)
    queries = np.concatenate([rng.normal(size=(45, 64)).astype(np.float32), v[:5]])
    filters = [
        None,
        MetadataFilter(site=[1]),
        MetadataFilter(well=["A01", "B05", "C09"]),
        MetadataFilter(plate=["P0", "P2"], channel=["w1"], z_min=2),
        MetadataFilter(z_max=3, row=["B"]),
    ]
    for where in filters:
        a_all = faiss_store.search(queries, 10, where)
        b_all = redis_store.search(queries, 10, where)
        assert len(a_all) == len(b_all) == 50
        for a, b in zip(a_all, b_all):
            assert [h.id for h in a] == [h.id for h in b], where
            assert [h.record for h in a] == [h.record for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert redis_store.ids().tolist() == faiss_store.ids().tolist()
    np.testing.assert_allclose(
        redis_store.get_vectors(ids[:20]), faiss_store.get_vectors(ids[:20]), atol=1e-7
    )


def test_field_values_are_the_distinct_values_held(store):
    records = _records()
    store.add(_unit(N), records)
    for name in ("plate", "well", "row", "column", "site", "channel", "z"):
        expected = sorted({getattr(r, name) for r in records if getattr(r, name) is not None})
        assert store.field_values(name) == expected, name
    store.delete([r.id for r in records if r.channel == "w1"])
    assert store.field_values("channel") == ["w2"]


def test_tags_are_stored_returned_and_filtered_alike(store):
    v = _unit(6)
    records = [
        ImageRecord(id=1, path="a", tags={"treatment": "drug A", "cells": "U2OS"}),
        ImageRecord(id=2, path="b", tags={"treatment": "drug B", "cells": "U2OS"}),
        ImageRecord(id=3, path="c", tags={"treatment": "dmso", "cells": "HeLa"}),
        ImageRecord(id=4, path="d", tags={"treatment": "x=y {z} | w", "cells": "HeLa"}),
        ImageRecord(id=5, path="e"),
        ImageRecord(id=6, path="f", tags={"treatment": "drug A"}),
    ]
    store.add(v, records)
    assert store.get([1, 5]) == [records[0], records[4]]
    assert store.get([1])[0].to_dict()["tags"] == {"cells": "U2OS", "treatment": "drug A"}

    def ids(*tags):
        (hits,) = store.search(v[:1], 10, MetadataFilter(tags=tags))
        return sorted(h.id for h in hits)

    assert ids("treatment=drug A") == [1, 6]
    assert ids("treatment=drug A", "treatment=dmso") == [1, 3, 6]  # OR within a key
    assert ids("treatment=drug A", "cells=U2OS") == [1]  # AND across keys
    assert ids("treatment=x=y {z} | w") == [4]  # any value, matched exactly
    assert ids("cells=u2os") == []
    assert store.field_values("tags") == sorted(
        [
            "cells=HeLa",
            "cells=U2OS",
            "treatment=dmso",
            "treatment=drug A",
            "treatment=drug B",
            "treatment=x=y {z} | w",
        ]  # fmt: skip
    )


def test_bulk_load_of_new_ids_is_read_back_at_once_as_add_stores_them(store):
    # Redis holds fewer than a pipeline's worth of bulk-loaded hashes back; a read must still see them.
    v, recs = _unit(N), _records()
    store.bulk_load(v[:7], recs[:7])
    assert store.count() == 7 and store.get([r.id for r in recs[:7]]) == recs[:7]
    store.bulk_load(v[7:], recs[7:])
    store.delete([recs[0].id])
    assert store.count() == N - 1 and store.get([recs[0].id]) == [None]
    np.testing.assert_allclose(store.get_vectors([recs[-1].id]), v[-1:], atol=store.vector_tolerance)
    store.flush()
    assert [h[0].id for h in store.search(v[1:4], 1)] == [r.id for r in recs[1:4]]
