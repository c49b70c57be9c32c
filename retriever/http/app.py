"""The query server's application: requests, responses, routing, and the JSON query API.

Endpoints (JSON responses)::

    GET  /health                    {"status": "ok", "count", "dim", "model", "store", "index"[, "server"],
                                     "stores"}; "degraded" (still 200) when a FAISS store open here has
                                     damaged shards, named in stores.faiss.damage; 503 {"status":
                                     "unavailable", "stores": {...}} if the store is down
    GET  /stats                     request counts, latency percentiles (ms), uptime
    POST /query?k=10&well=A01&...   body: one TIFF file (any content type) -> {"hits": [...]}
    POST /query/batch               {"images": [base64 TIFF, ...], "k", "where"} -> {"results": [[...], ...]}
    POST /query/ids                 {"ids": [int, ...], "k", "where"} -> {"results": [[...], ...]}

``where`` holds the filter fields of :class:`~indexer.core.records.MetadataFilter` (well, site, channel,
z, plate, row, column, z_min, z_max, source = real|synthetic, tags = "key=value" from a ``--metadata``
table); query-string filters may repeat (``?well=A01&well=A02``). Bad
input answers 4xx with ``{"error": reason}``: 400 for a body that is not a usable image, bad JSON, a
malformed id, an unknown parameter or key, or a request over a limit of
:class:`~indexer.core.limits.RequestLimits`; 404 for an unknown path or id; 413 for a body over the size
limit. A store that cannot be reached answers 503 with the reason.

Other modules add routes with :meth:`App.add` (the web explorer, eval's live panel). The model and index
work is :class:`retriever.http.service.QueryService`'s; the transport is waitress
(:mod:`retriever.http.transport`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from indexer.core.errors import ConfigError, StoreUnavailableError
from indexer.core.limits import RequestLimits
from indexer.core.records import MetadataFilter
from retriever.http.checks import (  # ClientError lives there so that the checks need not import this
    ClientError,
    check_filter,
    check_json_size,
    is_decimal,
    lost_index,
    whole_number,
)
from retriever.search import QueryOptions

if TYPE_CHECKING:  # the service imports ClientError from here
    from retriever.http.service import QueryService

log = logging.getLogger(__name__)

#: Default largest request body (see :class:`~indexer.core.limits.RequestLimits`).
DEFAULT_MAX_BODY = RequestLimits().max_body_bytes
_FILTER_FIELDS = ("plate", "well", "row", "column", "site", "channel", "z", "source", "tags")


def options_from(params: dict[str, Any], limits: RequestLimits | None = None) -> QueryOptions:
    """Build :class:`QueryOptions` from query-string or JSON values (lists allowed for filters), each
    checked against ``limits`` (:func:`retriever.http.checks.check_filter`)."""
    limits = limits or RequestLimits()
    try:
        where_src = params.get("where", params)
        if not isinstance(where_src, dict):
            raise TypeError("where must be a JSON object")
        if where_src is not params:
            _check_keys(where_src, frozenset({*_FILTER_FIELDS, "z_min", "z_max"}), "filter field")
        where = {f: where_src[f] for f in _FILTER_FIELDS if f in where_src}
        for bound in ("z_min", "z_max"):
            if bound in where_src:
                where[bound] = _one(where_src[bound])
        where = check_filter(where, limits)
        k = whole_number(_one(params.get("k", 10)), "k", 1, 2**31 - 1)  # k x queries: check_results
        max_distance = params.get("max_distance")
        return QueryOptions(
            k=k,
            where=MetadataFilter(**where),
            max_distance=None if max_distance is None else float(_one(max_distance)),
        )
    except (ValueError, TypeError, ConfigError) as e:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"bad query options: {e}") from e


def _one(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


@dataclass
class Request:
    """One HTTP request as the routes see it: the body is already read (waitress buffers it)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]
    client: str = ""  # the peer's address (REMOTE_ADDR), for per-client limits

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (400 for anything else, including nesting too deep to parse)."""
        if not self.body:
            raise ClientError(HTTPStatus.BAD_REQUEST, "empty body: send a JSON object")
        try:
            obj = json.loads(self.body)
        except RecursionError as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, "body is not usable JSON: nested too deeply") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ClientError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return obj


@dataclass
class Response:
    """What a route answers: status, body bytes, content type and extra headers."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON response."""
    return Response(json.dumps(payload).encode(), status)


