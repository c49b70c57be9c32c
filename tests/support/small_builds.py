"""A small in-process build the damage tests start from: 2 images per batch and per shard."""

from __future__ import annotations

from indexer.core.config import BuildConfig, SourceConfig
from indexer.ingest.local import build_index
from indexer.stores.faiss.store import FaissStore


def build_in_small_shards(encoder, data, index, redis=None):
    """Index ``data`` into a FAISS folder at ``index`` (and Redis, given a config) in shards of 2 images;
    close the stores and return the build summary."""
    cfg = BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=index, model=encoder.config,
                      batch_size=2, flush_every=2, redis=redis)  # fmt: skip
    stores = [FaissStore(index, dim=encoder.dim)]
    if redis is not None:
        from indexer.stores.redis.store import RedisStore

        stores.append(RedisStore(redis, dim=encoder.dim))
    summary = build_index(cfg, stores, encoder=encoder)
    for s in stores:
        s.close()
    return summary
