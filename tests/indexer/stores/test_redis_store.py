"""Redis-specific behaviour, against a real Redis Stack server."""

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.config import RedisConfig
from indexer.errors import IndexMismatchError, StoreFullError, StoreUnavailableError
from indexer.stores.base import ImageRecord, MetadataFilter
from indexer.stores.redis_store import RedisStore, escape_tag, redact_url, render_filter

pytestmark = pytest.mark.redis


def _unit(n, dim, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_schema_in_ft_info(redis_config):
    cfg = replace(redis_config, algorithm="HNSW", m=8, ef_construction=50, ef_runtime=30)
    s = RedisStore(cfg, dim=24)
    info = s.client.ft(cfg.index_name).info()
    text = json.dumps(info, default=lambda b: b.decode() if isinstance(b, bytes) else str(b))
    for token in ("plate", "well", "row", "channel", "TAG", "NUMERIC", "HNSW", "FLOAT32", "COSINE"):
        assert token in text, token
    assert '"dim", 24' in text.replace("'", '"') or "24" in text


def test_hnsw_and_float16(redis_config):
    v = _unit(200, 48)
    recs = [ImageRecord(id=i, path=f"{i}") for i in range(200)]
    s = RedisStore(replace(redis_config, algorithm="HNSW", dtype="FLOAT16"), dim=48)
    s.add(v, recs)
    np.testing.assert_allclose(s.get_vectors([3, 7]), v[[3, 7]], atol=1e-3)
    hits = s.search(v[:20], 5)
    assert all(h[0].id == i and h[0].score > 0.999 for i, h in enumerate(hits))


def test_existing_index_with_other_settings_is_refused(redis_config):
    RedisStore(redis_config, dim=16)
    with pytest.raises(IndexMismatchError, match="DIM 16"):
        RedisStore(redis_config, dim=32)
    with pytest.raises(IndexMismatchError, match="algorithm"):
        RedisStore(replace(redis_config, algorithm="HNSW"), dim=16)


HOSTILE = ["pl ate{x}|y-@z", 'a"b\'c', "x*", "back\\slash", "colon:semi;", "(paren)", "Ünïcode 板", "-neg", "@well:{A01}",
           "a|b", "}", "~tilde", "dollar$K", "in ner  space"]  # fmt: skip


def test_hostile_filter_values_match_exactly(redis_config):
    s = RedisStore(redis_config, dim=8)
    v = _unit(len(HOSTILE) * 2, 8)
    recs = [
        ImageRecord(id=i, path=f"p{i}", plate=HOSTILE[i % len(HOSTILE)], well="A01") for i in range(len(v))
    ]
    s.add(v, recs)
    for value in HOSTILE:
        (hits,) = s.search(v[:1], 100, MetadataFilter(plate=[value]))
        assert sorted(h.id for h in hits) == sorted(r.id for r in recs if r.plate == value), value
    # A value that looks like query syntax is data: it matches nothing and widens nothing.
    (hits,) = s.search(v[:1], 100, MetadataFilter(plate=["* | @well:{A01}"]))
    assert hits == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
                .filter(lambda t: t.strip() == t and t), min_size=2, max_size=5, unique=True))  # fmt: skip
def test_fuzzed_tag_values_never_change_query_meaning(redis_config, plates):
    s = RedisStore(redis_config, dim=4)
    s.drop()
    s = RedisStore(redis_config, dim=4)
    v = _unit(len(plates) * 2, 4)
    recs = [ImageRecord(id=i, path="p", plate=plates[i % len(plates)]) for i in range(len(v))]
    s.add(v, recs)
    for p in plates:
        (hits,) = s.search(v[:1], 100, MetadataFilter(plate=[p]))
        assert sorted(h.id for h in hits) == [r.id for r in recs if r.plate == p]


def test_control_characters_are_refused():
    from indexer.errors import ConfigError

    with pytest.raises(ConfigError, match="control characters"):
        MetadataFilter(plate=["a\x08b"])


def test_render_filter_uses_params_and_escapes():
    text, params = render_filter(MetadataFilter(well=["a1"], site=[2], plate=["x y"], z_min=3))
    assert "@well:{A01}" in text and "@plate:{x\\ y}" in text and "$site_0" in text and params["site_0"] == 2
    assert params["z_lo"] == 3 and params["z_hi"] == "+inf"
    assert escape_tag("a|b-c") == "a\\|b\\-c"


