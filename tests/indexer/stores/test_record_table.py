"""The FAISS store's columnar record table: the same answers as a dict of records, in far less memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from indexer.core.records import ImageRecord, MetadataFilter
from indexer.stores.base import SPARE_CANDIDATES
from indexer.stores.faiss.store import FaissStore
from indexer.stores.record_table import RecordTable
from tests.support.records_made import records_made


def _record(i: int, **kw) -> ImageRecord:
    base = dict(id=1000 + i, path=f"/plate/a{i:05d}.tif", plate="p1", well=f"A{i % 24 + 1:02d}", row="A",
                column=i % 24 + 1, site=i % 2 + 1, channel=("w1", "w2")[i % 2], z=i % 34, source="synthetic")  # fmt: skip
    base.update(kw)
    return ImageRecord(**base)


def test_records_come_back_equal_with_none_fields_and_tags():
    records = [_record(0), _record(1, tags={"drug": "dmso"}), ImageRecord(id=5, path="/x.tif")]
    table = RecordTable(records)
    assert len(table) == 3
    assert [table[r.id] for r in records] == records
    assert table.get(6) is None and 6 not in table and 5 in table
    assert list(table.values()) == records
    assert table.distinct("channel") == ["w1", "w2"] and table.distinct("z") == [0, 1]
    assert table.distinct("plate") == ["p1"] and table.tag_strings() == ["drug=dmso"]
    with pytest.raises(KeyError):
        table[6]


def test_upserts_and_deletes_behave_like_a_dict_across_rebuilds_of_the_lookup():
    """20,000 rows: past the lookup copy's rebuild threshold several times, with dead rows dropped."""
    rng = np.random.default_rng(0)
    table, reference = RecordTable(), {}
    for step in range(40):
        batch = [_record(int(i), z=step) for i in rng.choice(6000, 500, replace=False)]
        table.put(batch)
        reference.update({r.id: r for r in batch})
        for i in rng.choice(6000, 100, replace=False).tolist():
            assert table.pop(1000 + i, None) == reference.pop(1000 + i, None)
    assert len(table) == len(reference)
    assert table.ids().tolist() == sorted(reference)
    assert {i: table[i] for i in reference} == reference
    probe = np.arange(900, 7100)
    assert table.contains(probe).tolist() == [int(i) in reference for i in probe]
    assert table._n < 20_000  # dead rows were dropped


def test_vectors_are_found_at_their_last_row_in_the_last_shard_that_wrote_them():
    table = RecordTable()
    table.put([_record(1), _record(2), _record(3)])
    table.place("part-000000.parquet", np.array([1001, 1002, 1003]), np.zeros(3, dtype=bool))
    table.put([_record(2, z=9)])  # re-added: its vector is pending until the next shard
    table.pop(1003)
    with pytest.raises(KeyError, match="not written to a shard"):
        table.location([1002])
    table.place("part-000001.parquet", np.array([1002, 1003, 1002]), np.array([False, True, False]))
    names, shards, rows = table.location([1001, 1002])
    assert [names[s] for s in shards] == ["part-000000.parquet", "part-000001.parquet"]
    assert rows.tolist() == [0, 2]
    live = table.live_by_shard()
    assert list(live) == ["part-000000.parquet", "part-000001.parquet"]
    assert [a.tolist() for a in live["part-000000.parquet"]] == [[0], [1001]]
    assert [a.tolist() for a in live["part-000001.parquet"]] == [[2], [1002]]
    with pytest.raises(KeyError, match="1003"):
        table.location([1003])


def _columns(records):
    from indexer.core.records import RECORD_FIELDS
    from indexer.stores.faiss.shards import records_to_table

    table = records_to_table(np.zeros((len(records), 2), dtype=np.float32), records)
    ids = table.column("id").to_numpy()
    return ids, {f: table.column(f).to_pylist() for f in RECORD_FIELDS}, table.column("tags").to_pylist()


