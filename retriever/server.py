"""A warm HTTP JSON query server: the model and the index stay loaded, so a query costs one forward pass.

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

The HTTP transport is waitress (see :mod:`retriever.http_server`); this module is the application.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import torch

from indexer.core.errors import ConfigError, DecodeError, StoreUnavailableError
from indexer.core.limits import RequestLimits
from indexer.core.records import MetadataFilter
from indexer.images.decode import decode_tiff
from indexer.model.preprocess import preprocess_image
from indexer.stores.binding import store_identity
from retriever.http_server import HttpServer
from retriever.search import QueryOptions, Retriever

log = logging.getLogger(__name__)

#: Default largest request body (see :class:`~indexer.core.limits.RequestLimits`).
DEFAULT_MAX_BODY = RequestLimits().max_body_bytes
_FILTER_FIELDS = ("plate", "well", "row", "column", "site", "channel", "z", "source", "tags")


class ClientError(Exception):
    """A request the client must fix (answered with ``status`` and the message)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def options_from(params: dict[str, Any]) -> QueryOptions:
    """Build :class:`QueryOptions` from query-string or JSON values (lists allowed for filters)."""
    try:
        where_src = params.get("where", params)
        if not isinstance(where_src, dict):
            raise TypeError("where must be a JSON object")
        if where_src is not params:
            _check_keys(where_src, frozenset({*_FILTER_FIELDS, "z_min", "z_max"}), "filter field")
        where = {f: where_src[f] for f in _FILTER_FIELDS if f in where_src}
        for bound in ("z_min", "z_max"):
            if bound in where_src:
                where[bound] = int(_one(where_src[bound]))
        k = int(_one(params.get("k", 10)))
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


class LatencyStats:
    """Thread-safe request counters and a window of recent latencies."""

    def __init__(self, window: int = 10000) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self.requests = 0
        self.errors = 0
        self.started = time.time()

    def record(self, seconds: float, ok: bool) -> None:
        """Count one request."""
        with self._lock:
            self.requests += 1
            self.errors += 0 if ok else 1
            if ok:
                self._latencies.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        """Counts, uptime and p50/p95/p99 latency in milliseconds."""
        with self._lock:
            lat = np.array(self._latencies) * 1000.0
            out = {
                "requests": self.requests,
                "errors": self.errors,
                "uptime_s": round(time.time() - self.started, 1),
            }
        if len(lat):
            for q in (50, 95, 99):
                out[f"p{q}_ms"] = round(float(np.percentile(lat, q)), 3)
        return out


def _stopping() -> ClientError:
    return ClientError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is stopping; retry on another")


