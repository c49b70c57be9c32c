"""Redis-specific behaviour, against real Redis Stack servers (the session's, and private ones for
plain Redis, a memory cap, a password or TLS). The shared behaviour is in test_store_contract.py."""

import json
import subprocess
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from indexer.core.config import RedisConfig
from indexer.core.errors import ConfigError, IndexMismatchError, StoreFullError, StoreUnavailableError
from indexer.core.records import ImageRecord, MetadataFilter
from indexer.stores.redis.errors import redact_url
from indexer.stores.redis.query import escape_tag, render_filter
from indexer.stores.redis.store import RedisStore

needs_redis = pytest.mark.redis


def _unit(n, dim, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _info(store: RedisStore) -> dict:
    """FT.INFO as {field: {property: value}} plus the index definition, parsed by hand."""
    raw = store.client.execute_command("FT.INFO", store.config.index_name)
    s = lambda x: x.decode() if isinstance(x, bytes) else x  # noqa: E731
    info = {s(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}
    fields = {}
    for attr in info["attributes"]:
        attr = [s(a) for a in attr]
        props = {attr[i]: attr[i + 1] for i in range(0, len(attr) - 1, 2)}
        props["flags"] = [a for a in attr if a == "CASESENSITIVE"]
        fields[props["identifier"]] = props
    d = [s(x) if not isinstance(x, list) else [s(y) for y in x] for x in info["index_definition"]]
    return {"fields": fields, "definition": dict(zip(d[::2], d[1::2]))}


# ---------------------------------------------------------------- pure helpers (no server)
def test_redact_url_never_shows_a_password():
    cases = {
        "redis://user:s3cret@host:6379/0": "redis://user:***@host:6379/0",
        "rediss://:s3cret@host/0": "rediss://:***@host/0",
        "redis://s3cret@host:6379": "redis://***@host:6379",
        "redis://:p%40ss%3Aw@[::1]:6380/2": "redis://:***@[::1]:6380/2",
        "redis://host:6379/0?password=s3cret&db=1": "redis://host:6379/0?password=***&db=1",
        "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_password=s3cret": "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_password=***",
        "unix://:s3cret@/run/redis.sock?db=0": "unix://:***@/run/redis.sock?db=0",
        "redis://localhost:6379/0": "redis://localhost:6379/0",
        "redis://u:s3cret@host:notaport/0": "<unparseable Redis URL>",
    }  # fmt: skip
    for url, expected in cases.items():
        assert redact_url(url) == expected, url
        assert "s3cret" not in redact_url(url)


@given(st.text(min_size=1, max_size=20))
def test_redact_url_hides_any_password(password):
    from urllib.parse import quote

    quoted = quote(password, safe="")
    out = redact_url(f"redis://user:{quoted}@example.org:6379/0")
    assert out == "redis://user:***@example.org:6379/0"


def test_escape_tag_and_render_filter():
    assert escape_tag("a|b-c d") == "a\\|b\\-c\\ d"
    assert escape_tag('{x}@y:z*"\\') == '\\{x\\}\\@y\\:z\\*\\"\\\\'
    assert escape_tag("Ünïcode_板") == "Ünïcode\\_板"
    assert escape_tag("_") == "\\_"  # a lone "_" was a query syntax error (found by hypothesis)
    text, params = render_filter(MetadataFilter(well=["a1", "b2"], site=[2], plate=["x y"], z_min=3))
    assert text == "(@plate:{x\\ y} @well:{A01 | B02} (@site:[$site_0 $site_0]) @z:[$z_lo $z_hi])"
    assert params == {"site_0": 2, "z_lo": 3, "z_hi": "+inf"}
    assert render_filter(None) == ("*", {}) and render_filter(MetadataFilter()) == ("*", {})
    # No user text reaches the query unescaped: every ASCII punctuation mark gets its backslash.
    text, _ = render_filter(MetadataFilter(plate=["}) | @well:{*"]))
    assert text == "(@plate:{\\}\\)\\ \\|\\ \\@well\\:\\{\\*})"


def test_control_characters_are_refused():
    with pytest.raises(ConfigError, match="control characters"):
        MetadataFilter(plate=["a\x08b"])


# ---------------------------------------------------------------- schema and settings
@needs_redis
@pytest.mark.parametrize("algorithm", ["FLAT", "HNSW"])
def test_schema_in_ft_info(redis_config, algorithm):
    cfg = replace(redis_config, algorithm=algorithm, m=8, ef_construction=50, ef_runtime=30)
    s = RedisStore(cfg, dim=24)
    info = _info(s)
    assert info["definition"]["key_type"] == "HASH" and info["definition"]["prefixes"] == [cfg.prefix]
    fields = info["fields"]
    assert set(fields) == {"plate", "well", "row", "channel", "path", "source", "tags", "column", "site", "z",
                           "vector"}  # fmt: skip
    for name in ("plate", "well", "row", "channel", "path", "source", "tags"):
        assert fields[name]["type"] == "TAG" and fields[name]["SEPARATOR"] == "\x1f"
        assert fields[name]["flags"] == ["CASESENSITIVE"]
    for name in ("column", "site", "z"):
        assert fields[name]["type"] == "NUMERIC"
    vec = fields["vector"]
    assert (vec["type"], vec["algorithm"], vec["data_type"]) == ("VECTOR", algorithm, "FLOAT32")
    assert (int(vec["dim"]), vec["distance_metric"]) == (24, "COSINE")
    if algorithm == "HNSW":
        assert (int(vec["M"]), int(vec["ef_construction"])) == (8, 50)
    # Searching uses EF_RUNTIME as a parameter on HNSW, and finds each vector itself.
    v = _unit(50, 24)
    s.add(v, [ImageRecord(id=i, path=str(i), site=1 + i % 2) for i in range(50)])
    hits = s.search(v[:10], 3, MetadataFilter(site=[1, 2]))
    assert [h[0].id for h in hits] == list(range(10))


@needs_redis
def test_hnsw_float16_stores_half_precision(redis_config):
    v = _unit(200, 48)
    recs = [ImageRecord(id=i, path=f"{i}", z=i % 3) for i in range(200)]
    s = RedisStore(replace(redis_config, algorithm="HNSW", dtype="FLOAT16"), dim=48)
    s.add(v, recs)
    assert _info(s)["fields"]["vector"]["data_type"] == "FLOAT16"
    blob = s.client.hget(f"{redis_config.prefix}3", "vector")
    assert len(blob) == 48 * 2  # two bytes a component
    got = s.get_vectors(list(range(200)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, v, atol=1e-3)
    hits = s.search(v[:20], 5, MetadataFilter(z=[0, 1, 2]))
    assert all(h[0].id == i and h[0].score > 0.999 for i, h in enumerate(hits))


@needs_redis
@pytest.mark.parametrize("dtype", ["FLOAT32", "FLOAT16"])
def test_bulk_load_stores_what_add_stores(redis_config, dtype):
    """bulk_load (pipelined HSETs in batches, no MULTI/DEL) gives the same hashes, index and answers."""
    v = _unit(250, 48, seed=3)
    recs = [ImageRecord(id=i, path=f"p{i}.tif", well="A01", site=1 + i % 2, z=i % 5, tags={"k": str(i % 3)})
            for i in range(250)]  # fmt: skip
    cfg = replace(redis_config, algorithm="HNSW", dtype=dtype)
    bulk = RedisStore(replace(cfg, index_name=cfg.index_name + "b"), dim=48)
    bulk.bulk_load(v, recs, batch=64)  # 4 round trips, the last one short
    ref = RedisStore(replace(cfg, index_name=cfg.index_name + "a"), dim=48)
    ref.add(v, recs)
    assert bulk.count() == ref.count() == 250
    assert bulk.get(list(range(250))) == ref.get(list(range(250))) == recs
    np.testing.assert_array_equal(bulk.get_vectors([7, 249]), ref.get_vectors([7, 249]))
    where = MetadataFilter(site=[2], z_max=3)
    assert [[h.id for h in hits] for hits in bulk.search(v[:10], 5, where)] == [
        [h.id for h in hits] for hits in ref.search(v[:10], 5, where)
    ]
    with pytest.raises(ValueError, match="one record per row"):
        bulk.bulk_load(v[:3], recs[:2])


@needs_redis
def test_records_read_back_share_their_repeated_strings(redis_config):
    """mae-eval holds every record of the index: a plate name, a well or a channel read back is one
    string for all records, not one per record; ids past one read chunk come back in order."""
    n = 2500
    recs = [ImageRecord(id=i, path=f"dir/p{i}.tif", plate="Plate_1", well=f"A{1 + i % 3:02d}", channel="w1",
                        site=1, z=i % 34, source="synthetic") for i in range(n)]  # fmt: skip
    store = RedisStore(redis_config, dim=8)
    store.bulk_load(_unit(n, 8), recs)
    got = store.get(list(range(n)))
    assert got == recs
    assert len({id(r.plate) for r in got}) == 1 and len({id(r.channel) for r in got}) == 1
    assert len({id(r.well) for r in got}) == 3 and len({id(r.source) for r in got}) == 1


@needs_redis
def test_existing_index_with_other_settings_is_refused(redis_config):
    RedisStore(redis_config, dim=16)
    with pytest.raises(IndexMismatchError, match="DIM 16 \\(this model gives 32\\)"):
        RedisStore(redis_config, dim=32)
    with pytest.raises(IndexMismatchError, match="algorithm FLAT \\(asked for HNSW\\)"):
        RedisStore(replace(redis_config, algorithm="HNSW"), dim=16)
    with pytest.raises(IndexMismatchError, match="type FLOAT32 \\(asked for FLOAT16\\)"):
        RedisStore(replace(redis_config, dtype="FLOAT16"), dim=16)


@needs_redis
def test_a_reader_adopts_the_index_settings(redis_config):
    writer = RedisStore(replace(redis_config, algorithm="HNSW", dtype="FLOAT16", m=8), dim=16)
    writer.add(_unit(3, 16), [ImageRecord(id=i, path=str(i)) for i in range(3)])
    reader = RedisStore(redis_config)  # the defaults say FLAT/FLOAT32: the index says otherwise
    assert (reader.dim, reader.config.algorithm, reader.config.dtype, reader.config.m) == (
        16,
        "HNSW",
        "FLOAT16",
        8,
    )
    np.testing.assert_allclose(reader.get_vectors([1]), writer.get_vectors([1]))


@needs_redis
def test_an_index_of_another_tool_is_refused(redis_config):
    s = RedisStore(redis_config, dim=4)
    s.client.execute_command("FT.CREATE", "other" + redis_config.index_name, "ON", "HASH", "PREFIX", 1,
                             "elsewhere:", "SCHEMA", "vector", "VECTOR", "FLAT", 6, "TYPE", "FLOAT32",
                             "DIM", 4, "DISTANCE_METRIC", "L2")  # fmt: skip
    try:
        with pytest.raises(IndexMismatchError, match="HASH keys under .*distance metric L2"):
            RedisStore(replace(redis_config, index_name="other" + redis_config.index_name), dim=4)
    finally:
        s.client.execute_command("FT.DROPINDEX", "other" + redis_config.index_name)


@needs_redis
def test_counts_ids_and_drop_are_exact_and_stay_inside_the_index(redis_server):
    # "a*" as a SCAN pattern would also match the keys of index "ab": it must be taken literally.
    star, plain = (
        RedisConfig(url=redis_server.url, index_name="gl*b"),
        RedisConfig(url=redis_server.url, index_name="glob"),
    )
    a, b = RedisStore(star, dim=4), RedisStore(plain, dim=4)
    try:
        a.add(_unit(1100, 4), [ImageRecord(id=i, path=str(i)) for i in range(1100)])
        b.add(_unit(5, 4), [ImageRecord(id=10**6 + i, path=str(i)) for i in range(5)])
        assert a.count() == 1100 and a.ids().tolist() == list(range(1100))
        assert b.count() == 5 and b.ids().tolist() == [10**6 + i for i in range(5)]
        assert a.delete(list(range(0, 1100, 2)) + [5, 5]) == 551 and a.count() == 549 == len(a.ids())
        assert (
            len(a.get(list(range(1100)))) == 1100
            and sum(r is not None for r in a.get(list(range(1100)))) == 549
        )
        a.drop()
        assert b.count() == 5 and a.count() == 0 and a.ids().size == 0
    finally:
        a.drop()
        b.drop()


@needs_redis
def test_drop_keeping_documents_then_reindex(redis_config):
    s = RedisStore(redis_config, dim=8)
    v = _unit(300, 8)
    s.add(v, [ImageRecord(id=i, path=str(i)) for i in range(300)])
    s.write_manifest({"dim": 8})
    s.drop(delete_documents=False)
    assert s.client.exists(f"{redis_config.prefix}7") and s.count() == 0
    again = RedisStore(redis_config, dim=8)  # re-creating the index indexes the kept hashes first
    assert again.count() == 300 and again.search(v[7:8], 1)[0][0].id == 7
    again.drop()
    assert not again.client.exists(f"{redis_config.prefix}7") and again.read_manifest() is None


@needs_redis
def test_a_zero_or_nan_query_is_refused(redis_config):
    s = RedisStore(redis_config, dim=4)
    s.add(_unit(2, 4), [ImageRecord(id=1, path="a"), ImageRecord(id=2, path="b")])
    for bad in (np.zeros(4), np.array([np.nan, 1, 0, 0])):
        with pytest.raises(ValueError, match="zero or not finite"):
            s.search(np.stack([_unit(1, 4)[0], bad]), 1)


@needs_redis
def test_many_queries_in_batches_equal_one_by_one(redis_config):
    s = RedisStore(redis_config, dim=16)
    v = _unit(100, 16)
    s.add(v, [ImageRecord(id=i, path=str(i)) for i in range(100)])
    q = _unit(70, 16, seed=1)  # more than one pipeline batch
    batched = s.search(q, 5)
    assert [[h.id for h in r] for r in batched] == [[h.id for h in s.search(q[i], 5)[0]] for i in range(70)]


# ---------------------------------------------------------------- filters: data, never syntax
HOSTILE = ["pl ate{x}|y-@z", "Ünïcode 板", 'a"b\'c', "x*", "*", "back\\slash", "colon:semi;", "(paren)",
           "-neg", "@well:{A01}", "a|b", "}", "~tilde", "dollar$K", "in ner  space", "%pct%", "a,b", "$BLOB",
           "x => [KNN 1 @vector $BLOB]", "<>!?#&^='`", "naïve\u3000space", "emoji 🧫"]  # fmt: skip


@needs_redis
def test_hostile_filter_values_match_exactly(redis_config):
    s = RedisStore(redis_config, dim=8)
    v = _unit(len(HOSTILE) * 2, 8)
    recs = [ImageRecord(id=i, path=f"/x/{HOSTILE[i % len(HOSTILE)]}.tif", plate=HOSTILE[i % len(HOSTILE)],
                        well="A01") for i in range(len(v))]  # fmt: skip
    s.add(v, recs)
    for value in HOSTILE:
        (hits,) = s.search(v[:1], 100, MetadataFilter(plate=[value]))
        assert sorted(h.id for h in hits) == sorted(r.id for r in recs if r.plate == value), value
        assert all(h.record.plate == value for h in hits)
        (hits,) = s.search(v[:1], 100, MetadataFilter(path=[f"/x/{value}.tif"]))
        assert sorted(h.id for h in hits) == sorted(r.id for r in recs if r.plate == value), value
    (hits,) = s.search(v[:1], 100, MetadataFilter(plate=HOSTILE[:3]))
    assert sorted(h.id for h in hits) == sorted(r.id for r in recs if r.plate in HOSTILE[:3])
    # Values that look like query syntax are data: they match nothing and widen nothing.
    for value in ("* | @well:{A01}", "A01}", "P1} | @well:{A01", "x\\"):
        assert s.search(v[:1], 100, MetadataFilter(plate=[value])) == [[]]
    # Tags are case-sensitive, as in FAISS.
    assert s.search(v[:1], 100, MetadataFilter(plate=["ÜNÏCODE 板"])) == [[]]


_PUNCT = st.sampled_from(list(" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["板", "Ü", "\u00a0", "\u3000", "é"])


@needs_redis
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.text(st.one_of(_PUNCT, st.characters(blacklist_categories=("Cc", "Cs"))), min_size=1, max_size=12)
        .map(str.strip)
        .filter(bool),
        min_size=2,
        max_size=5,
        unique=True,
    )
)
@example(["_", "a_b"])  # a lone "_" was a query syntax error
def test_random_text_plates_filter_exactly(redis_config, plates):
    s = RedisStore(redis_config, dim=4)
    s.drop()
    s = RedisStore(redis_config, dim=4)
    v = _unit(len(plates) * 2, 4)
    recs = [ImageRecord(id=i, path="p", plate=plates[i % len(plates)]) for i in range(len(v))]
    s.add(v, recs)
    for p in plates:
        (hits,) = s.search(v[:1], 100, MetadataFilter(plate=[p]))
        assert sorted(h.id for h in hits) == [r.id for r in recs if r.plate == p]


# ---------------------------------------------------------------- failures users meet
@needs_redis
def test_unreachable_server_is_named_without_the_password(redis_server):
    url = "redis://user:s3cret@127.0.0.1:1/0"  # nothing listens on port 1
    # A generous budget, not a speed test: it guards against a hang (the pytest timeout is minutes).
    t = time.monotonic()
    with pytest.raises(
        StoreUnavailableError, match="cannot reach Redis at redis://user:\\*\\*\\*@127.0.0.1:1/0"
    ) as e:
        RedisStore(RedisConfig(url=url, retries=1, socket_timeout=0.5), dim=4)
    assert time.monotonic() - t < 60
    assert "s3cret" not in str(e.value) and "scripts/redis-stack.sh" in str(e.value)


@needs_redis
def test_auth_url_and_wrong_password(start_redis):
    srv = start_redis(password="pa ss@word")
    s = RedisStore(RedisConfig(url=srv.url, index_name="auth"), dim=4)
    s.add(_unit(2, 4), [ImageRecord(id=1, path="a"), ImageRecord(id=2, path="b")])
    assert s.count() == 2 and "pa ss@word" not in s.location and "pa%20ss" not in s.location
    import redis as redis_py

    admin = redis_py.Redis.from_url(srv.url)
    for bad in (f"redis://:wrong@127.0.0.1:{srv.port}/0", f"redis://127.0.0.1:{srv.port}/0"):
        admin.config_resetstat()
        with pytest.raises(StoreUnavailableError, match="refused the credentials") as e:
            RedisStore(RedisConfig(url=bad, retries=5), dim=4)
        # Counted by the server, not timed: one connection (the probe), not one per retry.
        assert int(admin.info("stats")["total_connections_received"]) == 1 and "wrong" not in str(e.value)


@needs_redis
def test_a_user_without_permissions_is_told_what_to_grant(redis_server, redis_config):
    import redis as redis_py

    admin = redis_py.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", "noperm", "on", ">pw", "~*", "+ping", "+auth", "+hello")
    try:
        url = f"redis://noperm:pw@127.0.0.1:{redis_server.port}/0"
        with pytest.raises(StoreUnavailableError, match="'FT._LIST' command.*grant it the FT") as e:
            RedisStore(replace(redis_config, url=url), dim=4)
        assert ":pw@" not in str(e.value)
    finally:
        admin.execute_command("ACL", "DELUSER", "noperm")


@needs_redis
def test_server_without_query_engine_is_explained(start_redis):
    srv = start_redis(modules=False)
    with pytest.raises(StoreUnavailableError, match="Redis Stack 7.2\\+ or Redis 8") as e:
        RedisStore(RedisConfig(url=srv.url), dim=4)
    assert "scripts/redis-stack.sh" in str(e.value) and "docker-compose.yml" in str(e.value)


@needs_redis
def test_full_redis_gives_a_clear_error(start_redis):
    srv = start_redis(maxmemory="2mb")
    s = RedisStore(RedisConfig(url=srv.url, index_name="full"), dim=256)
    v = _unit(500, 256)
    with pytest.raises(StoreFullError, match="maxmemory") as e:
        for i in range(0, 100000, 500):
            s.add(v, [ImageRecord(id=i + j, path=f"{i + j}") for j in range(500)])
    assert "\\x" not in str(e.value) and len(str(e.value)) < 500  # no vector bytes in the message
    assert s.count() == 0 or s.count() % 500 == 0  # a chunk is written whole or not at all


# ---------------------------------------------------------------- the server helpers
@needs_redis
def test_server_pause_restart_and_appendonly(start_redis):
    import redis as redis_py

    srv = start_redis(appendonly=True)
    s = RedisStore(RedisConfig(url=srv.url, index_name="durable"), dim=4)
    s.add(_unit(3, 4), [ImageRecord(id=i, path=str(i)) for i in range(3)])
    client = redis_py.Redis.from_url(srv.url, socket_timeout=5)
    srv.pause()
    answered = threading.Event()
    threading.Thread(target=lambda: client.ping() and answered.set(), daemon=True).start()
    assert not answered.wait(0.3)  # a frozen server cannot answer, however long we wait
    srv.resume()
    assert answered.wait(60)  # answered once the pause was over
    old = srv.pid
    srv.restart()
    assert srv.pid != old
    assert RedisStore(RedisConfig(url=srv.url, index_name="durable")).count() == 3  # from the AOF


@needs_redis
def test_the_script_starts_and_stops_a_server_alone(tmp_path, redis_server):
    import redis as redis_py

    from tests.support.redis_server import SCRIPT, free_port

    port, data = free_port(), tmp_path / "script data"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)

    r = run("start", "--port", str(port), "--dir", str(data), "--password", 'p "w', "--appendonly")
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"redis://127.0.0.1:{port}/0"  # the URL, never the password
        client = redis_py.Redis(port=port, password='p "w')
        assert client.ping() and client.config_get("appendonly") == {"appendonly": "yes"}
        assert b"search" in [m[b"name"] for m in client.module_list()]
        assert run("start", "--port", str(port), "--dir", str(data)).returncode == 1  # port taken
    finally:
        stopped = run("stop", "--dir", str(data))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert run("stop", "--dir", str(data)).stdout.startswith("no Redis running")


@needs_redis
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


@needs_redis
def test_build_with_another_model_is_refused_by_the_redis_manifest(
    tmp_path, start_redis, tiny_model_dir, real_images
):
    """On a server with a password: the refusal names the server, never its password."""
    from urllib.parse import quote

    from indexer.cli import main
    from indexer.model.presets import create_model

    password = "manifest s3cret@pw"
    srv = start_redis(password=password)
    other = create_model(tmp_path / "other", "test", seed=1)
    base = ["--redis-url", srv.url, "--redis-index", "refused", "--device", "cpu", "--no-progress"]
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
    assert f"127.0.0.1:{srv.port}" in bad.output and "***" in bad.output  # the server, without its password
    for out in (ok.output, bad.output):
        assert "s3cret" not in out and quote(password, safe="") not in out and srv.url not in out


@needs_redis
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


@needs_redis
def test_tls_url_works_and_an_untrusted_certificate_is_refused(tmp_path, start_redis):
    import shutil

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
    srv = start_redis(
        data_dir=d / "data", password="tls secret", tls=(d / "srv.crt", d / "srv.key", d / "ca.crt")
    )
    assert srv.url.startswith("rediss://")
    s = RedisStore(RedisConfig(url=srv.url, index_name="tls"), dim=4)
    s.add(_unit(3, 4), [ImageRecord(id=i, path=str(i)) for i in range(3)])
    assert s.count() == 3 and "tls secret" not in s.location
    untrusted = srv.url.replace(str(d / "ca.crt"), str(d / "other.crt"))
    with pytest.raises(StoreUnavailableError) as e:
        RedisStore(RedisConfig(url=untrusted, retries=0, socket_timeout=2), dim=4)
    assert "tls secret" not in str(e.value)


@needs_redis
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
