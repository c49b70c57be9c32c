"""The explorer's catalog (retriever/catalog.py): the records in columns, not one object per image.

- The same JSON as the dict-of-records implementation it replaced (kept below as the reference, verbatim
  in its logic) for facets, the plate layout, the plate map and every record's siblings, on records
  with missing metadata, several plates, channels, sites and z, from a FAISS and from a Redis store.
- Memory: over a FAISS store the catalog holds no copy of the records (measured in a fresh process).
- A record's siblings cost the size of its site, not of the index.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
from retriever.catalog import COLUMNS, ROWS, Catalog

DIM = 8


# --------------------------------------------------------------------------- the reference
# The implementation over a dict {id: ImageRecord} that the columnar catalog replaced, kept as the
# reference its answers must equal.
def ref_facets(records: dict[int, ImageRecord]) -> dict[str, Any]:
    out: dict[str, dict] = {f: {} for f in ("plate", "well", "site", "channel", "z")}
    for r in records.values():
        for f in out:
            v = getattr(r, f)
            out[f][v] = out[f].get(v, 0) + 1

    def ordered(d: dict) -> list[dict[str, Any]]:
        return [
            {"value": v, "count": d[v]} for v in sorted(d, key=lambda x: (x is None, str(type(x)), x or 0))
        ]

    tags: dict[str, dict[str, int]] = {}
    for r in records.values():
        for key, value in r.tags:
            tags.setdefault(key, {})[value] = tags.get(key, {}).get(value, 0) + 1

    def numeric_first(v: str) -> tuple:
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    tag_facets = {
        k: [{"value": v, "count": c[v]} for v in sorted(c, key=numeric_first)]
        for k, c in sorted(tags.items())
    }
    return {"count": len(records), **{f: ordered(d) for f, d in out.items()}, "tags": tag_facets}


def ref_siblings(records: dict[int, ImageRecord], image_id: int) -> dict[str, Any]:
    rec = records[image_id]
    same_site = [
        r for r in records.values()
        if (r.plate, r.well, r.site) == (rec.plate, rec.well, rec.site) and rec.well is not None
    ]  # fmt: skip
    others = sorted(
        (r for r in same_site if r.z == rec.z and r.channel != rec.channel), key=lambda r: str(r.channel)
    )
    stack = sorted((r for r in same_site if r.channel == rec.channel and r.z is not None), key=lambda r: r.z)
    if not stack:
        stack = [rec]
    return {
        "record": rec.to_dict(),
        "other_channels": [r.to_dict() for r in others],
        "stack": [{"id": r.id, "z": r.z} for r in stack],
    }


def ref_layout(records: dict[int, ImageRecord], ids: np.ndarray) -> dict[str, Any]:
    cell = np.full(len(ids), -1, dtype=np.int64)
    plate = np.full(len(ids), -1, dtype=np.int64)
    channel = np.full(len(ids), -1, dtype=np.int64)
    site = np.full(len(ids), -1, dtype=np.int64)
    plate_names: dict[str, int] = {}
    channel_names: dict[str, int] = {}
    for n, i in enumerate(ids):
        r = records.get(int(i))
        if r is None:
            continue
        if r.plate:
            plate[n] = plate_names.setdefault(r.plate, len(plate_names))
        if r.channel:
            channel[n] = channel_names.setdefault(r.channel, len(channel_names))
        site[n] = -1 if r.site is None else r.site
        if r.well:
            row, col = ROWS.find(r.well[0]), int(r.well[1:]) - 1
            if 0 <= row < len(ROWS) and 0 <= col < COLUMNS:
                cell[n] = row * COLUMNS + col
    counts = np.bincount(plate[plate >= 0], minlength=len(plate_names))
    common = max(plate_names, key=lambda p: counts[plate_names[p]]) if plate_names else None
    return {"cell": cell, "plate": plate, "channel": channel, "site": site, "plate_names": plate_names,
            "channel_names": channel_names, "default_plate": common}  # fmt: skip


# --------------------------------------------------------------------------- fixtures
def fixture_records() -> list[ImageRecord]:
    """Three plates and a plate-less stretch, wells with and without a plate, sites and z missing here and
    there, two channels and one image without one, a record with nothing but its path, and tags."""
    out = []
    n = 0
    for plate in ("p2", "p1", None, "p3"):
        for well in ("B03", "A01", None, "P24"):
            for site in (2, 1, None):
                for channel in ("w2", "w1", None):
                    for z in (3, None, 0, 1):
                        n += 1
                        if (n * 7) % 5 == 0:  # leave holes: not every site has every channel and z
                            continue
                        if plate == "p3" and well != "A01":  # a small plate
                            continue
                        out.append(
                            ImageRecord(id=(n * 7919) % 100_003, path=f"/d/{plate}/{well}_s{site}_{channel}_z{z}.tif",
                                        plate=plate, well=well, row=well[0] if well else None,
                                        column=int(well[1:]) if well else None, site=site, channel=channel, z=z,
                                        source="synthetic" if n % 3 else None, tags={"k": "v"} if n % 10 == 0 else {})
                        )  # fmt: skip
    out.append(ImageRecord(id=99_999_999, path="/d/bare.tif"))
    return out


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["faiss", pytest.param("redis", marks=pytest.mark.redis)])
def filled(request, tmp_path):
    """``(store, records by id)``: the fixture's records in a FAISS folder (reopened read-only, as the
    server opens it) or in Redis (which the catalogs below read 7 records at a time)."""
    records = fixture_records()
    if request.param == "faiss":
        with FaissStore(tmp_path / "idx", dim=DIM) as writer:
            writer.add(_vectors(len(records)), records)
        store = FaissStore(tmp_path / "idx", read_only=True)
    else:
        from indexer.stores.redis.store import RedisStore

        store = RedisStore(request.getfixturevalue("redis_config"), dim=DIM)
        store.add(_vectors(len(records)), records)
    yield store, {r.id: r for r in sorted(records, key=lambda r: r.id)}
    store.close()


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=False)


# --------------------------------------------------------------------------- equivalence
def test_facets_equal_the_dict_implementation(filled):
    store, records = filled
    got = Catalog(store, read_chunk=7).facets()
    assert _json(got) == _json(ref_facets(records))
    assert got["count"] == len(records)
    assert got["plate"][-1] == {"value": None, "count": sum(r.plate is None for r in records.values())}


def test_every_records_siblings_equal_the_dict_implementation(filled):
    store, records = filled
    catalog = Catalog(store, read_chunk=7)
    answers = {}
    for image_id in records:
        answers[image_id] = catalog.siblings(image_id)
        assert _json(answers[image_id]) == _json(ref_siblings(records, image_id)), image_id
    # The fixture exercises every case: stacks of 1 to 3 slices, one or two other channels, none.
    assert {len(a["stack"]) for a in answers.values()} == {1, 2, 3}
    assert {len(a["other_channels"]) for a in answers.values()} == {0, 1, 2}


def test_the_plate_layout_and_map_equal_the_dict_implementation(filled):
    store, records = filled
    catalog = Catalog(store, read_chunk=7)
    ids = np.sort(store.ids())
    vectors = store.get_vectors(ids)
    got, ref = catalog.layout(), ref_layout(records, ids)
    assert got.keys() == ref.keys()
    for key in ref:
        if isinstance(ref[key], np.ndarray):
            assert got[key].tolist() == ref[key].tolist(), key
        else:
            assert got[key] == ref[key], key
    assert list(got["plate_names"]) == ["p2", "p1", "p3"]  # codes in the order of the sorted ids
    for q in (0, 5, 17):
        for plate, channels, sites in ((None, (), ()), ("p3", ("w1",), (1,)), ("p1", ("w2", "w1"), (2,))):
            _assert_same_map(
                catalog.plate_map(vectors[q], plate, channels, sites),
                _ref_plate_map(ref, ids, vectors, vectors[q], plate, channels, sites),
            )


def _ref_plate_map(lay, ids, vectors, query, plate, channels, sites):
    """The plate map over the reference layout, scanning every image: the best score per well of the
    images of the plate (default: the most common), channels and sites asked for."""
    plate = plate if plate is not None else lay["default_plate"]
    code = lay["plate_names"].get(plate, -2)
    chosen = [lay["channel_names"].get(c, -2) for c in channels]
    best: dict[int, float] = {}
    count: dict[int, int] = {}
    for n in range(len(ids)):
        if lay["cell"][n] < 0 or lay["plate"][n] != code:
            continue
        if (channels and lay["channel"][n] not in chosen) or (sites and lay["site"][n] not in sites):
            continue
        c = int(lay["cell"][n])
        best[c] = max(best.get(c, -np.inf), float(vectors[n] @ query))
        count[c] = count.get(c, 0) + 1
    wells = {f"{ROWS[c // COLUMNS]}{c % COLUMNS + 1:02d}": c for c in range(len(ROWS) * COLUMNS)}
    return {"plate": plate, "rows": list(ROWS), "columns": COLUMNS,
            "wells": {w: (round(best[c], 6) if c in best else None) for w, c in wells.items()},
            "images": {w: count[c] for w, c in wells.items() if c in count}}  # fmt: skip


def _assert_same_map(got, want):
    assert {k: v for k, v in got.items() if k != "wells"} == {k: v for k, v in want.items() if k != "wells"}
    assert [w for w, s in got["wells"].items() if s is None] == [
        w for w, s in want["wells"].items() if s is None
    ]
    for w, s in want["wells"].items():
        assert got["wells"][w] == (None if s is None else pytest.approx(s, abs=2e-6)), w


class _CountingStore:
    """The store as the catalog sees it, counting the vectors it is asked for (the real store answers)."""

    def __init__(self, store):
        self.store, self.asked = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get_vectors(self, ids):
        self.asked += len(ids)
        return self.store.get_vectors(ids)


def test_the_plate_map_reads_the_vectors_of_the_plate_asked_for_and_keeps_a_bounded_few(filled):
    """The plate map needs the images of one plate, not of the index: 10 M images are ~190 plates, and
    their vectors (30 GB at 768-d) would all have been read into the server on the first map. Now a map
    reads its plate's vectors once, and the catalog keeps the plates asked for last within a byte budget."""
    store, records = filled
    ids = np.sort(store.ids())
    vectors = store.get_vectors(ids)
    per_plate = {
        p: sum(r.plate == p and r.well is not None for r in records.values()) for p in ("p1", "p2", "p3")
    }
    one_plate = per_plate["p2"] * DIM * 4
    counting = _CountingStore(store)
    catalog = Catalog(store, counting, plate_cache_bytes=one_plate + per_plate["p3"] * DIM * 4)
    ref = ref_layout(records, ids)
    q = vectors[4]
    for plate, channels, sites in ((None, (), ()), ("p2", ("w1",), (2,)), ("p3", (), (1,))):
        _assert_same_map(
            catalog.plate_map(q, plate, channels, sites),
            _ref_plate_map(ref, ids, vectors, q, plate, channels, sites),
        )
    assert ref["default_plate"] == "p2"
    assert counting.asked == per_plate["p2"] + per_plate["p3"]  # p2 once (kept), then p3; never all
    _assert_same_map(catalog.plate_map(q, "p1", (), ()), _ref_plate_map(ref, ids, vectors, q, "p1", (), ()))
    assert counting.asked == sum(per_plate.values())
    # p1 pushed out p2, the least recently asked for (the budget holds p2 and p3, not p1 beside them)
    catalog.plate_map(q, "p1", (), ())
    assert counting.asked == sum(per_plate.values())
    catalog.plate_map(q, "p2", (), ())
    assert counting.asked == sum(per_plate.values()) + per_plate["p2"]
    assert catalog.plate_map(q, "no such plate", (), ())["images"] == {}


