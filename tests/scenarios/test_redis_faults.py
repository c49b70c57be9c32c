"""A Redis that goes away mid-build: paused, restarted, or gone. Real server, real pipeline."""

import threading

import pytest

from indexer.core.config import BuildConfig, ModelConfig, RedisConfig, SourceConfig
from indexer.core.errors import StoreUnavailableError
from indexer.ingest.local import build_index
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from indexer.stores.mirror import verify_stores
from indexer.stores.redis.store import RedisStore
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def _build(encoder, data, idx, redis_cfg, on_progress=None):
    cfg = BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=idx, model=encoder.config, redis=redis_cfg,
                      batch_size=2, workers=1, flush_every=4)  # fmt: skip
    stores = [FaissStore(idx, dim=encoder.dim), RedisStore(redis_cfg, dim=encoder.dim)]
    try:
        return build_index(cfg, stores, encoder=encoder, progress=on_progress)
    finally:
        stores[0].close()


def _verified(idx, redis_cfg, n):
    report = verify_stores(RedisStore(redis_cfg), FaissStore(idx, read_only=True), sample=n)
    assert report.ok, report.to_dict()
    assert report.count_primary == report.count_mirror == n


@pytest.mark.parametrize("fault", ["pause", "restart"])
def test_build_survives_a_paused_or_restarted_server(encoder, real_images, tmp_path, fault):
    with RedisServer(data_dir=tmp_path / "redis", appendonly=True) as srv:
        cfg = RedisConfig(url=srv.url, index_name="faults", retries=8, socket_timeout=5)
        fired = []

        def inject(done):
            if done == 6 and not fired:
                fired.append(done)
                if fault == "pause":
                    srv.pause()
                    threading.Timer(1.5, srv.resume).start()
                else:
                    threading.Thread(target=srv.restart).start()

        s = _build(encoder, real_images[0].parent, tmp_path / "idx", cfg, inject)
        assert fired and s.indexed == 20 and not s.rejected
        _verified(tmp_path / "idx", cfg, 20)


def test_server_gone_stops_with_a_clear_error_and_loses_nothing(encoder, real_images, tmp_path):
    srv = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    cfg = RedisConfig(url=srv.url, index_name="gone", retries=2, socket_timeout=1)

    def kill(done):
        if done == 8:
            srv.stop()

    with pytest.raises(StoreUnavailableError, match="cannot reach Redis"):
        _build(encoder, real_images[0].parent, tmp_path / "idx", cfg, kill)
    written = FaissStore(tmp_path / "idx", read_only=True).count()
    assert 0 < written < 20
    srv.start()  # the same data folder: what Redis acknowledged is still there
    assert RedisStore(cfg).count() >= 1
    s = _build(encoder, real_images[0].parent, tmp_path / "idx", cfg)
    assert s.indexed + s.skipped_existing == 20
    _verified(tmp_path / "idx", cfg, 20)
    srv.stop()
