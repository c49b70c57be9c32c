"""The HTTP transport of ``mae-search serve``: waitress, with a deadline per request.

Why waitress rather than the standard library's ``ThreadingHTTPServer`` (which this replaced):

- it reads a request's whole body (up to the body limit) before the application sees it, so an
  answer given before the body was looked at can never leave that body on the connection to be run
  as the next request (keep-alive desync, request smuggling behind a proxy);
- connections are multiplexed on one event loop and only complete requests take a worker thread
  from a bounded pool, so 1,000 idle or slow connections hold no threads;
- it answers 413 from the Content-Length header alone and has a 1,024-deep listen backlog.

What waitress lacks is added here: a deadline from a request's first byte to its last (headers and
body together). Its own ``channel_timeout`` only closes *idle* connections, so a client that sends one
header byte a second would otherwise keep its connection forever.

The latency cost measured against the old server is in the README (``bench/bench_query.py``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from indexer.core.limits import RequestLimits
from retriever.http.app import App

if TYPE_CHECKING:
    from retriever.http.service import QueryService

log = logging.getLogger(__name__)

#: waitress logs a warning per request that waits for a worker thread; at most one line per this many
#: seconds reaches the log (see :class:`LogEvery`).
QUEUE_LOG_INTERVAL_S = 60.0


class LogEvery(logging.Filter):
    """Let one record through per ``interval`` seconds; the next one let through says how many were held.

    Why: waitress logs "Task queue depth is N" at WARNING for every request that has to wait for a
    worker thread. A server busy with more clients than threads (8 clients, 4 threads, the full plate)
    wrote 348 such lines in two minutes: they bury every other line, and when stderr is a pipe nobody
    reads the pipe fills and the next thread that logs blocks, and the server stops answering.
    """

    def __init__(self, interval: float, clock=time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """True for a record to log (the first of each interval)."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                self._held += 1
                return False
            held, self._held, self._last = self._held, 0, now
        if held:
            record.msg = f"{record.getMessage()} (and {held} more such warnings in the last {self.interval:.0f} s, not shown)"
            record.args = ()
        return True


def _limit_queue_warnings() -> None:
    """Put one :class:`LogEvery` on waitress's queue logger (once per process, however many servers)."""
    queue_log = logging.getLogger("waitress.queue")
    if not any(isinstance(f, LogEvery) for f in queue_log.filters):
        queue_log.addFilter(LogEvery(QUEUE_LOG_INTERVAL_S))


def _server_class():
    from waitress.server import TcpWSGIServer

    class DeadlineServer(TcpWSGIServer):
        """waitress's TCP server that also closes a connection whose request takes too long to arrive."""

        request_timeout = 30.0

        def maintenance(self, now: float) -> None:
            super().maintenance(now)
            for channel in list(self.active_channels.values()):
                partial = channel.request  # the parser of a request still being received, if any
                if partial is None or channel.requests:  # idle, or handed to a worker already
                    channel.__dict__.pop("_mae_started", None)
                    continue
                seen = channel.__dict__.get("_mae_started")
                if seen is None or seen[0] is not partial:
                    channel._mae_started = (partial, now)
                elif now - seen[1] > self.request_timeout:
                    log.info("closing %s: request not complete after %.0f s", channel.addr, now - seen[1])
                    channel.will_close = True

    return DeadlineServer


class HttpServer:
    """A WSGI application served by waitress on ``host:port`` (``port=0`` picks a free one).

    Same surface as the standard library's servers: :meth:`serve_forever`, :meth:`shutdown`,
    :meth:`server_close` and :attr:`server_port`.
    """

    def __init__(self, app: Any, host: str, port: int, limits: RequestLimits) -> None:
        from waitress.adjustments import Adjustments
        from waitress.task import ThreadedTaskDispatcher

        adj = Adjustments(
            host=host,
            port=port,
            threads=limits.threads,
            backlog=limits.backlog,
            connection_limit=limits.connection_limit,
            channel_timeout=max(1, math.ceil(limits.idle_timeout_s)),
            cleanup_interval=1,
            max_request_body_size=limits.max_body_bytes,
            max_request_header_size=64 * 1024,
            asyncore_use_poll=True,  # select() fails past 1,024 file descriptors
            ident="mae-search",
            expose_tracebacks=False,
        )
        _limit_queue_warnings()
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        cls = _server_class()
        self._server = cls(app, map={}, dispatcher=dispatcher, adj=adj)
        self._server.request_timeout = limits.request_timeout_s
        self._stopped = threading.Event()
        self._stopped.set()
        self.app = app

    @property
    def server_port(self) -> int:
        """The port listened on."""
        return int(self._server.effective_port)

    @property
    def server_address(self) -> tuple[str, int]:
        """``(host, port)`` listened on."""
        return str(self._server.effective_host), self.server_port

    def serve_forever(self) -> None:
        """Run the event loop until :meth:`shutdown`."""
        self._stopped.clear()
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the event loop (from another thread) and the worker threads."""
        server = self._server

        def close_all() -> None:  # runs on the loop's own thread
            for dispatcher in list(server._map.values()):
                try:
                    dispatcher.close()
                except OSError:  # pragma: no cover - already closed
                    pass

        try:
            server.trigger.pull_trigger(close_all)
        except OSError:  # the trigger is closed: the loop is gone already
            pass
        deadline = time.monotonic() + timeout
        while not self._stopped.wait(0.05) and time.monotonic() < deadline:
            pass
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    def server_close(self) -> None:
        """Release the listening socket (idempotent)."""
        try:
            self._server.close()
        except OSError:  # pragma: no cover
            pass


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
