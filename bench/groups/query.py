"""Benchmark 4: query latency. Cold CLI (a new `mae-search query` process), warm server (p50/p95/p99
over HTTP), and the model forward alone (preprocessed batch of 1), measured in one run.

    python -m bench run query --set model=tiny --set queries=50
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import REAL_DIR
from bench.groups.build import make_model
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``model``: test, tiny or base (random weights); ``queries`` timed over HTTP; ``cold_runs``."""

    model: str = "tiny"
    queries: int = 50
    cold_runs: int = 3


QUICK = Params(model="test", queries=15, cold_runs=1)


def run(p: Params) -> Iterator[Result]:
    """p50/p95/p99 of each path; warm p50 - forward p50; cold / warm."""
    import torch

    from indexer.images.decode import decode_tiff
    from indexer.model.preprocess import preprocess_image
    from indexer.stores.faiss.store import FaissStore
    from retriever.http.service import QueryService
    from retriever.http.transport import make_server
    from retriever.search import Retriever

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-q-"))
    model_dir = make_model(p.model, tmp / "model")
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "mae-index", "build", str(REAL_DIR), "--index", str(tmp / "idx"), "--model",
                    str(model_dir), "--no-progress"], check=True, capture_output=True)  # fmt: skip
    files = sorted(REAL_DIR.glob("*.tif"))

    cold = []
    for i in range(p.cold_runs):
        t0 = time.perf_counter()
        subprocess.run([bin_dir / "mae-search", "query", str(files[i]), "--index", str(tmp / "idx"), "-k", "10",
                        "--format", "json"], check=True, capture_output=True)  # fmt: skip
        cold.append(time.perf_counter() - t0)

    retriever = Retriever.open(FaissStore(tmp / "idx", read_only=True), device="cpu")
    x = preprocess_image(decode_tiff(files[0].read_bytes()), retriever.preprocess)[None]

    def timed_forward() -> float:
        t0 = time.perf_counter()
        retriever.encoder.embed(x)
        return time.perf_counter() - t0

    # As `mae-search serve` runs: HTTP on a side thread, model work on this thread (see QueryService).
    # A client thread alternates one HTTP query with one bare forward pass timed on the compute thread,
    # so both see the same machine state (this VM's speed drifts by 20-30 % over a minute).
    service = QueryService(retriever)
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bodies = [f.read_bytes() for f in files]
    warm: list[float] = []
    fwd: list[float] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
        try:
            for i in range(p.queries + 3):
                t0 = time.perf_counter()
                conn.request("POST", "/query?k=10", body=bodies[i % len(bodies)])
                resp = conn.getresponse()
                resp.read()
                latency = time.perf_counter() - t0
                assert resp.status == 200
                forward = service.compute(timed_forward)
                if i >= 3:  # the first rounds warm up allocator and caches
                    warm.append(latency)
                    fwd.append(forward)
        finally:
            stop.set()

    threading.Thread(target=client).start()
    service.run_compute(stop)
    server.shutdown()

    # Why the server keeps model work on one thread: the same forward pass called from a second thread
    # (a second OpenMP pool beside this thread's).
    other: list[float] = []
    side = threading.Thread(target=lambda: other.extend(timed_forward() for _ in range(p.queries + 3)))
    side.start()
    side.join()
    other = other[3:]

    at = {"torch_threads": torch.get_num_threads(), "index_size": len(files)}
    paths = {"cold CLI (new process)": cold, "warm server (HTTP, upload)": warm,
             "model forward alone (batch 1)": fwd, "forward from a second thread": other}  # fmt: skip
    for case, seconds in paths.items():
        for q in (50, 95, 99):
            yield Result(
                case, f"p{q}", float(np.percentile(seconds, q)) * 1000, "ms", {**at, "n": len(seconds)}
            )
    overhead = (np.percentile(warm, 50) - np.percentile(fwd, 50)) * 1000
    yield Result("warm p50 - forward p50 (target <= 10 ms)", "overhead", float(overhead), "ms", at)
    yield Result("cold CLI / warm server p50", "ratio", float(np.percentile(cold, 50) / np.percentile(warm, 50)),
                 "x", at)  # fmt: skip
