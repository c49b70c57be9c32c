"""The query server's HTTP transport: waitress (now) against the standard library's
ThreadingHTTPServer (the server of git ref ``old_ref``), interleaved in one run on the same model and index.

    python -m bench run transport --set old_ref=618463c --set rounds=6 --set queries=40

Each round sends ``queries`` uploads (POST /query, keep-alive, one client) to each server in turn; the
rows are the p50/p95 per server over all rounds.
"""

from __future__ import annotations

import http.client
import importlib.util
import subprocess
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import REAL_DIR, REPO, build_real_index
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``old_ref``: the git ref of the old server; ``rounds`` of ``queries`` uploads per server."""

    old_ref: str = "618463c"
    rounds: int = 6
    queries: int = 40


QUICK = Params(rounds=2, queries=15)


#: Modules the old server imports that have moved since (the layout of b690aef), old -> new.
MOVED = {
    "from indexer.decode import": "from indexer.images.decode import",
    "from indexer.errors import": "from indexer.core.errors import",
    "from indexer.stores.base import MetadataFilter": "from indexer.core.records import MetadataFilter",
}


def load_old(ref: str, tmp: Path):
    """The old ``retriever/server.py`` of git ``ref`` as a module, its imports pointed at the modules'
    present homes."""
    src = subprocess.run(["git", "show", f"{ref}:retriever/server.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    for old, new in MOVED.items():
        src = src.replace(old, new)
    path = tmp / "old_server.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_server", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(p: Params) -> Iterator[Result]:
    """p50 and p95 of each server's upload latency over all rounds."""
    from indexer.stores.faiss.store import FaissStore
    from retriever.http.service import QueryService
    from retriever.http.transport import make_server
    from retriever.search import Retriever

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-http-"))
    build_real_index(tmp / "idx")
    old = load_old(p.old_ref, tmp)
    retriever = Retriever.open(FaissStore(tmp / "idx", read_only=True), device="cpu")
    blobs = [path.read_bytes() for path in sorted(REAL_DIR.glob("*.tif"))]
    servers = {}
    new = types.SimpleNamespace(QueryService=QueryService, make_server=make_server)
    for name, mod in (("stdlib ThreadingHTTPServer (old)", old), ("waitress (new)", new)):
        service = mod.QueryService(retriever)
        srv = mod.make_server(service, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = (srv, service)
    lat: dict[str, list[float]] = {n: [] for n in servers}
    for _ in range(p.rounds):
        for name, (srv, service) in servers.items():
            # One compute thread at a time: two running at once would start two OpenMP pools (see
            # QueryService) and slow both.
            stop = threading.Event()
            compute = threading.Thread(target=service.run_compute, args=(stop,), daemon=True)
            compute.start()
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
            for i in range(p.queries + 3):
                t0 = time.perf_counter()
                conn.request("POST", "/query?k=10", body=blobs[i % len(blobs)])
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
                if i >= 3:  # the first requests of a connection warm it up
                    lat[name].append((time.perf_counter() - t0) * 1000)
            conn.close()
            stop.set()
            compute.join()
    for srv, _ in servers.values():
        srv.shutdown()
    for name, v in lat.items():
        for q in (50, 95):
            yield Result(name, f"p{q}", float(np.percentile(v, q)), "ms", {"n": len(v)})
