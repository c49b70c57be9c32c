"""A real Redis Stack server for the tests, started once per session on a free port.

Registered in tests/conftest.py with ``pytest_plugins = ["tests.fixtures_redis"]`` (or ``-p
tests.fixtures_redis``). The first use installs the server if needed (``scripts/redis-stack.sh install``).
A server that cannot start skips the Redis tests, except under CI (``CI=true``), where it fails them: CI
must never pass by skipping.

Fixtures
--------
redis_server
    The session's :class:`tests.support.redis_server.RedisServer`.
redis_url
    Its URL.
redis_config
    A :class:`indexer.core.config.RedisConfig` with an index name unique to the test; the index and its keys
    are removed after the test.
start_redis
    A factory for extra private servers (plain Redis, a memory cap, a password), stopped after the test.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from indexer.core.config import RedisConfig

_counter = itertools.count()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Redis Stack could not start under CI: {reason}", pytrace=False)
    pytest.skip(f"Redis Stack not available: {reason} (try scripts/redis-stack.sh install)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The session's Redis Stack server (:class:`tests.support.redis_server.RedisServer`), with the search module."""
    from tests.support.redis_server import RedisServer

    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis"))
    reason = None
    try:
        server.start()
    except Exception as e:  # any failure to start means "no server here": skip, or fail under CI
        reason = f"{type(e).__name__}: {e}"
    if reason is not None:
        _unavailable(reason)  # outside the except block, so the report shows the reason, not a chain
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the session server."""
    return redis_server.url


def _index_name(node_name: str) -> str:
    # Index names may not hold spaces, ':' or braces; letters and digits keep SCAN patterns literal too.
    return "t" + re.sub(r"[^A-Za-z0-9]", "", node_name)[-40:] + f"x{next(_counter)}"


def _drop(url: str, index_name: str) -> None:
    import redis

    client = redis.Redis.from_url(url, protocol=2)
    try:
        try:
            client.execute_command("FT.DROPINDEX", index_name, "DD")
        except redis.ResponseError:
            pass  # the test never created the index, or dropped it itself
        keys = list(client.scan_iter(match=f"{index_name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_config(redis_server, request: pytest.FixtureRequest) -> Iterator[RedisConfig]:
    """A RedisConfig on the session server with an index name unique to this test; dropped afterwards."""
    config = RedisConfig(url=redis_server.url, index_name=_index_name(request.node.name))
    yield config
    if redis_server.running:
        _drop(redis_server.url, config.index_name)


@pytest.fixture
def start_redis(redis_server, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Return ``start(**kwargs) -> RedisServer``: a private server (e.g. ``modules=False``,
    ``maxmemory="2mb"``, ``password=...``) in the test's tmp folder, stopped after the test.

    It depends on ``redis_server`` so that the install and the skip/fail decision happen once.
    """
    from tests.support.redis_server import RedisServer

    started: list[RedisServer] = []

    def start(**kwargs) -> RedisServer:
        kwargs.setdefault("data_dir", tmp_path / f"redis-{len(started)}")
        server = RedisServer(**kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