Route = Callable[[Request], Response]


@dataclass(frozen=True)
class RouteSpec:
    """A route: the handler and the query-string parameters it takes (any other is a 400)."""

    handler: Route
    params: frozenset[str] | None = frozenset()  # None: any (the page keeps its own state in the URL)


_QUERY_PARAMS = frozenset({"k", "max_distance", "z_min", "z_max", "backend", *_FILTER_FIELDS})
_JSON_KEYS = frozenset({"k", "max_distance", "where", "z_min", "z_max", "backend", *_FILTER_FIELDS})


def _backend(value: Any) -> str | None:
    value = _one(value) if value is not None else None
    if value is not None and value not in ("redis", "faiss"):
        raise ClientError(HTTPStatus.BAD_REQUEST, f"backend must be redis or faiss, got {value!r}")
    return value


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ClientError(
            HTTPStatus.BAD_REQUEST,
            f"unknown {what} {unknown[0]!r}; this endpoint takes: {', '.join(sorted(allowed))}",
        )


def parse_id(value: Any) -> int:
    """One image id from JSON: an integer in [0, 2**63), or the same as a decimal string.

    Strings are accepted because JavaScript numbers lose precision above 2**53 and ids are 63-bit.
    """
    if isinstance(value, str) and is_decimal(value) and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ClientError(
            HTTPStatus.BAD_REQUEST,
            f"bad id {str(value)[:40]!r}: ids are integers in [0, 2**63) (or the same as decimal strings)",
        )
    return value


def parse_ids(value: Any, limits: RequestLimits) -> list[int]:
    """Validate a JSON list of image ids (see :func:`parse_id`), at most ``limits.max_ids``."""
    if not isinstance(value, list) or not value:
        raise ClientError(HTTPStatus.BAD_REQUEST, "ids must be a non-empty list of integers")
    if len(value) > limits.max_ids:
        raise ClientError(
            HTTPStatus.BAD_REQUEST, f"{len(value)} ids given; at most {limits.max_ids} ids per request"
        )
    return [parse_id(v) for v in value]


def check_results(k: int, n_queries: int, limits: RequestLimits) -> None:
    """Refuse a request whose answer would hold more than ``limits.max_results`` hits."""
    if k * n_queries > limits.max_results:
        raise ClientError(
            HTTPStatus.BAD_REQUEST,
            f"k x queries = {k} x {n_queries} = {k * n_queries} is over the limit of "
            f"{limits.max_results} results per request",
        )