def test_an_unknown_id_is_a_404_and_the_count_is_the_store_s(filled):
    from retriever.http.app import ClientError

    store, records = filled
    catalog = Catalog(store, read_chunk=7)
    with pytest.raises(ClientError) as e:
        catalog.siblings(123)
    assert e.value.status == 404
    assert len(catalog.records) == len(records) == store.count()
    if isinstance(store, FaissStore):
        assert catalog.records is store.record_table  # the store's own table, not a copy


@pytest.mark.redis
def test_a_redis_served_catalog_uses_the_mirror_s_records_when_both_hold_the_same_ids(redis_config, tmp_path):
    """Served from Redis with its FAISS mirror open (``mae-search serve`` on a Redis index), the catalog
    read every record from Redis into a table of its own, beside the mirror's table of the same records:
    at 10 M images, two copies. It now takes the mirror's when the two hold the same ids, and reads Redis
    when they differ (a mirror behind its Redis index), so what it answers is always the searched store's."""
    from indexer.stores.redis.store import RedisStore

    records = fixture_records()
    vectors = _vectors(len(records))
    redis = RedisStore(redis_config, dim=DIM)
    redis.add(vectors, records)
    with FaissStore(tmp_path / "idx", dim=DIM) as writer:
        writer.add(vectors, records)
    mirror = FaissStore(tmp_path / "idx", read_only=True)
    catalog = Catalog(redis, mirror, read_chunk=7)
    assert catalog.records is mirror.record_table
    assert _json(catalog.facets()) == _json(ref_facets({r.id: r for r in records}))

    extra = ImageRecord(
        id=424_242, path="/d/p1/A01_s1_w1_z9.tif", plate="p1", well="A01", site=1, channel="w1", z=9
    )
    redis.add(_vectors(1, seed=1), [extra])  # in Redis, not yet in the mirror
    behind = Catalog(redis, mirror, read_chunk=7)
    assert behind.records is not mirror.record_table
    assert len(behind.records) == len(records) + 1 and behind.record(424_242) == extra
    redis.close()
    mirror.close()


