"""``mae-index map``: the 2-D layout of an index's vectors, kept in the index folder, stale once the index
changes. Real FAISS store, real openTSNE."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from indexer.cli import main
from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore
from indexer.vectors import layout

DIM = 24
CLUSTERS, PER = 4, 30


def _clustered_store(path):
    """A FAISS store of 4 well-separated clusters of 30 unit vectors; returns (store, cluster by id)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, DIM)) * 3
    v = (np.repeat(centres, PER, axis=0) + rng.normal(size=(CLUSTERS * PER, DIM))).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[: len(v)] + 1000  # not in cluster order: the layout must not lean on ids
    store = FaissStore(path, dim=DIM)
    store.add(v, [ImageRecord(id=int(i), path=f"{i}.tif") for i in ids])
    store.write_manifest({"model": {"name": "m"}, "pooling": "mean", "preprocess": {}, "dim": DIM})
    store.flush()
    return store, dict(zip(ids.tolist(), np.repeat(np.arange(CLUSTERS), PER).tolist()))


def test_map_command_keeps_a_layout_that_keeps_the_clusters(tmp_path):
    store, cluster = _clustered_store(tmp_path / "idx")
    store.close()
    r = CliRunner().invoke(main, ["map", "--index", str(tmp_path / "idx"), "--format", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["points"] == CLUSTERS * PER and out["method"] == "opentsne" and out["peak_rss_mb"] > 0
    assert [
        p.name for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")
    ] == []  # written atomically
    emap = layout.load_map(tmp_path / "idx")
    assert emap.ids.tolist() == sorted(cluster)
    assert emap.xy.shape == (CLUSTERS * PER, 2) and emap.xy.min() >= 0 and emap.xy.max() <= 1
    assert np.isclose((emap.xy.max(axis=0) - emap.xy.min(axis=0)).max(), 1.0)
    # Neighbours in the plane are neighbours in the index: each point's 5 nearest share its cluster.
    labels = np.array([cluster[i] for i in emap.ids.tolist()])
    d = np.linalg.norm(emap.xy[:, None] - emap.xy[None], axis=-1)
    nearest = np.argsort(d, axis=1)[:, 1:6]
    assert (labels[nearest] == labels[:, None]).mean() > 0.95
    # Adding an image makes the stored map stale; the map itself still reads.
    store = FaissStore(tmp_path / "idx")
    assert not emap.is_stale(layout.ids_fingerprint(store.ids()))
    store.add(np.ones((1, DIM), np.float32) / np.sqrt(DIM), [ImageRecord(id=7, path="7.tif")])
    store.flush()
    assert emap.is_stale(layout.ids_fingerprint(store.ids()))


def test_sample_and_scale_and_fingerprint():
    ids = np.arange(100, 0, -1)
    assert layout.sample_ids(ids, 500, 0).tolist() == list(range(1, 101))
    s = layout.sample_ids(ids, 10, 3)
    assert len(s) == 10 and len(set(s.tolist())) == 10 and list(s) == sorted(s)
    assert s.tolist() == layout.sample_ids(ids, 10, 3).tolist() != layout.sample_ids(ids, 10, 4).tolist()
    xy = layout.scale_unit(np.array([[2.0, 5.0], [6.0, 5.0], [4.0, 6.0]]))
    np.testing.assert_allclose(xy, [[0, 0.375], [1, 0.375], [0.5, 0.625]])  # one scale, short axis centred
    assert layout.ids_fingerprint([3, 1, 2]) == layout.ids_fingerprint(np.array([1, 2, 3]))
    assert layout.ids_fingerprint([1, 2]) != layout.ids_fingerprint([1, 2, 3])
    assert layout.layout_2d(np.ones((2, 4), np.float32)).shape == (2, 2)


def _bomb_npz(path, n: int) -> None:
    """A map.npz whose ``ids`` member claims ``n`` int64 zeros, deflated to a few hundred KB."""
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.int64))
    header["shape"] = (n,)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("ids.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(2**22)
            for _ in range(n * 8 // len(chunk)):
                f.write(chunk)
        for name, value in (("xy", np.zeros((1, 2), np.float32)), ("fingerprint", np.array("x")),
                            ("method", np.array("tsne")), ("seconds", np.array(1.0))):  # fmt: skip
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, value)


def test_a_damaged_or_planted_map_is_refused_with_the_fix_not_a_500(tmp_path):
    """The index folder is untrusted. Before (c59f047): a 600 KB map.npz of deflated zeros claiming 512 MB
    was unpacked (512 MB traced), a garbage or mis-shaped one raised from numpy (a 500 on /api/map), a
    link to a FIFO was silently no map. Now each is IndexDamagedError naming `mae-index map`, and the
    explorer's /api/map says so."""
    import os
    import tracemalloc

    import pytest

    from indexer.core.errors import IndexDamagedError

    path = tmp_path / layout.MAP_FILE
    _bomb_npz(path, 2**26)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(IndexDamagedError, match=r"unpack to 5368\d{5} bytes, over 67108864"):
            layout.load_map(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 32 * 2**20
    finally:
        tracemalloc.stop()

    path.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(IndexDamagedError, match="mae-index map --index"):
        layout.load_map(tmp_path)
    np.savez(
        path, ids=np.arange(3), xy=np.zeros((2, 2), np.float32), fingerprint="f", method="m", seconds=1.0
    )
    with pytest.raises(IndexDamagedError, match=r"xy of shape \(2, 2\)"):
        layout.load_map(tmp_path)
    path.unlink()
    os.mkfifo(tmp_path / "fifo")
    path.symlink_to(tmp_path / "fifo")
    with pytest.raises(IndexDamagedError, match="a FIFO"):
        layout.load_map(tmp_path)
    path.unlink()
    assert layout.load_map(tmp_path) is None  # no map at all is not damage

    from retriever.embedding_map import MapView

    path.write_bytes(b"garbage")
    meta = MapView(catalog=None, directory=tmp_path).meta()
    assert meta["available"] is False and "damaged" in meta["hint"] and "mae-index map" in meta["hint"]