class App:
    """The WSGI application: routes, the unknown-parameter check and error mapping.

    Routes are keyed by ``(method, path)``; a path ending in ``/`` is a prefix (``/thumb/``). Other
    modules add routes with :meth:`add` (the web explorer does). ``catalog`` is the explorer's
    :class:`retriever.catalog.Catalog` of the served store once one is made, so that plugins read its
    records instead of holding a second copy of them.
    """

    def __init__(self, service: QueryService, limits: RequestLimits) -> None:
        self.service = service
        self.limits = limits
        self.catalog: Any = None
        self.routes: dict[tuple[str, str], RouteSpec] = {}
        self.add("GET", "/health", self._health)
        self.add("GET", "/stats", lambda req: json_response(service.stats.snapshot()))
        self.add("POST", "/query", self._query, _QUERY_PARAMS)
        self.add("POST", "/query/batch", self._batch)
        self.add("POST", "/query/ids", self._ids)

    def add(
        self, method: str, path: str, handler: Route, params: frozenset[str] | set[str] | None = frozenset()
    ) -> None:
        """Register ``handler`` for ``method path`` taking the query parameters ``params`` (None: any)."""
        self.routes[(method, path)] = RouteSpec(handler, None if params is None else frozenset(params))

    def _find(self, method: str, path: str) -> RouteSpec | None:
        spec = self.routes.get((method, path))
        if spec is None:
            for (m, p), s in self.routes.items():
                if m == method and p.endswith("/") and len(p) > 1 and path.startswith(p):
                    return s
        return spec

    # -- the JSON API ----------------------------------------------------------------------------

    def _health(self, req: Request) -> Response:
        status, payload = self.service.health_status()
        return json_response(payload, status)

    def _query(self, req: Request) -> Response:
        options = options_from(req.query, self.limits)
        check_results(options.k, 1, self.limits)
        if not req.body:
            raise ClientError(HTTPStatus.BAD_REQUEST, "empty body: send one TIFF file")
        backend = _backend(req.query.get("backend"))
        return json_response({"hits": self.service.query_images([req.body], options, backend)[0]})

    def _batch(self, req: Request) -> Response:
        obj = req.json()
        _check_keys(obj, _JSON_KEYS | {"images"}, "key")
        images = obj.get("images")
        if not isinstance(images, list) or not images or not all(isinstance(s, str) for s in images):
            raise ClientError(HTTPStatus.BAD_REQUEST, "images must be a non-empty list of base64 strings")
        if len(images) > self.limits.max_images:
            raise ClientError(
                HTTPStatus.BAD_REQUEST,
                f"{len(images)} images given; at most {self.limits.max_images} images per request",
            )
        options = options_from(obj, self.limits)
        check_results(options.k, len(images), self.limits)
        backend = _backend(obj.get("backend"))
        return json_response({"results": self.service.query_images(_b64_stream(images), options, backend)})

    def _ids(self, req: Request) -> Response:
        check_json_size(req.body, self.limits, "a /query/ids")
        obj = req.json()
        _check_keys(obj, _JSON_KEYS | {"ids"}, "key")
        ids = parse_ids(obj.get("ids"), self.limits)
        options = options_from(obj, self.limits)
        check_results(options.k, len(ids), self.limits)
        return json_response({"results": self.service.query_ids(ids, options, _backend(obj.get("backend")))})

    # -- WSGI ------------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Route one request; every failure becomes a JSON error (4xx, 503 or 500), never a traceback."""
        try:
            spec = self._find("GET" if req.method == "HEAD" else req.method, req.path)
            if spec is None:
                allowed = sorted(m for (m, p) in self.routes if p == req.path)
                if allowed:
                    raise ClientError(
                        HTTPStatus.METHOD_NOT_ALLOWED, f"use {' or '.join(allowed)} for {req.path}"
                    )
                raise ClientError(HTTPStatus.NOT_FOUND, f"no such endpoint: {req.method} {req.path}")
            if spec.params is not None:
                _check_keys(req.query, spec.params, "parameter")
            return spec.handler(req)
        except ClientError as e:
            return json_response({"error": str(e)}, e.status)
        except StoreUnavailableError as e:
            name = self.service.store_name
            return json_response(
                {"error": f"the {name} store is unavailable: {e}"}, HTTPStatus.SERVICE_UNAVAILABLE
            )
        except Exception as e:  # a bug: answer 500 without the stack, log it
            lost = lost_index(e)
            if lost is not None:
                return json_response({"error": f"the {self.service.store_name} store is unavailable: {lost}"},
                                     HTTPStatus.SERVICE_UNAVAILABLE)  # fmt: skip
            log.exception("internal error on %s %s", req.method, req.path)
            return json_response({"error": f"internal error: {type(e).__name__}"}, 500)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        t0 = time.perf_counter()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        req = Request(
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO", "/") or "/",
            query=parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True),
            body=body,
            headers={k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")},
            client=str(environ.get("REMOTE_ADDR", "")),
        )
        resp = self.handle(req)
        self.service.stats.record(time.perf_counter() - t0, resp.status < 400)
        status = HTTPStatus(resp.status)
        headers = [
            ("Content-Type", resp.content_type),
            ("Content-Length", str(len(resp.body))),
            ("X-Content-Type-Options", "nosniff"),
            *resp.headers,
        ]
        start_response(f"{status.value} {status.phrase}", headers)
        return [resp.body] if req.method != "HEAD" else []


def _b64_stream(images: list[str]) -> Iterator[bytes]:
    """Decode base64 images one at a time, as they are needed."""
    for i, s in enumerate(images):
        try:
            yield base64.b64decode(s, validate=True)
        except binascii.Error as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, f"image {i}: not base64: {e}") from e