# --------------------------------------------------------------------------- memory
MEMORY_SCRIPT = """
import gc, sys, tracemalloc
from pathlib import Path
import numpy as np
from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
from retriever.catalog import Catalog
folder, n = Path(sys.argv[1]), int(sys.argv[2])
rows = "ABCDEFGHIJKLMNOP"
with FaissStore(folder, dim=8) as writer:  # the plate's layout: 384 wells x 2 sites x 2 channels per z
    for s in range(0, n, 512):
        recs = []
        for i in range(s, min(n, s + 512)):
            z, w, site, ch = i // 1536, i % 1536 // 4, i % 4 // 2 + 1, i % 2 + 1
            well = f"{rows[w // 24]}{w % 24 + 1:02d}"
            recs.append(ImageRecord(id=10**12 + i, path=f"/data/BBBC006_v1_images_z_{z:02d}/mcf-z-stacks-03212011_"
                                    f"{well.lower()}_s{site}_w{ch}{i:08d}.tif", plate="mcf-z-stacks-03212011",
                                    well=well, row=well[0], column=w % 24 + 1, site=site, channel=f"w{ch}", z=z,
                                    source="synthetic"))
        writer.add(np.ones((len(recs), 8), dtype=np.float32), recs)
        writer.flush()
store = FaissStore(folder, read_only=True)  # as mae-search serve opens it
ids = store.ids()
gc.collect()
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
catalog = Catalog(store)
assert len(catalog.records) == n
facets = catalog.facets()
assert sum(f["count"] for f in facets["well"]) == n
for i in ids[:: max(1, n // 50)].tolist():
    assert len(catalog.siblings(i)["stack"]) >= 1
del facets
gc.collect()
print((tracemalloc.get_traced_memory()[0] - before) / n)
"""


