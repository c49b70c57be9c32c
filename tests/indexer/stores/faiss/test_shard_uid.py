"""Issue 31, item 13: every shard carries its folder's index uid (parquet schema metadata), so another
index's shard copied into a folder is damage that ``repair`` refuses, even where no state file vouches
for the folder's shards (one deleted, or a shard added beside it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexer.core.errors import IndexDamagedError
from indexer.core.records import ImageRecord
from indexer.stores.faiss.shards import SHARDS, UID_KEY, read_shard
from indexer.stores.faiss.store import INDEX_STATE, FaissStore
from indexer.stores.mirror import sync_and_compact
from indexer.stores.repair import DAMAGED_DIR, repair_index

OLD = Path(__file__).resolve().parents[3] / "data" / "index-b690aef" / "flat"


def _manifest(uid: str | None, dim: int = 8) -> dict:
    m = {"model": {"name": "m"}, "pooling": "mean", "preprocess": {}, "dim": dim}
    return {**m, "index_uid": uid} if uid else m


def _fill(folder: Path, uid: str | None, shards: int = 2, per: int = 3, start: int = 0) -> None:
    """A folder of ``shards`` shards of ``per`` unit vectors each (ids from ``start``), its manifest naming
    ``uid`` (written before the first shard, as a build does)."""
    rng = np.random.default_rng(start)
    with FaissStore(folder, dim=8) as store:
        store.write_manifest(_manifest(uid))
        for s in range(shards):
            v = rng.normal(size=(per, 8)).astype(np.float32)
            ids = range(start + s * per, start + (s + 1) * per)
            store.add(v / np.linalg.norm(v, axis=1, keepdims=True), [ImageRecord(i, f"{i}.tif") for i in ids])
            store.flush()


def _uids(folder: Path) -> list[str | None]:
    out = []
    for p in sorted((folder / SHARDS).glob("part-*.parquet")):
        raw = (pq.read_schema(p).metadata or {}).get(UID_KEY)
        out.append(raw.decode() if raw else None)
    return out


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / SHARDS).iterdir())


def test_every_new_shard_carries_the_folders_uid_and_opens_sound(tmp_path):
    _fill(tmp_path / "a", "a" * 32, shards=3)
    assert _uids(tmp_path / "a") == ["a" * 32] * 3  # c59f047: [None, None, None]
    with FaissStore(tmp_path / "a", read_only=True) as store:
        assert store.damage == [] and store.count() == 9
    # A manifest without a uid (before uids): shards without one, accepted as before.
    _fill(tmp_path / "no-uid", None)
    assert _uids(tmp_path / "no-uid") == [None, None]
    with FaissStore(tmp_path / "no-uid", read_only=True) as store:
        assert store.damage == [] and store.count() == 6


def test_a_synced_mirror_and_a_repaired_folder_write_shards_with_the_uid(tmp_path):
    _fill(tmp_path / "src", "5" * 32)
    with (
        FaissStore(tmp_path / "src", read_only=True) as source,
        FaissStore(tmp_path / "mirror", dim=8) as target,
    ):
        sync_and_compact(source, target)  # the mirror takes the source's manifest, then its rows
    assert _uids(tmp_path / "mirror") == ["5" * 32]  # compacted into one shard; c59f047: [None]
    # repair rewrites a damaged folder as one new shard: it carries the uid too.
    bad = tmp_path / "src" / SHARDS / "part-000001.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    report = repair_index(tmp_path / "src")
    assert (report.from_shards, report.from_snapshot, report.total) == (3, 3, 6)  # index.faiss kept them
    assert _names(tmp_path / "src") == ["part-000002.parquet"] and _uids(tmp_path / "src") == ["5" * 32]


@pytest.mark.parametrize("state", ["kept", "deleted"])
def test_another_indexs_shard_copied_in_is_damage_and_repair_moves_nothing(tmp_path, state):
    _fill(tmp_path / "a", "a" * 32)
    _fill(tmp_path / "b", "b" * 32, start=100)
    # b's second shard, as a's third: a state file of a's does not list it (a crashed writer's, it would
    # seem), and without one nothing vouches for any shard.
    shutil.copy(
        tmp_path / "b" / SHARDS / "part-000001.parquet", tmp_path / "a" / SHARDS / "part-000002.parquet"
    )
    if state == "deleted":
        (tmp_path / "a" / INDEX_STATE).unlink()
    with FaissStore(tmp_path / "a", read_only=True) as store:
        # c59f047: [] and 9 images, 3 of them b's
        assert store.damage == [
            f"shard shards/part-000002.parquet belongs to another index (index uid {'b' * 32}; this folder's "
            f"manifest says {'a' * 32}): it was copied from another index folder (or manifest.json was replaced "
            "since it was written); move it out of shards/ and `repair` rebuilds this folder from the rest, or "
            "copy that index's whole folder, manifest included"
        ]
        assert store.count() == 6 and store.ids().max() == 5  # the sound shards are served
    before = _names(tmp_path / "a")
    with pytest.raises(IndexDamagedError, match="not repaired: shard shards/part-000002.parquet belongs to"):
        repair_index(tmp_path / "a")  # c59f047: "sound", and the next writer made b's images a's
    assert _names(tmp_path / "a") == before and not (tmp_path / "a" / DAMAGED_DIR).exists()
    with pytest.raises(IndexDamagedError, match="belongs to another index"):
        FaissStore(tmp_path / "a")  # a writer refuses, as for any damage


def test_the_uid_is_read_from_the_footer_before_any_row(tmp_path):
    _fill(tmp_path / "b", "b" * 32, shards=1, per=200)
    p = tmp_path / "b" / SHARDS / "part-000000.parquet"
    footer = pq.read_metadata(p).serialized_size + 8  # the footer, its length and the closing magic
    data = bytearray(p.read_bytes())
    data[4 : len(data) - footer] = b"\xab" * (len(data) - footer - 4)  # every row group overwritten
    p.write_bytes(bytes(data))
    assert "belongs to another index" in read_shard(p, None, 8, "a" * 32)
    assert "cannot be read" in read_shard(p, None, 8, "b" * 32)  # the rows are garbage indeed


def test_an_old_folder_takes_new_shards_with_its_uid_but_not_an_old_shard_after_them(tmp_path):
    folder = tmp_path / "flat"
    shutil.copytree(OLD, folder)
    uid = "30afc7947a874c0f8f4662ba1a1ffebc"  # its manifest's; its shards, written by b690aef, carry none
    with FaissStore(folder) as store:
        dim, count = store.dim, store.count()
        v = np.ones((1, dim), dtype=np.float32) / np.sqrt(dim)
        store.add(v, [ImageRecord(10**15, "new.tif")])
    assert _uids(folder) == [None, uid]  # c59f047: [None, None]
    with FaissStore(folder, read_only=True) as store:
        assert store.damage == [] and store.count() == count + 1  # old shards first, then new: an upgrade
    # An old shard after a new one was copied in: whose images it holds, nothing says.
    shutil.copy(OLD / SHARDS / "part-000000.parquet", folder / SHARDS / "part-000002.parquet")
    with FaissStore(folder, read_only=True) as store:
        assert store.damage == [
            f"shard shards/part-000002.parquet carries no index uid, though shards/part-000001.parquet before "
            f"it carries this folder's ({uid}): it was copied in from an older index folder; move it out of "
            "shards/ if it is not this index's, or rebuild the index"
        ]
    before = _names(folder)
    with pytest.raises(IndexDamagedError, match="not repaired: shard shards/part-000002.parquet carries no"):
        repair_index(folder)
    assert _names(folder) == before