def test_password_never_leaks(redis_server):
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("rediss://:s3cret@host/0") == "rediss://:***@host/0"
    url = "redis://user:s3cret@127.0.0.1:1/0"  # nothing listens on port 1
    with pytest.raises(StoreUnavailableError) as e:
        RedisStore(RedisConfig(url=url, retries=1, socket_timeout=0.5), dim=4)
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


def test_auth_url_and_wrong_password(tmp_path):
    from indexer.redis_server import RedisServer

    with RedisServer(data_dir=tmp_path, password="pa ss@word") as srv:
        url = f"redis://:{'pa%20ss%40word'}@127.0.0.1:{srv.port}/0"
        s = RedisStore(RedisConfig(url=url, index_name="auth"), dim=4)
        s.add(_unit(2, 4), [ImageRecord(id=1, path="a"), ImageRecord(id=2, path="b")])
        assert s.count() == 2
        with pytest.raises(StoreUnavailableError, match="refused the credentials") as e:
            RedisStore(RedisConfig(url=f"redis://:wrong@127.0.0.1:{srv.port}/0", retries=0), dim=4)
        assert "wrong" not in str(e.value)


def test_server_without_query_engine_is_explained(tmp_path):
    from indexer.redis_server import RedisServer

    with RedisServer(data_dir=tmp_path, modules=False) as srv:
        with pytest.raises(StoreUnavailableError, match="Redis Stack 7.2\\+ or Redis 8"):
            RedisStore(RedisConfig(url=srv.url), dim=4)


def test_full_redis_gives_a_clear_error(tmp_path):
    from indexer.redis_server import RedisServer

    with RedisServer(data_dir=tmp_path, maxmemory="3mb") as srv:
        s = RedisStore(RedisConfig(url=srv.url, index_name="full"), dim=256)
        v = _unit(500, 256)
        with pytest.raises(StoreFullError, match="maxmemory"):
            for i in range(0, 100000, 500):
                s.add(v, [ImageRecord(id=i + j, path=f"{i + j}") for j in range(500)])


def test_build_writes_both_then_verify_and_sync(tmp_path, redis_config, tiny_model_dir, real_images):
    from indexer.cli import main
    from retriever.cli import main as search_main

    runner = CliRunner()
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    r = runner.invoke(main, ["build", str(real_images[0].parent), "--index", str(tmp_path / "idx"), "--model",
                             str(tiny_model_dir), "--device", "cpu", "--no-progress", "--format", "json", *base])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["indexed"] == 20
    v = runner.invoke(main, ["verify", "--index", str(tmp_path / "idx"), *base, "--format", "json"])
    assert v.exit_code == 0, v.output
    rep = json.loads(v.stdout)
    assert rep["ok"] and rep["count_primary"] == rep["count_mirror"] == 20 and rep["recall_at_k"] == 1.0
    # Same results from both backends.
    q = [
        "query",
        str(real_images[3]),
        "--index",
        str(tmp_path / "idx"),
        "-k",
        "5",
        "--format",
        "json",
        "--device",
        "cpu",
    ]
    via_redis = json.loads(runner.invoke(search_main, [*q, *base]).stdout)
    via_faiss = json.loads(runner.invoke(search_main, [*q, "--backend", "faiss"]).stdout)
    assert [h["id"] for h in via_redis] == [h["id"] for h in via_faiss]
    assert via_redis[0]["score"] >= 0.999
    # A mirror rebuilt from Redis on "another machine" verifies too.
    s = runner.invoke(main, ["sync", "--index", str(tmp_path / "mirror"), *base])
    assert s.exit_code == 0, s.output
    v2 = runner.invoke(main, ["verify", "--index", str(tmp_path / "mirror"), *base])
    assert v2.exit_code == 0 and "OK" in v2.stdout
    # Divergence is detected: delete one image from Redis.
    store = RedisStore(redis_config)
    store.delete(store.ids()[:1].tolist())
    v3 = runner.invoke(main, ["verify", "--index", str(tmp_path / "idx"), *base])
    assert v3.exit_code == 1 and "DIVERGED" in v3.stdout
    # A re-run restores it in both stores.
    runner.invoke(main, ["build", str(real_images[0].parent), "--index", str(tmp_path / "idx"), "--model",
                         str(tiny_model_dir), "--device", "cpu", "--no-progress", *base])  # fmt: skip
    assert runner.invoke(main, ["verify", "--index", str(tmp_path / "idx"), *base]).exit_code == 0


