"""Items 3, 4, 5, 9 and 10 of issue 16: damaged shards, manifests, Redis schemas and hashes are named,
what is sound is served, and `repair` / `sync` rebuild without spreading a loss."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.core.config import ModelConfig
from indexer.core.errors import IndexDamagedError, IndexMismatchError
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from indexer.stores.redis.store import RedisStore
from retriever.cli import main as search_main
from tests.support.small_builds import build_in_small_shards

needs_redis = pytest.mark.redis


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def _build(encoder, data, index, redis=None):
    return build_in_small_shards(encoder, data, index, redis)


def _shards(index):
    return sorted((index / "shards").glob("part-*.parquet"))


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _query(index, image, model, *extra):
    return CliRunner().invoke(search_main, ["query", str(image), "--index", str(index), "--model", str(model),
                                            "--device", "cpu", "--format", "json", "-k", "10", *extra])  # fmt: skip


# ------------------------------------------------------------------ item 4: damaged shards
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_shard_is_named_and_the_sound_ones_are_served(
    encoder, real_subset, tmp_path, tiny_model_dir, damage, caplog
):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index)
    shards = _shards(index)
    assert len(shards) == 3
    bad = shards[1]
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        bad.write_bytes(b"\x00garbage" * 200)
    info = _cli("info", "--index", index)
    assert info.exit_code == 0, info.output
    assert "images:     4" in info.output and f"shards/{bad.name}" in info.output
    caplog.clear()
    q = _query(index, next(real_subset.rglob("*.tif")), tiny_model_dir)
    assert q.exit_code == 0, q.output
    assert len(json.loads(q.stdout)) == 4
    assert any(f"shards/{bad.name}" in r.getMessage() and "Serving the 4 images" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    v = _cli("verify", "--index", index)
    assert v.exit_code == 1 and f"shards/{bad.name}" in v.output and "DAMAGED" in v.output
    # A writer refuses with the way out, and the way out works.
    b = _cli(
        "build", real_subset, "--index", index, "--model", tiny_model_dir, "--device", "cpu", "--no-progress"
    )
    assert b.exit_code == 1 and "mae-index repair --index" in b.output
    r = _cli("repair", "--index", index)
    assert r.exit_code == 0, r.output
    assert "4 from sound shards" in r.output and (index / "damaged" / bad.name).exists()
    assert _cli("verify", "--index", index).exit_code == 0
    # The two lost images come back from the same build, with their metadata.
    b = _cli(
        "build", real_subset, "--index", index, "--model", tiny_model_dir, "--device", "cpu", "--no-progress"
    )
    assert b.exit_code == 0, b.output
    store = FaissStore(index, read_only=True)
    assert store.count() == 6 and all(r.path and r.well for r in store.get(store.ids()))


def test_every_shard_deleted_is_repaired_from_index_faiss(encoder, real_subset, tmp_path, tiny_model_dir):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index)
    before = FaissStore(index, read_only=True)
    ids, vectors = before.ids(), before.get_vectors(before.ids())
    shutil.rmtree(index / "shards")
    info = _cli("info", "--index", index)
    assert "is missing (it held 2 rows)" in info.output
    r = _cli("repair", "--index", index)
    assert r.exit_code == 0 and "6 from index.faiss without metadata" in r.output
    after = FaissStore(index, read_only=True)
    assert np.array_equal(after.ids(), ids)
    np.testing.assert_array_equal(after.get_vectors(ids), vectors)
    # Following the hint: the same build restores paths and metadata.
    b = _cli(
        "build", real_subset, "--index", index, "--model", tiny_model_dir, "--device", "cpu", "--no-progress"
    )
    assert b.exit_code == 0, b.output
    final = FaissStore(index, read_only=True)
    assert final.count() == 6 and all(r.path and r.well for r in final.get(final.ids()))


def test_verify_checksums_find_a_changed_shard(encoder, real_subset, tmp_path):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index)
    shard = _shards(index)[0]
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    v = _cli("verify", "--index", index)
    assert v.exit_code == 1 and f"shards/{shard.name}" in v.output


@needs_redis
def test_repair_recovers_a_lost_shard_from_redis(encoder, real_subset, tmp_path, redis_config):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index, redis=redis_config)
    _shards(index)[2].unlink()
    r = _cli(
        "repair", "--index", index, "--redis-url", redis_config.url, "--redis-index", redis_config.index_name
    )
    assert r.exit_code == 0 and "2 from Redis" in r.output, r.output
    v = _cli(
        "verify", "--index", index, "--redis-url", redis_config.url, "--redis-index", redis_config.index_name
    )
    assert v.exit_code == 0, v.output


# ------------------------------------------------------------------ item 5: the manifest
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: [m], "is a JSON list, not an object"),
        (lambda m: {k: v for k, v in m.items() if k != "preprocess"}, "lacks preprocess"),
        (lambda m: {**m, "pooling": "cls"}, "was changed since the build"),
        (
            lambda m: {**m, "preprocess": {**m["preprocess"], "resize": "keep-aspect"}},
            "was changed since the build",
        ),
    ],
)
def test_a_manifest_edited_by_hand_is_a_clear_error(
    encoder, real_subset, tmp_path, tiny_model_dir, edit, message
):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index)
    path = index / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    q = _query(index, next(real_subset.rglob("*.tif")), tiny_model_dir)
    assert q.exit_code == 1 and message in q.output and "Traceback" not in q.output
    i = _cli("info", "--index", index)
    assert i.exit_code == 1 and message in i.output


@needs_redis
def test_redis_manifest_checksum(redis_config):
    store = RedisStore(redis_config, dim=4)
    store.write_manifest({"model": {"name": "m"}, "pooling": "mean", "preprocess": {}, "dim": 4})
    raw = json.loads(store.client.get(store.manifest_key))
    assert raw["checksum"].startswith("sha256:")
    store.client.set(store.manifest_key, json.dumps({**raw, "pooling": "iqm"}))
    with pytest.raises(IndexDamagedError, match="changed since the build"):
        store.read_manifest()


# ------------------------------------------------------------------ item 3: sync must not spread a loss
@needs_redis
def test_sync_refuses_to_shrink_the_mirror(encoder, real_subset, tmp_path, redis_config):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index, redis=redis_config)
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    shards_before = sorted(p.name for p in _shards(index))
    redis = RedisStore(redis_config)
    lost = redis.ids()[:3].tolist()
    redis.delete(lost)
    s = _cli("sync", "--index", index, *base)
    assert s.exit_code == 1 and "--allow-shrink" in s.output and "Nothing was changed" in s.output
    assert FaissStore(index, read_only=True).count() == 6
    assert sorted(p.name for p in _shards(index)) == shards_before
    # Following the hint for a loss: repair puts the 3 back into Redis from the mirror.
    assert f"mae-index repair --index {index} --redis-url URL" in s.output
    r = _cli("repair", "--index", index, *base)
    assert r.exit_code == 0 and "Rewrote 3 damaged or lost Redis hashes" in r.output, r.output
    assert redis.count() == 6 and _cli("verify", "--index", index, *base).exit_code == 0
    # A deliberate deletion goes through with --allow-shrink, then compacts.
    redis.delete(lost[:1])
    s = _cli("sync", "--index", index, *base, "--allow-shrink")
    assert s.exit_code == 0, s.output
    assert FaissStore(index, read_only=True).count() == 5 and len(_shards(index)) == 1


@needs_redis
def test_sync_keeps_old_shards_until_the_mirror_is_verified(
    encoder, real_subset, tmp_path, redis_config, monkeypatch
):
    import indexer.stores.faiss.store as fs

    index = tmp_path / "idx"
    _build(encoder, real_subset, index, redis=redis_config)
    before = sorted(p.name for p in _shards(index))
    real_get = fs.FaissStore.get_vectors
    # Injected fault: the mirror reads back other vectors than it was given.
    monkeypatch.setattr(fs.FaissStore, "get_vectors", lambda self, ids: real_get(self, ids) * 0.5)
    s = _cli(
        "sync", "--index", index, "--redis-url", redis_config.url, "--redis-index", redis_config.index_name
    )
    assert s.exit_code == 1 and "old shards were kept" in s.output
    assert set(before) <= {p.name for p in _shards(index)}


# ------------------------------------------------------------------ items 9, 10: Redis schema and hashes
@needs_redis
def test_redis_index_with_another_schema_is_refused(redis_config):
    import redis as redis_py

    c = redis_py.Redis.from_url(redis_config.url)
    c.execute_command("FT.CREATE", redis_config.index_name, "ON", "HASH", "PREFIX", 1, redis_config.prefix,
                      "SCHEMA", "plate", "TEXT", "well", "TAG", "SEPARATOR", "\x1f", "CASESENSITIVE",
                      "site", "TAG", "vector", "VECTOR", "FLAT", 6, "TYPE", "FLOAT32", "DIM", 4,
                      "DISTANCE_METRIC", "COSINE")  # fmt: skip
    for dim in (4, None):  # writer and reader
        with pytest.raises(IndexMismatchError) as e:
            RedisStore(redis_config, dim=dim)
        text = str(e.value)
        assert "field 'plate' of type TEXT" in text and "field 'site' of type TAG" in text
        assert "no TAG field 'row'" in text and "no NUMERIC field 'z'" in text


@needs_redis
def test_build_checks_every_hash_was_indexed(encoder, real_subset, tmp_path, redis_config):
    from indexer.stores.redis.store import RedisStore as RS

    store = RS(redis_config, dim=encoder.dim)
    # A hash the index cannot take (a vector of the wrong size) under the index's prefix.
    store.client.hset(f"{redis_config.prefix}77", mapping={"path": "x.tif", "vector": b"abc"})
    r = _cli("build", real_subset, "--index", tmp_path / "idx", "--model", encoder.config.name, "--device", "cpu",
             "--no-progress", "--redis-url", redis_config.url, "--redis-index", redis_config.index_name)  # fmt: skip
    assert r.exit_code == 1 and "not searchable" in r.output and "blob size 3" in r.output


@needs_redis
@pytest.mark.parametrize("damage", ["no-vector", "corrupt"])
def test_damaged_hash_is_reported_by_verify_and_sync_and_repaired(
    encoder, real_subset, tmp_path, redis_config, damage
):
    index = tmp_path / "idx"
    _build(encoder, real_subset, index, redis=redis_config)
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    store = RedisStore(redis_config)
    victim = int(store.ids()[2])
    key = f"{redis_config.prefix}{victim}"
    if damage == "no-vector":
        store.client.hdel(key, "vector")
    else:
        store.client.hset(key, "vector", b"\x01\x02\x03")
    v = _cli("verify", "--index", index, *base)
    assert v.exit_code == 1 and str(victim) in v.output and "missing or corrupt vector" in v.output
    assert "Traceback" not in v.output
    s = _cli("sync", "--index", tmp_path / "mirror", *base)
    assert s.exit_code == 1 and str(victim) in s.output
    assert FaissStore(tmp_path / "mirror", read_only=True).count() == 5
    r = _cli("repair", "--index", index, *base)
    assert r.exit_code == 0 and "Rewrote 1 damaged or lost Redis hashes" in r.output, r.output
    assert _cli("verify", "--index", index, *base).exit_code == 0
