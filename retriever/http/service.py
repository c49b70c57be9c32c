"""The query server's logic, apart from HTTP: decode, embed and search on one compute thread."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any

import numpy as np
import torch

from indexer.core.errors import ConfigError, DecodeError, StoreUnavailableError
from indexer.core.limits import RequestLimits
from indexer.images.decode import decode_tiff
from indexer.model.preprocess import preprocess_image
from indexer.stores.binding import store_identity
from retriever.http.app import ClientError
from retriever.http.checks import lost_index
from retriever.search import QueryOptions, Retriever

log = logging.getLogger(__name__)


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
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()  # (priority, order, fn, args, future)
        self._order = itertools.count()
        self._compute_thread: threading.Thread | None = None
        self._submit = threading.Lock()  # a job is queued only while a compute loop will take it

    @property
    def store_name(self) -> str:
        """The served store's name: ``redis`` or ``faiss``."""
        return _store_name(self.retriever.store)

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
            try:
                return 200, self.health()
            except Exception as e:
                raise (lost_index(e) or e) from e
        except StoreUnavailableError as e:
            name = _store_name(self.retriever.store)
            log.warning("health: the %s store is unavailable: %s", name, e)
            return 503, {
                "status": "unavailable",
                **store_identity(self.retriever.store),
                "stores": {name: {"ok": False, "reason": str(e)}},
            }

    def compute(self, fn: Callable[..., Any], *args: Any, priority: int = 0) -> Any:
        """Run ``fn(*args)`` on the compute thread (or here, under the lock, when none runs); return its
        result or raise its exception. Queued work runs lowest ``priority`` first, in order within one:
        queries (0) go before the live panel's perturbations (1)."""
        with self._submit:
            loop = self._compute_thread
            if loop is not None and loop is not threading.current_thread():
                future: Future = Future()
                self._jobs.put((priority, next(self._order), fn, args, future))
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
                    _, _, fn, args, future = self._jobs.get(timeout=poll)
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
                    self._jobs.get_nowait()[-1].set_exception(_stopping())

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
