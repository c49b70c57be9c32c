"""The FAISS folder's pure seams: the state document, the open-time damage rules, the exact top-k merge
and which shard row holds an id's current vector. Offline, no folder and no FAISS."""

import json

import numpy as np

from indexer.stores.faiss.exact import exact_top_k
from indexer.stores.faiss.shards import ShardInfo
from indexer.stores.faiss.state import (
    INDEX,
    INDEX_STATE,
    STATE_FORMAT,
    open_problems,
    parse_state,
    snapshot_covers,
    state_document,
)

A = ShardInfo("part-000000.parquet", 1200, 10, "ab" * 32)
B = ShardInfo("part-000001.parquet", 800, 4, None)


def test_state_document_round_trips_through_json():
    faiss = {"index": "IVF16,PQ8", "nprobe": 4}
    rerank = {"count": 14, "last_shard": B.name}
    doc = state_document([A, B], [A.name], "IVF16,PQ8", faiss, rerank, ntotal=14)
    assert doc["format"] == STATE_FORMAT == 3 and doc["ntotal"] == 14
    folder = parse_state(json.loads(json.dumps(doc)))
    assert folder.shards == {A.name: A, B.name: B}
    assert folder.snapshot_shards == [A.name] and folder.snapshot_kind == "IVF16,PQ8"
    assert folder.faiss == faiss and folder.rerank == rerank
    # No re-rank file: no key at all (the format older readers expect).
    assert "rerank" not in state_document([A], [A.name], "Flat", {}, {}, ntotal=10)["snapshot"]


def test_older_formats_mean_a_flat_snapshot_of_every_listed_shard():
    v1 = parse_state({"shards": [A.name, B.name]})  # names only, no sizes
    assert v1.shards == {} and v1.snapshot_shards == [A.name, B.name] and v1.snapshot_kind == "Flat"
    v2 = parse_state({"format": 2, "shards": [A.to_dict(), B.to_dict()]})
    assert v2.shards == {A.name: A, B.name: B} and v2.snapshot_shards == [A.name, B.name]
    none = parse_state(None)
    assert none.shards == {} and none.snapshot_shards == [] and none.faiss == {} and none.rerank == {}


def test_a_snapshot_covers_only_a_prefix_of_the_shards():
    shards = [A.name, B.name]
    assert snapshot_covers(shards, [A.name]) and snapshot_covers(shards, shards)
    assert not snapshot_covers(shards, [])  # no snapshot
    assert not snapshot_covers(shards, [B.name])  # the first shard was replaced
    assert not snapshot_covers([A.name], shards)  # a covered shard is gone


def test_open_problems_name_each_missing_shard_and_an_orphan_index():
    recorded = {A.name: A, B.name: B}
    assert open_problems(True, recorded, {A.name}, index_exists=True) == [
        f"shard shards/{B.name} is missing (it held 4 rows)"
    ]
    assert open_problems(False, {}, set(), index_exists=True) == [
        f"{INDEX} exists but every shard and {INDEX_STATE} are missing"
    ]
    assert open_problems(False, {}, set(), index_exists=False) == []  # a new folder


def test_exact_top_k_over_parts_equals_one_brute_force_ranking():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # unit, as stored: a vector is its own best
    vectors[10] = vectors[3]  # a tie: the smaller id comes first
    ids = np.arange(100, 150, dtype=np.int64)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    queries[0] = vectors[3]
    parts = [(ids[s], vectors[s]) for s in (slice(0, 17), slice(17, 40), slice(40, 50))]
    scores, got = exact_top_k(queries, 6, parts)
    full = queries @ vectors.T
    for q in range(len(queries)):
        order = sorted(range(50), key=lambda j: (-full[q, j], ids[j]))[:6]
        assert got[q].tolist() == ids[order].tolist()
        np.testing.assert_allclose(scores[q], full[q, order], rtol=1e-6)
    assert got[0][:2].tolist() == [103, 110]
    # Fewer stored than k: padded with -1.
    _, few = exact_top_k(queries[:1], 4, [(ids[:2], vectors[:2])])
    assert few[0].tolist()[2:] == [-1, -1]


def test_a_shard_table_round_trips_and_read_shard_checks_it_against_the_state_file(tmp_path):
    import pyarrow.parquet as pq

    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.shards import read_shard, records_to_table, table_to_records

    recs = [
        ImageRecord(5, "a.tif", "P1", "B02", "B", 2, 1, "w1", 16, "real", tags=(("drug", "x"),)),
        ImageRecord(9, "b.tif"),  # unknown metadata stays None; no tags
    ]
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    table = records_to_table(vectors, recs)
    ids, back, got, deleted = table_to_records(table)
    assert ids.tolist() == [5, 9] and got == recs and not deleted.any()
    np.testing.assert_array_equal(back, vectors)
    path = tmp_path / "part-000000.parquet"
    pq.write_table(table, path)
    read = read_shard(path, None, dim=4)
    assert read.records == recs and read.dim == 4 and read.info.rows == 2
    assert read_shard(path, read.info, dim=8) == f"shard shards/{path.name} holds 4-d vectors, not 8-d"
    lied = ShardInfo(path.name, read.info.bytes, 3)
    assert read_shard(path, lied, dim=4) == f"shard shards/{path.name} has 2 rows, the state file says 3"
