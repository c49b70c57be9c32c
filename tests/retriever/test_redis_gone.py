"""Issue 31, item 15: Redis restarted empty under a running server answers 503 naming the fix, not 500."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from retriever.cli import build_app
from retriever.http.app import Request
from retriever.http.service import QueryService
from retriever.search import Retriever


@pytest.mark.redis
def test_health_and_queries_answer_503_when_redis_lost_the_index(redis_config, tmp_path, tiny_model_dir,
                                                                 real_images):  # fmt: skip
    import redis as redis_py

    from indexer.cli import main
    from indexer.stores.redis.store import RedisStore

    r = CliRunner().invoke(main, ["build", *map(str, real_images[:3]), "--index", str(tmp_path / "idx"),
                                  "--model", str(tiny_model_dir), "--device", "cpu", "--no-progress",
                                  "--redis-url", redis_config.url, "--redis-index", redis_config.index_name])  # fmt: skip
    assert r.exit_code == 0, r.output
    store = RedisStore(redis_config)
    service = QueryService(Retriever.open(store, device="cpu", index_dir=tmp_path / "idx"))
    app = build_app(service, tmp_path / "idx", [])
    service.compute = lambda fn, *args, **kw: fn(*args)
    redis_py.Redis.from_url(redis_config.url).flushdb()  # what a restart without persistence leaves
    for method, path, body in (("GET", "/health", b""),
                               ("POST", "/query", real_images[5].read_bytes())):  # fmt: skip
        resp = app.handle(Request(method, path, {}, body, {}))
        out = json.loads(resp.body)
        assert resp.status == 503, (path, out)  # b690aef: 500
        text = json.dumps(out)
        assert "no such index" in text and "mae-index repair" in text, out


@pytest.mark.redis
def test_repair_restores_the_manifest_redis_lost(redis_config, tmp_path, tiny_model_dir, real_images):
    import redis as redis_py

    from indexer.cli import main
    from indexer.stores.faiss.store import FaissStore
    from indexer.stores.redis.store import RedisStore

    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    r = CliRunner().invoke(main, ["build", *map(str, real_images[:3]), "--index", str(tmp_path / "idx"),
                                  "--model", str(tiny_model_dir), "--device", "cpu", "--no-progress", *base])  # fmt: skip
    assert r.exit_code == 0, r.output
    redis_py.Redis.from_url(redis_config.url).flushdb()
    r = CliRunner().invoke(main, ["repair", "--index", str(tmp_path / "idx"), *base])
    assert r.exit_code == 0 and "Rewrote the Redis manifest" in r.output, r.output
    redis = RedisStore(redis_config)
    assert redis.count() == 3  # b690aef: 3 hashes back but no manifest, so no query worked
    assert redis.read_manifest() == FaissStore(tmp_path / "idx", read_only=True).read_manifest()
    v = CliRunner().invoke(main, ["verify", "--index", str(tmp_path / "idx"), *base])
    assert v.exit_code == 0, v.output
