"""How a build writes Redis: new ids bulk-loaded (pipelined HSET, no MULTI/DEL), ids Redis may hold
upserted, and a build killed with SIGKILL resumes to every image exactly once in both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.core.config import BuildConfig, ModelConfig, SourceConfig
from indexer.ingest.local import build_index
from indexer.ingest.plan import index_state, new_rows
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from indexer.stores.mirror import verify_stores
from indexer.stores.redis.query import TAGS_FIELD
from indexer.stores.redis.store import RedisStore
from tests.conftest import write_tiff


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def _calls(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("multi", "del", "hset")}


def _build(encoder, data: Path, idx: Path, redis_config, **kw):
    cfg = BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=idx, model=encoder.config, redis=redis_config,
                      batch_size=2, workers=1, flush_every=4, **kw)  # fmt: skip
    faiss, redis = FaissStore(idx, dim=encoder.dim), RedisStore(redis_config, dim=encoder.dim)
    try:
        return build_index(cfg, [faiss, redis], encoder=encoder)
    finally:
        faiss.close()
        redis.close()


def test_new_rows_are_the_ids_a_store_does_not_hold():
    assert new_rows(frozenset({2, 5}), [1, 2, 3, 5]) == [True, False, True, False]
    assert new_rows(frozenset(), [7]) == [True]
    assert new_rows(None, [1, 2]) == [False, False]  # --force: any id may be held, upsert all


@pytest.mark.redis
def test_a_fresh_build_bulk_loads_redis_without_multi_or_del(encoder, real_subset, tmp_path, redis_config):
    client = RedisStore(redis_config).client
    before = _calls(client)
    s = _build(encoder, real_subset, tmp_path / "idx", redis_config)
    after = _calls(client)
    assert s.indexed == 6
    # One HSET per image, no transaction and nothing to delete: every id was new to Redis.
    assert {k: after[k] - before[k] for k in after} == {"multi": 0, "del": 0, "hset": 6}
    report = verify_stores(RedisStore(redis_config), FaissStore(tmp_path / "idx", read_only=True), sample=6)
    assert report.ok and report.count_primary == report.count_mirror == 6


@pytest.mark.redis
def test_an_id_redis_holds_but_faiss_lacks_is_upserted_without_stale_fields(
    encoder, real_subset, tmp_path, redis_config
):
    # A run killed after writing Redis but before the FAISS checkpoint leaves ids only Redis holds; here
    # one of them carries a field the re-run's record lacks (a tag of an older metadata table).
    idx = tmp_path / "idx"
    _build(encoder, real_subset, idx, redis_config)
    with FaissStore(idx) as faiss:
        victim = int(faiss.ids()[2])
        assert faiss.delete([victim]) == 1
    redis = RedisStore(redis_config)
    redis.client.hset(redis.key(victim), TAGS_FIELD, "batch=old")
    existing, held = index_state([FaissStore(idx, read_only=True), redis])
    assert victim not in existing and held == (frozenset(), frozenset({victim}))
    before = _calls(redis.client)
    s = _build(encoder, real_subset, idx, redis_config)
    after = _calls(redis.client)
    assert s.indexed == 1 and s.skipped_existing == 5
    # Upserted: one MULTI of DEL + HSET, so the stale tag is gone in Redis as in FAISS.
    assert {k: after[k] - before[k] for k in after} == {"multi": 1, "del": 1, "hset": 1}
    assert redis.get([victim])[0].tags == () and redis.client.hget(redis.key(victim), TAGS_FIELD) is None
    report = verify_stores(redis, FaissStore(idx, read_only=True), sample=6)
    assert report.ok and report.count_primary == report.count_mirror == 6


def _distinct_images(folder: Path, n: int) -> Path:
    """``n`` BBBC006-named 64x64 images of distinct content (one site per well, w1, z16)."""
    rng = np.random.default_rng(0)
    d = folder / "BBBC006_v1_images_z_16"
    for i in range(n):
        well = f"{'ABCDEFGHIJKLMNOP'[i // 24]}{1 + i % 24:02d}"
        write_tiff(d / f"mcf-z-stacks-03212011_{well.lower()}_s1_w1{i:04x}.tif",
                   rng.integers(0, 4096, size=(64, 64), dtype=np.uint16))  # fmt: skip
    return folder


@pytest.mark.redis
def test_a_build_killed_mid_write_resumes_to_every_image_once_in_both_stores(
    tiny_model_dir, tmp_path, redis_config
):
    n = 240
    data, idx = _distinct_images(tmp_path / "data", n), tmp_path / "idx"
    cmd = [sys.executable, "-m", "indexer.cli", "build", str(data), "--index", str(idx), "--model",
           str(tiny_model_dir), "--redis-url", redis_config.url, "--redis-index", redis_config.index_name,
           "--batch-size", "2", "--workers", "1", "--checkpoint-every", "8", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = RedisStore(redis_config).client
    pattern = f"{redis_config.index_name}:img:*"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if sum(1 for _ in client.scan_iter(match=pattern, count=1000)) >= 40:
            proc.send_signal(signal.SIGKILL)  # no flush, no close: the process just stops
            break
        time.sleep(0.02)
    assert proc.wait(30) == -signal.SIGKILL, "the build finished before it could be killed"
    written = len(RedisStore(redis_config).ids())
    assert 40 <= written < n
    done = subprocess.run(cmd + ["--format", "json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    faiss, redis = FaissStore(idx, read_only=True), RedisStore(redis_config)
    assert faiss.count() == redis.count() == n
    assert np.array_equal(faiss.ids(), redis.ids())
    report = verify_stores(redis, faiss, sample=n)
    assert report.ok, report.to_dict()
