"""/health of `mae-search serve` reports damage in the FAISS mirror's shards: still 200 (the sound
shards are served), but ``degraded``, naming the damaged shard."""

import pytest

from indexer.core.config import BuildConfig, ModelConfig, PreprocessConfig, SourceConfig
from indexer.ingest.local import build_index
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from retriever.http.service import QueryService
from retriever.search import Retriever
from tests.support.small_builds import build_in_small_shards


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def _damaged_index(encoder, data, index, redis=None):
    """An index of 6 images in 3 shards (2 each), the second shard truncated; returns its name."""
    build_in_small_shards(encoder, data, index, redis)
    bad = sorted((index / "shards").glob("part-*.parquet"))[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad.name


def test_a_served_faiss_index_with_a_damaged_shard_is_degraded(encoder, real_subset, tmp_path):
    bad = _damaged_index(encoder, real_subset, tmp_path / "idx")
    service = QueryService(
        Retriever(FaissStore(tmp_path / "idx", read_only=True), encoder, PreprocessConfig())
    )
    status, health = service.health_status()
    assert status == 200 and health["status"] == "degraded" and health["count"] == 4
    (line,) = health["stores"]["faiss"]["damage"]
    assert f"shards/{bad}" in line and health["stores"]["faiss"]["ok"] is True


@pytest.mark.redis
def test_a_redis_index_whose_faiss_mirror_is_damaged_is_degraded(
    encoder, real_subset, tmp_path, redis_config
):
    from indexer.stores.redis.store import RedisStore

    bad = _damaged_index(encoder, real_subset, tmp_path / "idx", redis_config)
    service = QueryService(Retriever(RedisStore(redis_config), encoder, PreprocessConfig()))
    assert service.health_status()[1]["status"] == "ok"  # Redis alone is sound
    service.add_backend(FaissStore(tmp_path / "idx", read_only=True))
    status, health = service.health_status()
    assert status == 200 and health["status"] == "degraded" and health["count"] == 6
    assert health["stores"]["redis"] == {"ok": True}
    assert f"shards/{bad}" in health["stores"]["faiss"]["damage"][0]


def test_a_sound_index_is_ok_without_a_damage_field(encoder, real_subset, tmp_path):
    index = tmp_path / "idx"
    cfg = BuildConfig(sources=SourceConfig(paths=(real_subset,)), index_dir=index, model=encoder.config)
    with FaissStore(index, dim=encoder.dim) as store:
        build_index(cfg, [store], encoder=encoder)
    health = QueryService(
        Retriever(FaissStore(index, read_only=True), encoder, PreprocessConfig())
    ).health_status()[1]
    assert health["status"] == "ok" and health["stores"] == {"faiss": {"ok": True}}