def test_build_with_another_model_is_refused_by_the_redis_manifest(
    tmp_path, redis_config, tiny_model_dir, real_images
):
    from indexer.cli import main
    from indexer.model_presets import create_model

    other = create_model(tmp_path / "other", "test", seed=1)
    base = [
        "--redis-url",
        redis_config.url,
        "--redis-index",
        redis_config.index_name,
        "--device",
        "cpu",
        "--no-progress",
    ]
    runner = CliRunner()
    ok = runner.invoke(
        main,
        ["build", str(real_images[0]), "--index", str(tmp_path / "a"), "--model", str(tiny_model_dir), *base],
    )
    assert ok.exit_code == 0, ok.output
    # A fresh FAISS folder, the same Redis index: the Redis manifest refuses the other weights.
    bad = runner.invoke(
        main, ["build", str(real_images[1]), "--index", str(tmp_path / "b"), "--model", str(other), *base]
    )
    assert bad.exit_code == 1 and "Redis index" in bad.output and "model" in bad.output
    assert "redis://" not in bad.output or "***" in bad.output or "@" not in bad.output


def test_hnsw_float16_build_then_query_and_verify_with_defaults(
    tmp_path, redis_config, tiny_model_dir, real_images
):
    from indexer.cli import main
    from retriever.cli import main as search_main

    runner = CliRunner()
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    r = runner.invoke(main, ["build", str(real_images[0].parent), "--index", str(tmp_path / "idx"), "--model",
                             str(tiny_model_dir), "--device", "cpu", "--no-progress", "--redis-algorithm", "hnsw",
                             "--redis-dtype", "float16", "--hnsw-m", "8", *base])  # fmt: skip
    assert r.exit_code == 0, r.output
    # The query side does not repeat the index settings: it adopts the existing index's.
    q = runner.invoke(
        search_main, ["query", str(real_images[2]), "-k", "3", "--format", "json", "--device", "cpu", *base]
    )
    assert q.exit_code == 0, q.output
    assert json.loads(q.stdout)[0]["path"] == str(real_images[2])
    v = runner.invoke(main, ["verify", "--index", str(tmp_path / "idx"), *base, "--format", "json"])
    rep = json.loads(v.stdout)
    assert v.exit_code == 0 and rep["vector_tolerance"] == 1e-3 and rep["recall_at_k"] >= 0.99


def _openssl(*args, cwd):
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_tls_url_works_and_an_untrusted_certificate_is_refused(tmp_path):
    import shutil

    from indexer.redis_server import RedisServer

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.crt",
             "-days", "1", "-extfile", "ext.cnf", cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt", "-days", "1",
             "-subj", "/CN=other-ca", cwd=d)  # fmt: skip
    with RedisServer(
        data_dir=d / "data", password="tls secret", tls=(d / "srv.crt", d / "srv.key", d / "ca.crt")
    ) as srv:
        assert srv.url.startswith("rediss://")
        s = RedisStore(RedisConfig(url=srv.url, index_name="tls"), dim=4)
        s.add(_unit(3, 4), [ImageRecord(id=i, path=str(i)) for i in range(3)])
        assert s.count() == 3 and "tls secret" not in s.location
        untrusted = srv.url.replace(str(d / "ca.crt"), str(d / "other.crt"))
        with pytest.raises(StoreUnavailableError) as e:
            RedisStore(RedisConfig(url=untrusted, retries=0, socket_timeout=2), dim=4)
        assert "tls secret" not in str(e.value)


def test_robustness_through_redis_reports_ann_recall(tmp_path, redis_config, tiny_model_dir, real_images):
    from eval.cli import main as eval_main
    from indexer.cli import main

    runner = CliRunner()
    base = ["--redis-url", redis_config.url, "--redis-index", redis_config.index_name]
    r = runner.invoke(main, ["build", str(real_images[0].parent), "--index", str(tmp_path / "idx"), "--model",
                             str(tiny_model_dir), "--device", "cpu", "--no-progress", *base])  # fmt: skip
    assert r.exit_code == 0, r.output
    e = runner.invoke(eval_main, ["robustness", "--index", str(tmp_path / "idx"), *base, "--queries", "4", "--perturb",
                                  "gaussian_noise", "--severities", "0,3", "--device", "cpu", "--out", str(tmp_path / "rep")])  # fmt: skip
    assert e.exit_code == 0, e.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["index"]["backend"] == "redis" and rep["ann_recall_at_k"] == 1.0
