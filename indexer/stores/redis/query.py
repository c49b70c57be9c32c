"""Redis Query Engine syntax, pure: the schema's field names, tag escaping, filter rendering, and the
parsing of RESP2 replies. No connection here; :mod:`indexer.stores.redis.store` sends what this renders.

Every tag value is escaped (:func:`escape_tag`) and every number of a filter is a query ``PARAMS``
entry, so no user text can change a query's meaning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from indexer.core.records import MetadataFilter

TAG_FIELDS = ("plate", "well", "row", "channel", "path", "source")
#: A metadata table's extra columns: one TAG field of "key=value" entries (filters: @tags:{key\=value}).
TAGS_FIELD = "tags"
NUMERIC_FIELDS = ("column", "site", "z")
VECTOR_FIELD = "vector"
DISTANCE_FIELD = "distance"
#: Tag separator: the ASCII unit separator, which no path or plate name contains.
TAG_SEPARATOR = "\x1f"

# Every ASCII character but letters, digits and "_" is query syntax somewhere (space, braces, "|", "-",
# "@", ":", quotes, "*", "\\", "$", ...), so each gets a backslash, as redisvl's TokenEscaper does.
# Non-ASCII characters are never syntax and pass through (escaping them would break the match).
# "_" too: an unescaped lone "_" (a plate named "_") is a syntax error in the query language.
_TAG_ESCAPE = re.compile(r"([^A-Za-z0-9\u0080-\U0010ffff])")


def escape_tag(value: str) -> str:
    """Escape one tag value for a query, so that it is matched literally.

    Parameters
    ----------
    value
        The value as stored (e.g. a plate name ``"pl ate{x}|y"``).

    Returns
    -------
    str
        The value with a backslash before every ASCII character other than letters and digits.
    """
    return _TAG_ESCAPE.sub(r"\\\1", str(value))


def render_filter(where: MetadataFilter | None) -> tuple[str, dict[str, Any]]:
    """Render a filter as the pre-filter of a KNN query, and its parameters.

    Tags become ``@field:{a | b}`` with escaped values; numbers become ranges over query parameters,
    ``(@site:[$site_0 $site_0] | @site:[$site_1 $site_1])``; ``z_min``/``z_max`` become
    ``@z:[$z_lo $z_hi]``. Fields are ANDed (juxtaposed).

    Parameters
    ----------
    where
        The filter; ``None`` or an empty filter matches everything.

    Returns
    -------
    tuple of (str, dict)
        The query prefix (``"*"`` when empty) and the parameters it uses.
    """
    if where is None or where.is_empty:
        return "*", {}
    parts: list[str] = []
    params: dict[str, Any] = {}
    for name in TAG_FIELDS:
        values = getattr(where, name)
        if values:
            parts.append(f"@{name}:{{{' | '.join(escape_tag(v) for v in values)}}}")
    for name in NUMERIC_FIELDS:
        values = getattr(where, name)
        if values:
            alternatives = []
            for i, v in enumerate(values):
                params[f"{name}_{i}"] = int(v)
                alternatives.append(f"@{name}:[${name}_{i} ${name}_{i}]")
            parts.append("(" + " | ".join(alternatives) + ")")
    for values in where.tag_groups().values():  # OR among one key's values, AND across keys
        parts.append(f"@{TAGS_FIELD}:{{{' | '.join(escape_tag(v) for v in values)}}}")
    if where.z_min is not None or where.z_max is not None:
        params["z_lo"] = int(where.z_min) if where.z_min is not None else "-inf"
        params["z_hi"] = int(where.z_max) if where.z_max is not None else "+inf"
        parts.append("@z:[$z_lo $z_hi]")
    return "(" + " ".join(parts) + ")", params


def text(value: Any) -> str:
    """A RESP2 bulk string (bytes) or number as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pairs(items: Iterable[Any]) -> dict[str, Any]:
    """A flat RESP2 ``[key, value, key, value, ...]`` reply as a dict (a trailing flag is dropped)."""
    items = list(items)
    return {text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def query_params(params: dict[str, Any]) -> list[Any]:
    """Query parameters as the ``PARAMS n k v ...`` arguments of ``FT.SEARCH`` (none when empty)."""
    if not params:
        return []
    flat: list[Any] = ["PARAMS", 2 * len(params)]
    for key, value in params.items():
        flat += [key, value]
    return flat