@pytest.mark.parametrize("upsert_in_one_shard", [False, True])
def test_a_shard_read_back_applies_its_rows_in_order(upsert_in_one_shard):
    """Column-wise (a build's shards) and row by row (a shard with a tombstone or an id twice) alike."""
    first = [_record(1), _record(2, tags={"k": "v"}), ImageRecord(id=7, path="/bare.tif")]
    table = RecordTable()
    table.load_shard("part-000000.parquet", *_columns(first), np.zeros(3, dtype=bool))
    assert [table[r.id] for r in first] == first
    second = [_record(2, z=7), _record(2, z=8)] if upsert_in_one_shard else [_record(1), _record(2, z=7)]
    gone = np.array([False, False]) if upsert_in_one_shard else np.array([True, False])
    table.load_shard("part-000001.parquet", *_columns(second), gone)
    assert (1001 in table) is upsert_in_one_shard
    assert table[1002] == second[-1] and table[7] == first[2] and len(table) == 2 + upsert_in_one_shard
    assert [a.tolist() for a in table.live_by_shard()["part-000001.parquet"]] == [[1], [1002]]


def test_a_store_holds_its_records_in_under_160_bytes_each_over_their_paths(tmp_path):
    """A FAISS store of 20,000 records, written as a build writes them (64 a batch, a shard every 512),
    in a fresh process: Python and numpy memory it holds (tracemalloc), less the path strings."""
    script = """
import sys, tracemalloc
from pathlib import Path
import numpy as np
import pandas, pyarrow.parquet  # noqa: F401  (loaded by the first flush: not a record's memory)
from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
n = 20_000
paths = [f"/data/BBBC006_v1_images_z_{i % 34:02d}/mcf-z-stacks-03212011_a{i % 24 + 1:02d}_s1_w1{i:08d}.tif"
         for i in range(n)]
store = FaissStore(Path(sys.argv[1]))
rng = np.random.default_rng(0)
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
for s in range(0, n, 64):
    records = [ImageRecord(id=10**12 + i, path=paths[i], plate="p", well="A01", row="A", column=1, site=1,
                           channel="w1", z=i % 34, source="synthetic") for i in range(s, min(n, s + 64))]
    store.add(rng.standard_normal((len(records), 8)).astype(np.float32), records)
    if s % 512 == 448:
        store.flush()
store.flush()
del records
print((tracemalloc.get_traced_memory()[0] - before) / n)
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "idx")], capture_output=True, text=True,
                         check=True)  # fmt: skip
    per_record = float(out.stdout.split()[-1])
    assert per_record < 160, f"{per_record:.0f} B per record"


def test_columns_read_raw_codes_without_records_and_decode_back():
    from indexer.stores.record_table import NO_INT

    records = [_record(0), _record(1, site=None, plate=None), ImageRecord(id=5, path="/x.tif")]
    table = RecordTable(records)
    cols = table.columns(("id", "plate", "site", "channel"))
    assert cols["id"].tolist() == [1000, 1001, 5]
    assert table.decode("plate", cols["plate"]) == ["p1", None, None]
    assert table.decode("site", cols["site"]) == [1, None, None] and cols["site"][1] == NO_INT
    assert table.decode("channel", cols["channel"]) == ["w1", "w2", None]
    some = table.columns(("well", "z"), ids=[5, 77, 1001])  # 77 is not held: read as all None
    assert table.decode("well", some["well"]) == [None, None, "A02"]
    assert table.decode("z", some["z"]) == [None, None, 1]
    with pytest.raises(KeyError):
        table.columns(("path",))
    with pytest.raises(KeyError):
        table.decode("id", [1])


def test_sealing_leaves_no_row_in_the_dict_of_recent_ones_nor_spare_rows(tmp_path):
    """A reader's table is filled once: sealed after the shards are read (a FAISS reader at 10 M records
    would otherwise keep up to 2.5 M ids in a dict, ~100 B each)."""
    from indexer.stores.faiss.store import FaissStore

    with FaissStore(tmp_path / "idx", dim=2) as store:
        for s in range(0, 6000, 500):
            store.add(np.ones((500, 2), dtype=np.float32), [_record(i) for i in range(s, s + 500)])
            store.flush()
    table = FaissStore(tmp_path / "idx", read_only=True).record_table
    assert len(table) == 6000 and table._recent == {} and len(table._rows) == 6000
    assert table[1000 + 5999] == _record(5999) and 999 not in table
    table.put([_record(6000)])  # still writable after sealing
    assert table[7000] == _record(6000) and len(table) == 6001


def _varied(n: int) -> list[ImageRecord]:
    # Values a filter must see through: None fields, whitespace a tag filter ignores, tags, several plates.
    return [
        ImageRecord(
            id=5000 + i,
            path=f"/p/{i}.tif" if i % 5 else f" /p/{i}.tif",
            plate=None if i % 11 == 0 else (" P1", "P2")[i % 2],
            well=None if i % 13 == 0 else ["A01", "B03", "C05"][i % 3],
            row=None if i % 13 == 0 else "ABC"[i % 3],
            column=None if i % 13 == 0 else 1 + 2 * (i % 3),
            site=None if i % 7 == 0 else 1 + i % 2,
            channel=("w1", "w2")[i // 2 % 2],
            z=None if i % 9 == 0 else i % 34,
            source=(None, "real", "synthetic")[i % 3],
            tags={"drug": ("dmso", "taxol")[i % 2], "dose": str(i % 3)} if i % 4 else {},
        )  # fmt: skip
        for i in range(n)
    ]


FILTERS = [
    MetadataFilter(),
    MetadataFilter(plate=["P1"]),  # matches " P1": surrounding whitespace is not significant, as in Redis
    MetadataFilter(well=["b3", "A01"], site=[2]),
    MetadataFilter(row=["c"], column=[5], channel=["2"]),
    MetadataFilter(z=[0, 3, 33], source=["real"]),
    MetadataFilter(z_min=10, z_max=20, plate=["P2"]),
    MetadataFilter(z_max=4),
    MetadataFilter(path=["/p/10.tif", "/p/11.tif", "/p/12.tif"]),
    MetadataFilter(tags=["drug=taxol", "dose=1", "dose=2"]),
    MetadataFilter(tags=["drug=none"]),
    MetadataFilter(well=["P24"]),
]


@pytest.mark.parametrize("where", FILTERS, ids=range(len(FILTERS)))
def test_matching_ids_are_the_filter_s_reference_semantics_read_from_the_columns(where, monkeypatch):
    records = _varied(400)
    table = RecordTable(records)
    table.pop(5001)  # a deleted record matches nothing
    table.put([ImageRecord(id=5002, path="/p/2b.tif", plate="P2", well="A01", z=3, source="real")])  # upsert
    live = {r.id: r for r in records if r.id != 5001}
    live[5002] = table[5002]
    made = []
    monkeypatch.setattr(RecordTable, "_record", lambda self, row: made.append(row))
    got = table.matching_ids(where)
    assert sorted(got.tolist()) == sorted(i for i, r in live.items() if where.matches(r))
    assert got.dtype == np.int64 and not made  # no record object per row


def test_a_filtered_search_makes_records_for_its_hits_not_for_every_stored_image(tmp_path, monkeypatch):
    """The first filtered search of a FAISS store used to make a record dict per stored image (a pandas
    frame of them: the first filtered query at 52k took 1.1 s in `python -m bench run explorer`, and at the scale
    users plan it is a frame of 10 M rows)."""
    records = _varied(3000)
    vectors = np.random.default_rng(1).normal(size=(len(records), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = FaissStore(tmp_path / "idx", dim=16)
    store.add(vectors, records)
    store.flush()
    where = MetadataFilter(well=["B03"], z_min=5, tags=["drug=taxol"])
    with records_made(monkeypatch) as made:
        (hits,) = store.search(vectors[7:8], 10, where)
    allowed = [i for i, r in enumerate(records) if where.matches(r)]
    sims = vectors[allowed] @ vectors[7]
    expected = [records[allowed[j]].id for j in np.lexsort((np.array(allowed), -sims))[:10]]
    assert [h.id for h in hits] == expected
    assert len(made) <= 10 + SPARE_CANDIDATES, len(made)
