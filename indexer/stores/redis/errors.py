"""What a Redis failure means for the user: redis-py errors -> project errors with actionable messages,
and URLs made safe to print. Pure: the redis-py exception classes are passed in.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from indexer.core.errors import MaeError, StoreFullError, StoreUnavailableError

_NOPERM = re.compile(r"(User \S+ )?has no permissions to (run|access) the '[^']{1,64}' \w+")
_SECRET_QUERY_KEYS = ("pass", "pwd", "secret", "token", "auth", "credential")
#: What to run when a server lacks vector search.
ENGINE_HINT = (
    "it needs the Redis Query Engine with vector search: Redis Stack 7.2+ or Redis 8. Start one with "
    "`scripts/redis-stack.sh install && scripts/redis-stack.sh start --port 6379 --dir DIR`, or "
    "`docker compose up -d redis` (docker-compose.yml)"
)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe to print and log.

    Host, port, database and options stay, so a message still says which server was meant. A user
    name without a password (``redis://secret@host``) is hidden too, since some clients take it as
    the password; so are query options that look like credentials (``?password=...``).

    Parameters
    ----------
    url
        A Redis URL (``redis://``, ``rediss://`` or ``unix://``).

    Returns
    -------
    str
        The URL without secrets; ``"<unparseable Redis URL>"`` when it cannot be parsed.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else f"***@{hostport}"
    query = parts.query
    if query:
        items = []
        for item in query.split("&"):
            key, eq, _ = item.partition("=")
            secret = eq and any(word in key.lower() for word in _SECRET_QUERY_KEYS)
            items.append(f"{key}=***" if secret else item)
        query = "&".join(items)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def translate_error(e: Exception, errors: Any, url: str, retries: int) -> MaeError | None:
    """The project error that a redis-py error ``e`` means, or ``None`` to let ``e`` propagate as it is.

    Parameters
    ----------
    e
        The exception a Redis call raised.
    errors
        The ``redis.exceptions`` module (passed in, so that this module needs no Redis client).
    url
        The server's URL: messages show it without secrets (:func:`redact_url`).
    retries
        How many retries the client made, for the message.

    Returns
    -------
    MaeError or None
        :class:`StoreUnavailableError` for refused credentials, an unreachable server, a server without
        the query engine or a user without permissions; :class:`StoreFullError` for ``maxmemory``.
    """
    where = redact_url(url)
    if isinstance(e, errors.AuthenticationError):
        return StoreUnavailableError(
            f"Redis at {where} refused the credentials: check the user and password in the Redis URL"
        )
    if isinstance(e, (errors.ConnectionError, errors.TimeoutError)):
        return StoreUnavailableError(
            f"cannot reach Redis at {where} after {retries} retries "
            f"({type(e).__name__}); start it (scripts/redis-stack.sh start, or docker compose up -d "
            "redis) or fix the URL"
        )
    if not isinstance(e, errors.ResponseError):
        return None
    msg = str(e)
    # redis-py 4.6+ raises OutOfMemoryError and strips the "OOM" prefix; older ones keep it.
    if isinstance(e, getattr(errors, "OutOfMemoryError", ())) or msg.startswith("OOM"):
        # The message is not quoted: redis-py puts the failed command, vector bytes and all, in it.
        return StoreFullError(
            f"Redis at {where} is full: a write was refused because used "
            "memory exceeds its 'maxmemory'. "
            "Raise maxmemory (CONFIG SET maxmemory, or REDIS_ARGS in docker-compose.yml), store "
            "FLOAT16 vectors (--redis-dtype float16), or use another Redis. Writes acknowledged "
            "before this one are kept."
        )
    if "unknown command" in msg.lower() and "FT." in msg.upper():
        return StoreUnavailableError(f"Redis at {where} has no query engine: {ENGINE_HINT}")
    if isinstance(e, getattr(errors, "NoPermissionError", ())) or "NOPERM" in msg:
        # Only Redis's own words: a pipeline's message also quotes the command (vector bytes).
        found = _NOPERM.search(msg)
        detail = found.group(0) if found else "no permission"
        return StoreUnavailableError(
            f"the Redis user of {where} may not run a command this store "
            f"needs ({detail}); grant it the FT.* commands (+@search on Redis 8) and +@read +@write "
            "+@keyspace +@transaction"
        )
    return None
