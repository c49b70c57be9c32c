"""Checks on the values of one request, made before any work: filter lists, numbers, JSON sizes.

A 30 MB JSON filter list cost up to 870 MB per request, ``site: Infinity`` or ``1e999`` answered 500
and ``10**30`` was searched for; an id of superscript digits (``/thumb/%B2``: ``"²".isdigit()`` is
true, ``int("²")`` fails) answered 500. The limits are :class:`~indexer.core.limits.RequestLimits`'.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

from indexer.core.errors import StoreUnavailableError
from indexer.core.limits import METADATA_NUMBER_RANGES, RequestLimits

#: The inclusive range of each numeric filter field (sites and z as a ``--metadata`` table may give them).
NUMBER_RANGES = {
    "site": METADATA_NUMBER_RANGES["site"],
    "z": METADATA_NUMBER_RANGES["z"],
    "z_min": METADATA_NUMBER_RANGES["z"],
    "z_max": METADATA_NUMBER_RANGES["z"],
    "column": (0, 1_000_000),
}


class ClientError(Exception):
    """A request the client must fix (answered with ``status`` and the message)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _client_error(status: HTTPStatus, message: str) -> Exception:
    return ClientError(status, message)


def is_decimal(text: str) -> bool:
    """True for ASCII digits only (``str.isdigit`` accepts ``²`` and other digits ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """``value`` (a JSON number or decimal string) as an int in ``[low, high]``; else a 400 naming ``name``."""
    if isinstance(value, str) and is_decimal(value.strip()) and len(value.strip()) <= 19:
        value = int(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _client_error(
            HTTPStatus.BAD_REQUEST, f"{name} must be a whole number in {low}..{high}, got {str(value)[:40]!r}"
        )
    return value


def check_json_size(body: bytes, limits: RequestLimits, what: str) -> None:
    """Refuse (413) a JSON body that carries no image and is over ``limits.max_json_bytes``, unparsed."""
    if len(body) > limits.max_json_bytes:
        raise _client_error(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"{what} body of {len(body)} bytes is over the limit of {limits.max_json_bytes} bytes",
        )


def check_filter(where: dict[str, Any], limits: RequestLimits) -> dict[str, Any]:
    """Check each filter field's values: at most ``limits.max_filter_values`` of them, strings of at most
    ``limits.max_field_chars``, numbers whole and in range (:data:`NUMBER_RANGES`); return ``where`` with
    the numbers as ints.

    Raises
    ------
    ClientError
        400 naming the field.
    """
    out: dict[str, Any] = {}
    for name, value in where.items():
        values = value if isinstance(value, list) else [value]
        if len(values) > limits.max_filter_values:
            raise _client_error(
                HTTPStatus.BAD_REQUEST,
                f"{len(values)} values for {name}; at most {limits.max_filter_values} per filter field",
            )
        for v in values:
            if isinstance(v, str) and len(v) > limits.max_field_chars:
                raise _client_error(
                    HTTPStatus.BAD_REQUEST,
                    f"a {name} value of {len(v)} characters; at most {limits.max_field_chars}",
                )
        if name in NUMBER_RANGES:
            low, high = NUMBER_RANGES[name]
            checked = [whole_number(v, name, low, high) for v in values]
            out[name] = checked if isinstance(value, list) else checked[0]
        else:
            out[name] = value
    return out


def lost_index(e: BaseException) -> StoreUnavailableError | None:
    """The 503 a Redis "no such index" error means under a running server (Redis restarted without its
    data, or the index dropped), else None. Matched by the redis-py class name and Redis's words, so this
    module imports no Redis client."""
    text = str(e).lower()
    if type(e).__name__ == "ResponseError" and ("no such index" in text or "unknown index name" in text):
        return StoreUnavailableError(
            "Redis has no such index any more (restarted empty, or dropped?): rebuild its copy from the "
            "index folder with `mae-index repair --index DIR --redis-url URL`, then restart the server"
        )
    return None
