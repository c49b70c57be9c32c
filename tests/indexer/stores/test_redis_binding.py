"""An index folder knows the Redis index it mirrors (issue 15, item 1), and the hints about Redis
indexes work when followed (item 8). Real Redis, real builds."""

import json

import pytest
import redis as redis_py
from click.testing import CliRunner

from indexer.cli import main as index_main
from indexer.stores.manifest import seal_manifest
from indexer.stores.redis.store import redact_url
from retriever.cli import main as search_main

needs_redis = pytest.mark.redis


@pytest.fixture
def env_url(redis_server, monkeypatch):
    """MAE_REDIS_URL exported, as the README suggests; every Redis index the test made is dropped after."""
    monkeypatch.setenv("MAE_REDIS_URL", redis_server.url)
    client = redis_py.Redis.from_url(redis_server.url)
    before = {i.decode() for i in client.execute_command("FT._LIST")}
    yield redis_server.url
    for name in {i.decode() for i in client.execute_command("FT._LIST")} - before:
        client.execute_command("FT.DROPINDEX", name, "DD")
        client.delete(f"{name}:manifest")
    client.close()


def _build(data, index, model, *extra):
    return CliRunner().invoke(index_main, ["build", *map(str, data), "--index", str(index), "--model",
                                           str(model), "--device", "cpu", "--no-progress", *extra])  # fmt: skip


def _query(image, index, *extra):
    return CliRunner().invoke(search_main, ["query", str(image), "--index", str(index), "-k", "50",
                                            "--device", "cpu", "--format", "json", *extra])  # fmt: skip


@needs_redis
def test_each_folder_gets_its_own_redis_index(env_url, tmp_path, tiny_model_dir, real_images):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _build(real_images[:5], a, tiny_model_dir).exit_code == 0
    assert _build(real_images[5:12], b, tiny_model_dir).exit_code == 0
    ra = json.loads((a / "manifest.json").read_text())["redis"]
    rb = json.loads((b / "manifest.json").read_text())["redis"]
    assert ra["index"] != rb["index"] and ra["server"] == redact_url(env_url)
    # The folder's query answers from its own Redis index: 5 hits, not 12 from a shared one.
    r = _query(real_images[0], a)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 5 and {row["path"] for row in rows} == {str(p) for p in real_images[:5]}
    assert {(row["store"], row["index"]) for row in rows} == {("redis", ra["index"])}
    # ... and the other build did not touch it.
    v = CliRunner().invoke(index_main, ["verify", "--index", str(a)])
    assert v.exit_code == 0 and "OK" in v.stdout and ra["index"] in v.stdout
    table = _query(real_images[0], a, "--format", "table")
    assert f"Redis index '{ra['index']}'" in table.output
    faiss = _query(real_images[0], a, "--backend", "faiss")
    assert {(row["store"], row["index"]) for row in json.loads(faiss.stdout)} == {("faiss", str(a))}