def test_the_catalog_holds_no_copy_of_a_faiss_store_s_records(tmp_path):
    """20,000 records in a FAISS folder, opened read-only as the server opens it; the catalog answers
    facets, record counts and siblings. Python and numpy memory it adds (tracemalloc), per record: a dict
    of records held ~200 B per record; the columnar catalog holds its siblings index (an int64 id per
    record) and the facets."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "idx"), "20000"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    per_record = float(out.stdout.split()[-1])
    assert per_record < 40, f"{per_record:.0f} B per record"


# --------------------------------------------------------------------------- cost per request
def _plate_records(n: int) -> list[ImageRecord]:
    """``n`` records as plates of 384 wells x 2 sites x 2 channels x 2 z: more records, more plates, and
    every site holds 4 images at any multiple of 3,072."""
    out = []
    for i in range(n):
        z, w, site, ch = i // 1536, i % 1536 // 4, i % 4 // 2 + 1, i % 2 + 1
        well = f"{ROWS[w // 24]}{w % 24 + 1:02d}"
        out.append(ImageRecord(id=7 * i + 3, path=f"/d/{i}.tif", plate=f"p{z // 2}", well=well, site=site,
                               channel=f"w{ch}", z=z % 2))  # fmt: skip
    return out


def _store(tmp_path, n: int) -> FaissStore:
    store = FaissStore(tmp_path / f"idx{n}", dim=DIM)
    records = _plate_records(n)
    store.add(np.ones((n, DIM), dtype=np.float32), records)
    return store


def _best_time(fn, ids: list[int], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in ids:
            fn(i)
        best = min(best, time.perf_counter() - start)
    return best / len(ids)


def test_siblings_cost_the_size_of_the_site_not_of_the_index(tmp_path):
    """The same group sizes (every site holds 4 images), 3,072 and 30,720 records: the time per request
    must not grow with the index. Best of 5 batches of 60 requests each; a scan of every record grows
    ~10x here, the bound is 3x."""
    per_call = {}
    for n in (3_072, 30_720):
        store = _store(tmp_path, n)
        catalog = Catalog(store)
        ids = store.ids()[:: max(1, n // 60)][:60].tolist()
        catalog.siblings(ids[0])  # built on first use: not a per-request cost
        per_call[n] = _best_time(catalog.siblings, ids)
        assert all(len(catalog.siblings(i)["stack"]) == 2 for i in ids[:5])
        store.close()
    ratio = per_call[30_720] / per_call[3_072]
    assert ratio < 3, (
        f"{per_call[3_072] * 1e6:.0f} -> {per_call[30_720] * 1e6:.0f} us per request ({ratio:.1f}x)"
    )
