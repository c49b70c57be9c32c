"""FAISS index kinds: each builds, survives a reopen, filters, and is measured against exact search."""

import json

import numpy as np
import pytest

from indexer.core.errors import ConfigError
from indexer.core.records import ImageRecord, MetadataFilter
from indexer.stores.faiss.kinds import (
    choose_auto,
    ivf_lists,
    parse_kind,
    parse_memory,
    recall_at,
    search_parameters,
)
from indexer.stores.faiss.store import INDEX_STATE, MANIFEST, FaissStore

DIM = 32
WELLS = ("A01", "A02", "B01", "B02")


def clustered(n, dim=DIM, clusters=40, seed=0, start=0):
    """Unit vectors around ``clusters`` centres (not uniform: nearest neighbours share a centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    recs = [
        ImageRecord(
            id=start + i, path=f"img{start + i}.tif", well=WELLS[(start + i) % 4], site=1, z=(start + i) % 34
        )
        for i in range(n)
    ]
    return v, recs


def exact_topk(v, ids, q, k, keep=None):
    """Brute-force top-k ids (ties by id), over the rows where ``keep`` is True."""
    scores = q @ v.T
    if keep is not None:
        scores = np.where(keep[None, :], scores, -np.inf)
    out = []
    for row in scores:
        order = np.lexsort((ids, -row))[:k]
        out.append([int(ids[i]) for i in order if np.isfinite(row[i])])
    return out


def as_array(lists, k):
    return np.array([(x + [-1] * k)[:k] for x in lists], dtype=np.int64)


KINDS = ["Flat", "HNSW16", "IVF16,Flat", "IVF16,PQ16"]
#: Recall@10 floors against exact search at the tuned parameters (measured 1.0, 1.0, 1.0, 0.69
#: on this data, where neighbours differ only by noise; PQ16 keeps 16 of the 128 bytes of a vector).
FLOOR = {"Flat": 1.0, "HNSW16": 0.95, "IVF16,Flat": 0.95, "IVF16,PQ16": 0.6}


def test_parse_kind_accepts_factory_strings_and_names_the_ones_it_knows():
    assert parse_kind("IVF1024,PQ96").pq_m == 96 and parse_kind("IVF1024,PQ96").nlist == 1024
    assert parse_kind("hnsw").factory == "HNSW32" and parse_kind("flat").exact
    assert parse_kind("IVF256,PQ64x4").pq_bits == 4 and parse_kind("OPQ64_256,IVF256,PQ64").opq
    assert parse_kind("IVF64,PQ32").bytes_per_vector(768) == 32 + 8 + 40  # code, id, direct-map entry
    assert parse_kind("HNSW32").bytes_per_vector(768) == 768 * 4 + 256 + 8
    for bad in ("IVF", "PQ64", "LSH", "IVF12,SQ8", "HNSW2"):
        with pytest.raises(ConfigError, match="FAISS index kind|HNSW M"):
            parse_kind(bad)
    with pytest.raises(ConfigError, match="PQ48, PQ64"):
        parse_kind("IVF4,PQ7").check(768)


def test_auto_follows_size_and_memory_budget():
    gib = 1 << 30
    assert choose_auto(5_000, 768, gib) == "Flat"
    assert choose_auto(500_000, 768, 4 * gib) == "HNSW32"  # 500k * (3072 + 264) B = 1.6 GiB
    assert choose_auto(500_000, 768, gib).startswith("IVF") and choose_auto(500_000, 768, gib).endswith(
        "PQ256"
    )
    assert choose_auto(10_000_000, 768, 40 * gib) == f"IVF{ivf_lists(10_000_000)},Flat"
    # 10M vectors in 1.5 GiB: the largest code that fits is 96 bytes (+48 for the id and direct map)
    assert choose_auto(10_000_000, 768, int(1.5 * gib)) == f"IVF{ivf_lists(10_000_000)},PQ96"
    assert ivf_lists(1_000_000) == 4096 and ivf_lists(100) == 2
    with pytest.raises(ConfigError, match="--faiss-memory"):
        choose_auto(10_000_000, 768, 10 << 20)
    assert (
        parse_memory("512M") == 512 << 20
        and parse_memory("1.5G") == 3 << 29
        and parse_memory("4GB") == 4 << 30
    )
    with pytest.raises(ConfigError, match="512M"):
        parse_memory("lots")


def test_filter_widens_nprobe_and_ef_search():
    p = search_parameters(parse_kind("IVF64,PQ8"), 4, None, widen=8.0)
    assert p.nprobe == 32
    assert search_parameters(parse_kind("IVF64,PQ8"), 16, None, widen=100.0).nprobe == 64  # capped at nlist
    assert search_parameters(parse_kind("HNSW32"), None, 64, widen=3.0).efSearch == 192
    assert search_parameters(parse_kind("Flat"), None, None) is None


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_builds_round_trips_and_reaches_its_recall_floor(tmp_path, kind):
    v, recs = clustered(3000)
    with FaissStore(tmp_path, dim=DIM, kind=kind) as s:
        s.add(v[:1500], recs[:1500])
        s.flush()
        s.add(v[1500:], recs[1500:])
        s.write_manifest({"model": {"name": "m"}, "pooling": "mean", "preprocess": {}, "dim": DIM})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    section = manifest["faiss"]
    assert section["index"] == kind and section["count"] == 3000
    state = json.loads((tmp_path / INDEX_STATE).read_text())
    assert state["snapshot"]["index"] == kind and len(state["snapshot"]["shards"]) == 2
    if kind.startswith("IVF") or kind.startswith("OPQ"):
        assert (
            1 <= section["nprobe"] <= 16
            and section["trained_on"] == parse_kind(kind).train_size(3000)
            and section["tuned_on"] == 200
        )
    if kind.startswith("HNSW"):
        assert section["efSearch"] >= 16
    reader = FaissStore(tmp_path, read_only=True)
    assert reader.kind.factory == kind and reader.count() == 3000
    # the float vectors come back exactly, whatever the index keeps
    np.testing.assert_array_equal(reader.get_vectors([5, 2999]), v[[5, 2999]])
    q = v[::30]
    ids = np.arange(3000)
    exact = as_array(exact_topk(v, ids, q, 10), 10)
    got = as_array([[h.id for h in hits] for hits in reader.search(q, 10)], 10)
    recall = recall_at(got, exact, 10)
    assert recall >= FLOOR[kind], recall
    assert reader.measure_recall(10) >= FLOOR[kind]
    if "recall_at_10" in section:
        assert section["recall_at_10"] >= FLOOR[kind]
    # filters still work, and their recall is measured against exact filtered search
    where = MetadataFilter(well="A02", z_max=20)
    keep = np.array([r.well == "A02" and r.z <= 20 for r in recs])
    exact_f = as_array(exact_topk(v, ids, q, 10, keep), 10)
    hits_f = reader.search(q, 10, where=where)
    assert all(where.matches(h.record) for hits in hits_f for h in hits)
    assert all(len(hits) == 10 for hits in hits_f)
    recall_f = recall_at(as_array([[h.id for h in hits] for hits in hits_f], 10), exact_f, 10)
    assert recall_f >= FLOOR[kind] - 0.05, recall_f


def test_query_side_overrides_change_the_search_parameters(tmp_path):
    v, recs = clustered(3000, clusters=4)  # each cluster spans several lists
    with FaissStore(tmp_path, dim=DIM, kind="IVF64,Flat") as s:
        s.add(v, recs)
    one = FaissStore(tmp_path, read_only=True, nprobe=1)
    every = FaissStore(tmp_path, read_only=True, nprobe=64)
    assert one.search_settings["nprobe"] == 1 and every.search_settings["nprobe"] == 64
    assert every.measure_recall(10) == 1.0  # every list probed: exact
    assert one.measure_recall(10) < every.measure_recall(10)
    with pytest.raises(ConfigError, match="nprobe"):
        FaissStore(tmp_path, read_only=True, nprobe=0)


def test_a_resumed_build_keeps_the_kind_and_catches_up_after_a_kill(tmp_path):
    v, recs = clustered(3000)
    with FaissStore(tmp_path, dim=DIM, kind="IVF16,PQ16") as s:
        s.add(v[:2000], recs[:2000])
    # a second run without --faiss-index keeps the kind; it is killed after a checkpoint (no close)
    s2 = FaissStore(tmp_path)
    assert s2.kind.factory == "IVF16,PQ16"
    s2.add(v[2000:2500], recs[2000:2500])
    s2.flush()
    s2.folder.release()  # the process dies here: the snapshot still covers the first shard only
    state = json.loads((tmp_path / INDEX_STATE).read_text())
    assert len(state["shards"]) == 2 and len(state["snapshot"]["shards"]) == 1
    reader = FaissStore(tmp_path, read_only=True)
    assert reader.count() == 2500 and reader.kind.factory == "IVF16,PQ16"
    assert reader.search_index.ntotal == 2500  # caught up from the later shard, not retrained
    assert reader.search(v[2100:2101], 1)[0][0].id == 2100
    with FaissStore(tmp_path) as s3:
        s3.add(v[2500:], recs[2500:])
    final = FaissStore(tmp_path, read_only=True)
    assert final.count() == 3000 and final.kind.factory == "IVF16,PQ16"
    assert final.measure_recall(10) >= FLOOR["IVF16,PQ16"]


def test_another_kind_on_an_existing_index_is_built_from_the_shards(tmp_path):
    v, recs = clustered(2000)
    with FaissStore(tmp_path, dim=DIM) as s:
        s.add(v, recs)
    assert FaissStore(tmp_path, read_only=True).kind.exact
    with FaissStore(tmp_path, kind="IVF8,Flat"):
        pass
    again = FaissStore(tmp_path, read_only=True)
    assert again.kind.factory == "IVF8,Flat" and again.count() == 2000
    assert again.search(v[7:8], 1)[0][0].id == 7


def test_auto_chooses_from_the_count_and_the_memory_budget(tmp_path):
    v, recs = clustered(3000)
    with FaissStore(tmp_path / "big", dim=DIM, kind="auto", memory=1 << 30) as s:
        s.add(v, recs)
    assert FaissStore(tmp_path / "big", read_only=True).kind.factory == "Flat"
    # 3000 x 70 B fits PQ16 (+48 B id and direct map) but not the float vectors (136 B each)
    budget = 3000 * 70
    with FaissStore(tmp_path / "small", dim=DIM, kind="auto", memory=budget) as s:
        s.add(v, recs)
    small = FaissStore(tmp_path / "small", read_only=True)
    assert small.kind.factory == f"IVF{ivf_lists(3000)},PQ16"
    assert small.search_settings["requested"] == "auto" and small.search_settings["memory_bytes"] == budget


def test_deletes_and_upserts_reach_every_kind(tmp_path):
    for kind in ("HNSW16", "IVF16,PQ16"):
        v, recs = clustered(2000)
        folder = tmp_path / kind.replace(",", "_")
        with FaissStore(folder, dim=DIM, kind=kind) as s:
            s.add(v, recs)
        with FaissStore(folder) as s:
            assert s.delete([3, 4]) == 2
            s.add(v[[3]] * -1, [recs[3]])  # re-added with another vector
        r = FaissStore(folder, read_only=True)
        assert r.count() == 1999 and r.get([4]) == [None]
        np.testing.assert_array_equal(r.get_vectors([3]), -v[[3]])
        assert r.search(-v[3:4], 1)[0][0].id == 3


def test_cli_build_info_verify_query_with_an_ivf_mirror(real_subset, tmp_path, tiny_model_dir):
    """`mae-index build --faiss-index`, then info, verify (recall against exact), a query with --nprobe,
    and a resumed build without the option keeps the kind."""
    from click.testing import CliRunner

    from indexer.cli import main
    from retriever.cli import main as search_main

    index = tmp_path / "idx"
    run = CliRunner().invoke
    common = ["--index", str(index), "--model", str(tiny_model_dir), "--device", "cpu", "--no-progress"]
    r = run(main, ["build", str(real_subset), *common, "--faiss-index", "IVF2,Flat", "--z", "16"])
    assert r.exit_code == 0, r.output
    info = json.loads(run(main, ["info", "--index", str(index), "--format", "json"]).output)
    assert info["faiss"]["index"] == "IVF2,Flat" and info["faiss"]["nprobe"] in (1, 2)
    assert json.loads((index / MANIFEST).read_text())["faiss"]["index"] == "IVF2,Flat"
    assert "faiss" not in info["manifest"]  # the folder's own section: every store returns the same manifest
    v = run(main, ["verify", "--index", str(index), "--format", "json", "--min-mirror-recall", "0.5"])
    d = json.loads(v.output)
    assert v.exit_code == 0 and d["faiss_index"] == "IVF2,Flat" and d["mirror_recall_at_k"] >= 0.5
    # a recall floor the index cannot reach fails verify (nprobe 1 of 2 lists)
    low = run(main, ["verify", "--index", str(index), "--nprobe", "1", "--min-mirror-recall", "1.01"])
    assert low.exit_code == 1 and "LOW RECALL" in low.output
    image = sorted((real_subset / "BBBC006_v1_images_z_16").glob("*.tif"))[0]
    q = run(search_main, ["query", str(image), "--index", str(index), "--device", "cpu", "--format", "json",
                          "-k", "3", "--nprobe", "2"])  # fmt: skip
    assert q.exit_code == 0, q.output
    assert json.loads(q.output)[0]["score"] > 0.999
    # a re-run without --faiss-index (a resumed build) keeps the kind
    r2 = run(main, ["build", str(real_subset), *common])
    assert r2.exit_code == 0, r2.output
    assert FaissStore(index, read_only=True).kind.factory == "IVF2,Flat"
    bad = run(main, ["build", str(real_subset), *common, "--faiss-index", "IVF4,PQ5"])
    assert bad.exit_code == 2 and "PQ" in bad.output
