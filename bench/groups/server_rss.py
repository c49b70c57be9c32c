"""Server memory under load: 8 clients for 10 minutes against a real `mae-search serve`; RSS must stay
within 10 % of its level after warm-up.

    python -m bench run server_rss --set minutes=10 --set clients=8

Builds a small index of the shipped real images with the shipped tiny model, starts the server as a
subprocess on 127.0.0.1 and runs the mixed load of ``bench/server_load.py`` (uploads, id queries,
batches, health checks, bad requests, and the explorer's plate map, records and thumbnails).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import REAL_DIR, build_real_index
from bench.harness import Result
from bench.server_load import run_load


@dataclass(frozen=True)
class Params:
    """``minutes`` of load from ``clients``; ``warmup`` seconds before the RSS baseline."""

    minutes: float = 10.0
    clients: int = 8
    warmup: float = 60.0


QUICK = Params(minutes=0.75, clients=4, warmup=15.0)


def run(p: Params) -> Iterator[Result]:
    """Requests, their rate, unexpected statuses, and the server's RSS after warm-up (first, min, max,
    growth)."""
    from indexer.stores.faiss.store import FaissStore
    from tests.support.serve import start_serve

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-rss-"))
    build_real_index(tmp / "idx")
    ids = [int(i) for i in FaissStore(tmp / "idx", read_only=True).ids()]
    blobs = [path.read_bytes() for path in sorted(REAL_DIR.glob("*.tif"))]
    proc, port = start_serve(tmp / "idx")
    try:
        res = run_load(port, proc.pid, p.minutes * 60, blobs, ids, p.clients, p.warmup, 5.0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    case = "mae-search serve under mixed load"
    yield Result(case, "requests", res["requests"], "")
    yield Result(case, "request_rate", res["requests"] / res["seconds"], "req/s")
    yield Result(case, "unexpected_statuses", res["errors"], "")
    mb = [r / 2**20 for _, r in res["samples"]]
    first = int(p.warmup // 5)
    if first < len(mb):
        yield Result(case, "rss_first_after_warmup", mb[first], "MB")
    if "rss_min" in res:
        yield Result(case, "rss_min_after_warmup", res["rss_min"] / 2**20, "MB")
        yield Result(case, "rss_max_after_warmup", res["rss_max"] / 2**20, "MB")
        yield Result(case + " (target < 10 %)", "rss_growth_after_warmup", res["growth"] * 100, "%")
