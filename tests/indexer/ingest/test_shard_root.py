"""Where an index's Ray shards go (indexer.ingest.ray_shards.shard_root), and the uid they are kept under.

Pure and real-folder checks, no Ray: the end-to-end runs are in test_ray_shard_url.py."""

from pathlib import Path

import numpy as np

from indexer.core.records import ImageRecord
from indexer.ingest.ray_shards import SHARD_DIR, shard_root
from indexer.stores.binding import UID_KEY, bind_stores
from indexer.stores.faiss.store import FaissStore
from indexer.stores.manifest import build_manifest


def test_the_default_root_is_the_folders_own_whatever_the_manifest(tmp_path):
    want = str(tmp_path / "idx" / SHARD_DIR)
    assert shard_root(tmp_path / "idx", None, None) == want
    assert shard_root(tmp_path / "idx", None, {UID_KEY: "a" * 32}) == want


def test_a_custom_url_is_split_by_index_uid(tmp_path):
    a, b = {UID_KEY: "a" * 32}, {UID_KEY: "b" * 32}
    assert shard_root(tmp_path / "x", "s3://bucket/shards/", a) == "s3://bucket/shards/" + "a" * 32
    assert shard_root(tmp_path / "y", "s3://bucket/shards", b) == "s3://bucket/shards/" + "b" * 32
    # The uid decides, not the folder: the same index reached by another path keeps its shards.
    assert shard_root(Path("/elsewhere"), "/tmp/shards", a) == shard_root(tmp_path / "x", "/tmp/shards", a)
    # A new folder (no manifest yet) has no shards under a custom URL.
    assert shard_root(tmp_path / "new", "/tmp/shards", None) is None


def test_a_folder_made_before_uids_gets_one_when_built_into_and_keeps_it(tmp_path):
    store = FaissStore(tmp_path / "idx", dim=4)
    legacy = build_manifest({"name": "m"}, "mean", {}, 4)
    legacy.pop(UID_KEY)
    store.write_manifest(legacy)
    store.add(np.eye(4, dtype=np.float32)[:1], [ImageRecord(id=1, path="a.tif")])
    store.flush()
    assert UID_KEY not in store.read_manifest()
    bind_stores([store], [store.read_manifest()], build_manifest({"name": "m"}, "mean", {}, 4))
    uid = store.read_manifest()[UID_KEY]
    assert len(uid) == 32 and store.read_manifest()["created"] == legacy["created"]  # the rest unchanged
    bind_stores([store], [store.read_manifest()], build_manifest({"name": "m"}, "mean", {}, 4))
    assert store.read_manifest()[UID_KEY] == uid and store.count() == 1
    store.close()
    assert FaissStore(tmp_path / "idx", read_only=True).read_manifest()[UID_KEY] == uid  # sealed, durable


def test_shards_left_directly_under_a_custom_url_by_an_older_run_are_reported_not_ignored(tmp_path, caplog):
    """Before shards were kept per index, a killed run left its finished shards directly under a custom
    URL. No index imports them now (each reads ``<url>/<uid>``), so their images would be embedded again
    without a word: the build says where they are and what to do with them."""
    import logging

    from indexer.ingest.ray_shards import warn_loose_shards

    url = tmp_path / "shards"
    (url / ("a" * 32)).mkdir(parents=True)
    (url / ("a" * 32) / "own.parquet").write_bytes(b"x")  # an index's own, under its uid: not loose
    assert warn_loose_shards(str(url)) == []
    for name in ("w0-1.parquet", "w1-1.parquet"):
        (url / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="indexer.ingest.ray_shards"):
        loose = warn_loose_shards(str(url))
    assert [Path(p).name for p in loose] == ["w0-1.parquet", "w1-1.parquet"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "2 Ray shard" in message and "w0-1.parquet" in message and "<shard_url>/<index_uid>/" in message
    assert warn_loose_shards(str(tmp_path / "absent")) == []
