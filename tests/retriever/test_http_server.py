"""The HTTP transport's own logging: waitress's per-request queue warnings are summarised, not repeated."""

from __future__ import annotations

import logging

from indexer.core.limits import RequestLimits
from retriever.http.transport import HttpServer, LogEvery


def _app(environ, start_response):  # pragma: no cover - never called: no request is sent
    start_response("204 No Content", [])
    return [b""]


def test_a_server_under_load_logs_queue_depth_once_a_minute_not_per_request(caplog):
    # Full plate, 8 clients, 4 threads: waitress wrote "Task queue depth is 1" 348 times in two minutes;
    # with stderr on a pipe nobody read, the server blocked once the pipe filled (after ~5 minutes).
    server = HttpServer(_app, "127.0.0.1", 0, RequestLimits())
    try:
        queue_log = logging.getLogger("waitress.queue")
        with caplog.at_level(logging.WARNING, logger="waitress.queue"):
            for depth in range(1, 101):
                queue_log.warning("Task queue depth is %d", depth % 3 + 1)
        shown = [r for r in caplog.records if r.name == "waitress.queue"]
        assert len(shown) == 1
        assert shown[0].getMessage() == "Task queue depth is 2"
        # A second server in the same process does not stack a second filter.
        HttpServer(_app, "127.0.0.1", 0, RequestLimits()).server_close()
        assert sum(isinstance(f, LogEvery) for f in queue_log.filters) == 1
    finally:
        server.server_close()


def test_log_every_counts_what_it_held_back_and_says_so_in_the_next_line():
    now = [0.0]
    limit = LogEvery(60.0, clock=lambda: now[0])

    def record(depth: int) -> logging.LogRecord:
        return logging.LogRecord(
            "waitress.queue", logging.WARNING, __file__, 1, "Task queue depth is %d", (depth,), None
        )

    first = record(1)
    assert limit.filter(first) and first.getMessage() == "Task queue depth is 1"
    assert [limit.filter(record(d)) for d in (2, 5, 3)] == [False, False, False]
    now[0] = 59.9
    assert not limit.filter(record(1))
    now[0] = 60.0
    later = record(2)
    assert limit.filter(later)
    assert later.getMessage() == (
        "Task queue depth is 2 (and 4 more such warnings in the last 60 s, not shown)"
    )
    now[0] = 200.0
    quiet = record(1)
    assert limit.filter(quiet) and quiet.getMessage() == "Task queue depth is 1"