class QueryService:
    """The server's logic, apart from HTTP: decode, embed and search, all on one *compute thread*.

    The compute thread is the one that calls :meth:`run_compute` (the main thread in ``mae-search
    serve``, the thread that loaded the model); request threads hand it their work and wait. Without a
    running :meth:`run_compute`, work runs on the calling thread under a lock. Why one thread: torch's
    OpenMP pool belongs to the thread that calls it, a second calling thread starts a second pool, and
    with more pool threads than cores libgomp stops spin-waiting: the tiny model's forward pass took
    19 ms from a request thread instead of 9 ms (2 cores).
    """

    def __init__(self, retriever: Retriever, limits: RequestLimits | None = None) -> None:
        self.retriever = retriever
        self.limits = limits or RequestLimits()
        #: Searchable stores by name ("redis", "faiss"): the served one, and its mirror when both exist.
        self.backends: dict[str, Retriever] = {_store_name(retriever.store): retriever}
        self.lock = threading.Lock()
        self.stats = LatencyStats()
        self._jobs: queue.Queue = queue.Queue()
        self._compute_thread: threading.Thread | None = None
        self._submit = threading.Lock()  # a job is queued only while a compute loop will take it

    def health(self) -> dict[str, Any]:
        """Liveness and what is loaded (raises StoreUnavailableError when the store is down).

        ``status`` is ``degraded`` when a FAISS store open here (the served one or the mirror) found
        damaged shards on open: it serves the sound ones, and ``stores.faiss.damage`` names the rest.
        """
        manifest = self.retriever.store.read_manifest() or {}
        name = _store_name(self.retriever.store)
        stores: dict[str, dict[str, Any]] = {name: {"ok": True}}
        for backend, retriever in self.backends.items():
            damage = _damage(retriever.store)
            if damage:
                stores.setdefault(backend, {"ok": True})["damage"] = damage
        return {
            "status": "degraded" if any("damage" in s for s in stores.values()) else "ok",
            "count": self.retriever.store.count(),
            "dim": manifest.get("dim"),
            "model": manifest.get("model", {}).get("name"),
            **store_identity(self.retriever.store),  # which store and index answer: store, index (server)
            "stores": stores,
        }

    def health_status(self) -> tuple[int, dict[str, Any]]:
        """``(200, health)``, or ``(503, {"status": "unavailable", "stores": {name: {ok, reason}}})``."""
        try:
            return 200, self.health()
        except StoreUnavailableError as e:
            name = _store_name(self.retriever.store)
            log.warning("health: the %s store is unavailable: %s", name, e)
            return 503, {
                "status": "unavailable",
                **store_identity(self.retriever.store),
                "stores": {name: {"ok": False, "reason": str(e)}},
            }

    def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the compute thread (or here, under the lock, when none runs); return its
        result or raise its exception."""
        with self._submit:
            loop = self._compute_thread
            if loop is not None and loop is not threading.current_thread():
                future: Future = Future()
                self._jobs.put((fn, args, future))
        if loop is None or loop is threading.current_thread():
            with self.lock:
                return fn(*args)
        return future.result()

    def run_compute(self, stop: threading.Event, poll: float = 0.1) -> None:
        """Do the queued model and index work on the calling thread until ``stop`` is set."""
        with self._submit:
            self._compute_thread = threading.current_thread()
        try:
            while not stop.is_set():
                try:
                    fn, args, future = self._jobs.get(timeout=poll)
                except queue.Empty:
                    continue
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args))
                except Exception as e:
                    future.set_exception(e)
                except BaseException as e:  # Ctrl-C: answer the waiting request, then stop
                    future.set_exception(_stopping())
                    raise e
        finally:
            with self._submit:
                self._compute_thread = None
                while not self._jobs.empty():
                    self._jobs.get_nowait()[2].set_exception(_stopping())

    def warm_up(self) -> None:
        """Run one forward pass (on the compute thread, when one runs) so the first query is not slow."""
        size = self.retriever.preprocess.image_size
        x = torch.zeros((1, 3, *size))
        self.compute(self.retriever.encoder.embed, x)

    def decode(self, blob: bytes, i: int = 0) -> np.ndarray:
        """Decode one uploaded TIFF under the server's limits (400 with the image's number otherwise)."""
        try:
            return decode_tiff(blob, self.limits.decode)
        except DecodeError as e:
            raise ClientError(HTTPStatus.BAD_REQUEST, f"image {i}: {e}") from e

    def model_inputs(self, blobs: Iterable[bytes]) -> list[torch.Tensor | np.ndarray]:
        """Decode (on this thread) and preprocess (on the compute thread) images one at a time.

        Only one decoded image is held at once, whatever the batch size; the decoded bytes summed over
        the request are bounded by ``limits.max_decoded_bytes``. The last image is returned decoded, not
        preprocessed: the caller's final compute call preprocesses it with the forward pass, so a
        one-image query costs one hand-over to the compute thread, not two.
        """
        items: list[torch.Tensor | np.ndarray] = []
        total = 0
        for i, blob in enumerate(blobs):
            if items and isinstance(items[-1], np.ndarray):
                items[-1] = self.compute(preprocess_image, items[-1], self.retriever.preprocess)
            image = self.decode(blob, i)
            total += image.nbytes
            if total > self.limits.max_decoded_bytes:
                raise ClientError(
                    HTTPStatus.BAD_REQUEST,
                    f"image {i}: the request's images decode to over "
                    f"{self.limits.max_decoded_bytes // 2**20} MB; send fewer or smaller images",
                )
            items.append(image)
        return items

    def embed_blobs(self, blobs: Iterable[bytes], retriever: Retriever | None = None) -> np.ndarray:
        """Query vectors of image files given as bytes (decoded as a stream, see :meth:`model_inputs`)."""
        return self.compute(self._embed_items, retriever or self.retriever, self.model_inputs(blobs))

    @staticmethod
    def _embed_items(retriever: Retriever, items: list[torch.Tensor | np.ndarray]) -> np.ndarray:
        tensors = [
            preprocess_image(x, retriever.preprocess) if isinstance(x, np.ndarray) else x for x in items
        ]
        return retriever.embed_tensors(tensors)

    def add_backend(self, store: Any) -> None:
        """Make a second store (the FAISS mirror of a Redis index, or the reverse) searchable by name."""
        r = self.retriever
        self.backends[_store_name(store)] = Retriever(
            store, r.encoder, r.preprocess, r.batch_size, r.transform
        )

    def pick(self, backend: str | None) -> Retriever:
        """The retriever of ``backend`` (default: the served store); 400 for one that is not open."""
        if backend is None:
            return self.retriever
        if backend not in self.backends:
            raise ClientError(
                HTTPStatus.BAD_REQUEST,
                f"backend {backend!r} is not open here; open: {', '.join(self.backends)}",
            )
        return self.backends[backend]

    def query_images(
        self, blobs: Iterable[bytes], options: QueryOptions, backend: str | None = None
    ) -> list[list[dict]]:
        """Decode, embed and search image files given as bytes (decoded as a stream)."""
        retriever = self.pick(backend)
        items = self.model_inputs(blobs)
        return self.compute(self._search_items, retriever, items, options)

    def _search_items(
        self, retriever: Retriever, items: list[torch.Tensor | np.ndarray], options: QueryOptions
    ) -> list[list[dict]]:
        vectors = self._embed_items(retriever, items)
        results = retriever.search_vectors(vectors, options)
        return [[h.to_dict() for h in hits] for hits in results]

    def query_ids(
        self, ids: list[int], options: QueryOptions, backend: str | None = None
    ) -> list[list[dict]]:
        """Search with stored vectors of indexed images (404 for an id not in the index)."""
        retriever = self.pick(backend)
        try:
            results = self.compute(retriever.search_ids, [int(i) for i in ids], options)
        except ConfigError as e:
            raise ClientError(HTTPStatus.NOT_FOUND, str(e)) from e
        return [[h.to_dict() for h in hits] for hits in results]


def _damage(store: Any) -> list[str]:
    """What a FAISS store found damaged when it opened (its cheap check: free, nothing re-read). A Redis
    store's own check lists every key (a SCAN), too slow for a health probe: ``mae-index verify`` runs it."""
    return store.check() if _store_name(store) == "faiss" else []


