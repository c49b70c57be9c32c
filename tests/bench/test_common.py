"""bench/common.py: the one place benchmarks start a private Redis Stack server."""

from pathlib import Path

import pytest
import redis

from bench.common import redis_url


@pytest.mark.redis
def test_redis_url_starts_a_private_server_and_removes_it():
    with redis_url(prefix="mae-test-bench-") as url:
        client = redis.Redis.from_url(url)
        assert client.ping() and "search" in {m[b"name"].decode() for m in client.module_list()}
        data_dir = Path(client.config_get("dir")["dir"])
        assert data_dir.name.startswith("mae-test-bench-") and data_dir.is_dir()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    assert not data_dir.exists()


def test_redis_url_passes_a_given_url_through_without_a_server():
    with redis_url("redis://example.invalid:6379/0") as url:
        assert url == "redis://example.invalid:6379/0"
