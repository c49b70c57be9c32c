"""A warm HTTP JSON query server: the model and the index stay loaded, so a query costs one forward pass.

Endpoints (JSON responses)::

    GET  /health                    {"status": "ok", "count", "dim", "model", "store", "index"[, "server"]}
    GET  /stats                     request counts, latency percentiles (ms), uptime
    POST /query?k=10&well=A01&...   body: one TIFF file (any content type) -> {"hits": [...]}
    POST /query/batch               {"images": [base64 TIFF, ...], "k", "where"} -> {"results": [[...], ...]}
    POST /query/ids                 {"ids": [int, ...], "k", "where"} -> {"results": [[...], ...]}

``where`` holds the filter fields of :class:`~indexer.stores.base.MetadataFilter` (well, site, channel,
z, plate, row, column, z_min, z_max); query-string filters may repeat (``?well=A01&well=A02``). Bad
input answers 4xx with ``{"error": reason}``: 400 for a body that is not a usable image or bad JSON,
404 for an unknown path or id, 413 for a body over the size limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch

from indexer.decode import decode_tiff
from indexer.errors import ConfigError, DecodeError
from indexer.stores.base import MetadataFilter
from indexer.stores.binding import store_identity
from retriever.search import QueryOptions, Retriever

log = logging.getLogger(__name__)

#: Default largest request body: a 16-bit 4k x 4k image is 32 MB; BBBC006 files are under 1 MB.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
_FILTER_FIELDS = ("plate", "well", "row", "column", "site", "channel", "z")


class ClientError(Exception):
    """A request the client must fix (answered with ``status`` and the message)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def options_from(params: dict[str, Any]) -> QueryOptions:
    """Build :class:`QueryOptions` from query-string or JSON values (lists allowed for filters)."""
    try:
        where_src = params.get("where", params)
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

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.lock = threading.Lock()
        self.stats = LatencyStats()
        self._jobs: queue.Queue = queue.Queue()
        self._compute_thread: threading.Thread | None = None
        self._submit = threading.Lock()  # a job is queued only while a compute loop will take it

    def health(self) -> dict[str, Any]:
        """Liveness and what is loaded."""
        manifest = self.retriever.store.read_manifest() or {}
        return {
            "status": "ok",
            "count": self.retriever.store.count(),
            "dim": manifest.get("dim"),
            "model": manifest.get("model", {}).get("name"),
            **store_identity(self.retriever.store),  # which store and index answer: store, index (server)
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

    def query_images(self, blobs: list[bytes], options: QueryOptions) -> list[list[dict]]:
        """Decode, embed and search image files given as bytes."""
        return self.compute(self._query_images, blobs, options)

    def _query_images(self, blobs: list[bytes], options: QueryOptions) -> list[list[dict]]:
        images = []
        for i, blob in enumerate(blobs):
            try:
                images.append(decode_tiff(blob))
            except DecodeError as e:
                raise ClientError(HTTPStatus.BAD_REQUEST, f"image {i}: {e}") from e
        vectors = self.retriever.embed_arrays(images)
        results = self.retriever.search_vectors(vectors, options)
        return [[h.to_dict() for h in hits] for hits in results]

    def query_ids(self, ids: list[int], options: QueryOptions) -> list[list[dict]]:
        """Search with stored vectors of indexed images."""
        try:
            results = self.compute(self.retriever.search_ids, [int(i) for i in ids], options)
        except (ConfigError, ValueError, TypeError) as e:
            raise ClientError(HTTPStatus.NOT_FOUND, str(e)) from e
        return [[h.to_dict() for h in hits] for hits in results]


def make_handler(service: QueryService, max_body: int) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``service``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mae-search"
        service: QueryService
        protocol_version = "HTTP/1.1"
        # Buffer the response so headers and body leave in one segment: two small writes meet Nagle's
        # algorithm and the client's delayed ACK, which cost ~40 ms per keep-alive request.
        wbufsize = 1 << 16

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt: str, *args: Any) -> None:  # stderr via logging, not print
            log.info("%s " + fmt, self.address_string(), *args)

        def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                raise ClientError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            try:
                n = int(length)
            except ValueError as e:
                raise ClientError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from e
            if n > max_body:
                # Read nothing more: close the connection instead of draining a huge upload.
                self.close_connection = True
                raise ClientError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {n} bytes exceeds {max_body}"
                )
            if n <= 0:
                raise ClientError(HTTPStatus.BAD_REQUEST, "empty body")
            return self.rfile.read(n)

        def _json(self) -> dict[str, Any]:
            try:
                obj = json.loads(self._body())
            except (ValueError, UnicodeDecodeError) as e:
                raise ClientError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}") from e
            if not isinstance(obj, dict):
                raise ClientError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            return obj

        def _handle(self, route) -> None:
            t0 = time.perf_counter()
            ok = False
            try:
                payload = route()
                self._send(HTTPStatus.OK, payload)
                ok = True
            except ClientError as e:
                self._send(e.status, {"error": str(e)})
            except Exception as e:  # a bug: answer 500 without the stack, log it
                log.exception("internal error")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}"})
            finally:
                service.stats.record(time.perf_counter() - t0, ok)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlparse(self.path).path

            def route() -> dict[str, Any]:
                if path == "/health":
                    return service.health()
                if path == "/stats":
                    return service.stats.snapshot()
                raise ClientError(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {path}")

            self._handle(route)

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)

            def route() -> dict[str, Any]:
                if url.path == "/query":
                    options = options_from(parse_qs(url.query))
                    return {"hits": service.query_images([self._body()], options)[0]}
                if url.path == "/query/batch":
                    obj = self._json()
                    try:
                        blobs = [base64.b64decode(s, validate=True) for s in obj.get("images", [])]
                    except (binascii.Error, TypeError) as e:
                        raise ClientError(
                            HTTPStatus.BAD_REQUEST, f"images must be base64 strings: {e}"
                        ) from e
                    if not blobs:
                        raise ClientError(HTTPStatus.BAD_REQUEST, "no images given")
                    return {"results": service.query_images(blobs, options_from(obj))}
                if url.path == "/query/ids":
                    obj = self._json()
                    ids = obj.get("ids")
                    if not isinstance(ids, list) or not ids:
                        raise ClientError(HTTPStatus.BAD_REQUEST, "ids must be a non-empty list of integers")
                    return {"results": service.query_ids(ids, options_from(obj))}
                raise ClientError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {url.path}")

            self._handle(route)

    Handler.service = service
    return Handler


def make_server(service: QueryService, host: str = "127.0.0.1", port: int = 8000,
                max_body: int = DEFAULT_MAX_BODY) -> ThreadingHTTPServer:  # fmt: skip
    """Create (not start) the HTTP server; ``port=0`` picks a free port."""
    server = ThreadingHTTPServer((host, port), make_handler(service, max_body))
    server.daemon_threads = True
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
        raise ConfigError(f"query server answered {e.code}: {detail}") from e
    except urllib.error.URLError as e:
        from indexer.errors import StoreUnavailableError

        raise StoreUnavailableError(f"cannot reach query server {url}: {e.reason}") from e