def _store_name(store: Any) -> str:
    return "redis" if type(store).__name__.lower().startswith("redis") else "faiss"


@dataclass
class Request:
    """One HTTP request as the routes see it: the body is already read (waitress buffers it)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]

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
    if isinstance(value, str) and value.isdigit() and len(value) <= 19:
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
        options = options_from(req.query)
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
        options = options_from(obj)
        check_results(options.k, len(images), self.limits)
        backend = _backend(obj.get("backend"))
        return json_response({"results": self.service.query_images(_b64_stream(images), options, backend)})

    def _ids(self, req: Request) -> Response:
        obj = req.json()
        _check_keys(obj, _JSON_KEYS | {"ids"}, "key")
        ids = parse_ids(obj.get("ids"), self.limits)
        options = options_from(obj)
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
            name = _store_name(self.service.retriever.store)
            return json_response(
                {"error": f"the {name} store is unavailable: {e}"}, HTTPStatus.SERVICE_UNAVAILABLE
            )
        except Exception as e:  # a bug: answer 500 without the stack, log it
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


def make_server(
    service: QueryService,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body: int | None = None,
    limits: RequestLimits | None = None,
    request_timeout: float | None = None,
    app: App | None = None,
) -> HttpServer:
    """Create (not start) the HTTP server; ``port=0`` picks a free port.

    ``max_body`` and ``request_timeout`` override the same fields of ``limits``. The returned server
    has ``.service`` and ``.app`` for tests and extensions.
    """
    limits = limits or service.limits
    if max_body is not None:
        limits = replace(limits, max_body_bytes=max_body)
    if request_timeout is not None:
        limits = replace(limits, request_timeout_s=request_timeout, idle_timeout_s=request_timeout)
    service.limits = limits
    app = app or App(service, limits)
    server = HttpServer(app, host, port, limits)
    server.service = service  # type: ignore[attr-defined]
    return server


def query_server(url: str, files: list, options: QueryOptions, timeout: float = 60.0) -> list[list[dict]]:
    """Client side of ``mae-search query --server URL``: post the files to ``/query/batch``."""
    import urllib.error
    import urllib.request
    from dataclasses import asdict

    where = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(options.where).items()
        if v not in ((), None)
    }
    body = {
        "images": [base64.b64encode(open(f, "rb").read()).decode() for f in files],
        "k": options.k,
        "where": where,
        "max_distance": options.max_distance,
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/query/batch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())["results"]
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        # One exit-code rule: a request the server refused as malformed is a usage error (exit 2); an
        # image it could not use or a server-side failure (5xx, a store down) is a runtime one (exit 1).
        if e.code >= 500:
            raise StoreUnavailableError(f"query server answered {e.code}: {detail}") from e
        if '"image ' in detail:
            raise DecodeError(f"query server answered {e.code}: {detail}") from e
        raise ConfigError(f"query server answered {e.code}: {detail}") from e
    except urllib.error.URLError as e:
        raise StoreUnavailableError(f"cannot reach query server {url}: {e.reason}") from e
