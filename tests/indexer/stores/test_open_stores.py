"""open_stores: the one way build, query, serve, eval, verify and sync open the stores."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.core.config import RedisConfig
from indexer.core.errors import ConfigError, StoreUnavailableError
from indexer.core.records import ImageRecord
from indexer.stores import open_stores
from indexer.stores.base import VectorStore


def test_a_faiss_folder_opens_writes_on_close_and_reopens_read_only(tmp_path):
    with open_stores(tmp_path / "idx", dim=4) as stores:
        assert stores.redis is None and stores.primary is stores.faiss and list(stores) == [stores.faiss]
        assert isinstance(stores.faiss, VectorStore) and stores.faiss.location == str(tmp_path / "idx")
        assert stores.faiss.vector_tolerance == 1e-6
        stores.faiss.add(
            np.eye(4, dtype=np.float32)[:2], [ImageRecord(id=1, path="a"), ImageRecord(id=2, path="b")]
        )
    with open_stores(tmp_path / "idx", read_only=True, backend="faiss") as stores:
        assert stores.faiss.count() == 2  # the writes were flushed when the block closed


def test_wrong_combinations_are_usage_errors(tmp_path):
    with pytest.raises(ConfigError, match="--backend redis needs --redis-url"):
        open_stores(tmp_path, None, backend="redis")
    with pytest.raises(ConfigError, match="--index DIR is required"):
        open_stores(None, RedisConfig(url="redis://127.0.0.1:1"), backend="faiss")
    with pytest.raises(ConfigError, match="give an index folder"):
        open_stores(None, None)
    with pytest.raises(StoreUnavailableError, match="build one first"):
        open_stores(tmp_path / "missing", read_only=True)


@pytest.mark.redis
def test_both_stores_open_faiss_first_and_close_together(tmp_path, redis_config):
    with open_stores(tmp_path / "idx", redis_config, dim=4) as stores:
        assert [type(s).__name__ for s in stores] == ["FaissStore", "RedisStore"]
        assert stores.primary is stores.redis and redis_config.index_name in stores.redis.location
        assert stores.redis.vector_tolerance == 1e-6
