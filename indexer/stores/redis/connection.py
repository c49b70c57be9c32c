"""The connection to a Redis server: the client, the checks made on connecting, and error translation.

:class:`RedisConnection` owns the redis-py client (RESP2, with retries for a restarting server), refuses
wrong credentials at once and a server without the query engine with a message that says what to run,
and turns every redis-py error into a project error (:func:`~indexer.stores.redis.errors.translate_error`).
It knows no index: :class:`~indexer.stores.redis.store.RedisStore` sends the commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from indexer.core.config import RedisConfig
from indexer.core.errors import ConfigError, StoreUnavailableError
from indexer.stores.redis.errors import ENGINE_HINT, redact_url, translate_error
from indexer.stores.redis.query import pairs, text


def redis_module():
    """The ``redis`` client module, or :class:`StoreUnavailableError` saying how to install it."""
    try:
        import redis
    except ImportError as e:  # pragma: no cover - redis is a core dependency
        raise StoreUnavailableError("the Redis client is not installed: pip install redis") from e
    return redis


class RedisConnection:
    """A checked connection to the server at ``config.url``.

    Raises
    ------
    StoreUnavailableError
        The server cannot be reached, refuses the credentials, or has no query engine.
    ConfigError
        The URL is invalid.
    """

    def __init__(self, config: RedisConfig) -> None:
        redis = redis_module()
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self._config = config
        self.errors = redis.exceptions
        try:
            # RESP2 on purpose: its reply shapes are stable across redis-py versions, and parsed here.
            self.client = redis.Redis.from_url(
                config.url,
                protocol=2,
                socket_timeout=config.socket_timeout,
                socket_connect_timeout=config.socket_timeout,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), config.retries),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            )
        except ValueError as e:
            raise ConfigError(f"invalid Redis URL {redact_url(config.url)}: {e}") from None
        self._check_credentials(redis)
        self._check_server()

    def call(self, fn, *args, **kwargs):
        """Run one Redis call, turning connection, credential and memory errors into project errors."""
        try:
            return fn(*args, **kwargs)
        except self.errors.RedisError as e:
            mapped = translate_error(e, self.errors, self._config.url, self._config.retries)
            if mapped is None:
                raise
            raise mapped from e

    def pipelined(self, commands: Sequence[tuple[Any, ...]], chunk: int) -> list[Any]:
        """The replies of ``commands``, sent ``chunk`` per pipeline round trip (no transaction)."""
        out: list[Any] = []
        for start in range(0, len(commands), chunk):
            pipe = self.client.pipeline(transaction=False)
            for command in commands[start : start + chunk]:
                pipe.execute_command(*command)
            out += self.call(pipe.execute)
        return out

    def index_info(self, name: str) -> dict[str, Any] | None:
        """``FT.INFO`` of index ``name`` as a dict, or ``None`` when there is no such index."""
        try:
            reply = self.call(self.client.execute_command, "FT.INFO", name)
        except self.errors.ResponseError as e:
            message = str(e).lower()
            if "unknown index" in message or "no such index" in message or "not found" in message:
                return None
            raise
        return pairs(reply)

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()

    def _check_credentials(self, redis) -> None:
        """Refuse wrong credentials at once: the client's retries (meant for a restarting server)
        would otherwise repeat a refused AUTH for seconds. Any other failure is left to those retries."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # A short timeout: when the probe cannot connect, the retrying client decides anyway.
        timeout = min(self._config.socket_timeout, 2.0)
        probe = redis.Redis.from_url(
            self._config.url,
            protocol=2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            self.call(probe.ping)
        except StoreUnavailableError as e:
            if isinstance(e.__cause__, self.errors.AuthenticationError):
                raise
        finally:
            probe.close()

    def _check_server(self) -> None:
        """Refuse a server without the query engine, with a message that says what to run instead."""
        try:
            self.call(self.client.execute_command, "FT._LIST")
        except StoreUnavailableError as e:
            if "no query engine" not in str(e):
                raise
            version = "?"
            try:
                version = text(self.client.info("server").get("redis_version", "?"))
            except self.errors.RedisError:
                pass  # the version only decorates the message
            raise StoreUnavailableError(
                f"Redis {version} at {redact_url(self._config.url)} has no vector search: {ENGINE_HINT}"
            ) from e.__cause__