@needs_redis
def test_a_folder_and_another_folders_redis_index_are_refused(env_url, tmp_path, tiny_model_dir, real_images):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _build(real_images[:5], a, tiny_model_dir).exit_code == 0
    assert _build(real_images[5:8], b, tiny_model_dir).exit_code == 0
    name_a = json.loads((a / "manifest.json").read_text())["redis"]["index"]
    # A build of a new folder into a's Redis index would mix two indexes' data: refused, nothing written.
    c = _build(real_images[8:10], tmp_path / "c", tiny_model_dir, "--redis-index", name_a)
    assert c.exit_code == 1, c.output
    assert "another index folder" in c.output and name_a in c.output
    # Asking for another Redis index than the folder records is a usage error (exit 2) ...
    r = _query(real_images[0], b, "--redis-index", name_a)
    assert r.exit_code == 2 and name_a in r.output and str(b) in r.output
    # ... and a folder whose record leads to another folder's Redis index is refused (exit 1).
    m = json.loads((b / "manifest.json").read_text())
    m["redis"]["index"] = name_a
    # Sealed again, as a writer would: an unsealed edit is refused as "changed since the build".
    (b / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    r = _query(real_images[0], b)
    assert (
        r.exit_code == 1 and "another index folder" in r.output and name_a in r.output and str(b) in r.output
    )
    v = CliRunner().invoke(index_main, ["verify", "--index", str(b)])
    assert v.exit_code == 1 and "another index folder" in v.output


@needs_redis
def test_a_legacy_folder_without_a_record_is_checked_by_count(env_url, tmp_path, tiny_model_dir, real_images):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _build(real_images[:5], a, tiny_model_dir, "--redis-index", "legacyA").exit_code == 0
    assert _build(real_images[5:8], b, tiny_model_dir, "--redis-index", "legacyB").exit_code == 0
    for folder in (a, b):  # what a folder built before this change looks like
        m = json.loads((folder / "manifest.json").read_text())
        m.pop("redis"), m.pop("index_uid"), m.pop("checksum")
        (folder / "manifest.json").write_text(json.dumps(m))
        state = json.loads((folder / "index.state.json").read_text())
        state.pop("index_uid")  # a state file from before the uid names none either
        (folder / "index.state.json").write_text(json.dumps(state))
    client = redis_py.Redis.from_url(env_url)
    for name in ("legacyA", "legacyB"):
        m = json.loads(client.get(f"{name}:manifest"))
        m.pop("redis"), m.pop("index_uid"), m.pop("checksum")
        client.set(f"{name}:manifest", json.dumps(m))
    r = _query(real_images[0], a)
    assert r.exit_code == 2 and "records no Redis index" in r.output and "--redis-index" in r.output
    r = _query(real_images[0], a, "--redis-index", "legacyB")
    assert r.exit_code == 1 and "5" in r.output and "3" in r.output and "legacyB" in r.output
    r = _query(real_images[0], a, "--redis-index", "legacyA")
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 5


@needs_redis
def test_json_summary_and_health_name_the_stores(env_url, tmp_path, tiny_model_dir, real_images):
    from indexer.stores.faiss.store import FaissStore
    from indexer.stores.redis.store import RedisStore
    from retriever.http.service import QueryService
    from retriever.search import Retriever

    r = _build(real_images[:3], tmp_path / "a", tiny_model_dir, "--format", "json")
    stores = json.loads(r.stdout)["stores"]
    name = json.loads((tmp_path / "a" / "manifest.json").read_text())["redis"]["index"]
    assert stores == [{"store": "faiss", "index": str(tmp_path / "a")},
                      {"store": "redis", "index": name, "server": redact_url(env_url)}]  # fmt: skip
    from indexer.core.config import RedisConfig

    health = QueryService(
        Retriever.open(RedisStore(RedisConfig(url=env_url, index_name=name)), lazy=True)
    ).health()
    assert health["store"] == "redis" and health["index"] == name and health["count"] == 3
    health = QueryService(Retriever.open(FaissStore(tmp_path / "a", read_only=True), lazy=True)).health()
    assert health["store"] == "faiss" and health["index"] == str(tmp_path / "a")


@needs_redis
def test_the_hint_for_an_index_with_other_settings_works(redis_config, tmp_path, tiny_model_dir, real_images):
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    assert _build(real_images[:2], tmp_path / "a", tiny_model_dir, *base).exit_code == 0
    r = _build(real_images[:2], tmp_path / "b", tiny_model_dir, *base, "--redis-algorithm", "HNSW")
    assert r.exit_code == 1 and "--force" not in r.output
    hint = r.output.split("`")[1]
    assert hint.startswith("mae-index drop-redis")
    # Follow it, and the build goes through.
    d = CliRunner().invoke(index_main, [*hint.split()[1:], "--redis-url", redis_config.url])
    assert d.exit_code == 0, d.output
    r = _build(real_images[:2], tmp_path / "b", tiny_model_dir, *base, "--redis-algorithm", "HNSW")
    assert r.exit_code == 0, r.output
