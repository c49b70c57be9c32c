"""A real Redis Stack server for the tests: started once per session on a free port.

Under CI (``CI=true``) a server that cannot start fails the Redis tests instead of skipping them.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

from indexer.config import RedisConfig

_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """The session's Redis Stack server (indexer.redis_server.RedisServer)."""
    from indexer.errors import StoreUnavailableError
    from indexer.redis_server import RedisServer

    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except StoreUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis Stack could not start in CI: {e}")
        pytest.skip(f"Redis Stack not available: {e} (run scripts/redis-stack.sh install)")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the session server."""
    return redis_server.url


@pytest.fixture
def redis_config(redis_server, request) -> RedisConfig:
    """A RedisConfig with an index name unique to this test; its keys are dropped afterwards."""
    name = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[-40:] + str(next(_counter))
    config = RedisConfig(url=redis_server.url, index_name=f"t{name}")
    yield config
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.ft(config.index_name).dropindex(delete_documents=True)
    except redis.ResponseError:
        pass
    keys = list(client.scan_iter(match=f"{config.index_name}:*"))
    if keys:
        client.delete(*keys)
    client.close()
