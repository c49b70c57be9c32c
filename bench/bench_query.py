"""Benchmark 4: query latency. Cold CLI (a new `mae-search query` process), warm server (p50/p95/p99
over HTTP), and the model forward alone (preprocessed batch of 1), measured in one run.

    python bench/bench_query.py --model tiny --queries 50
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_build import make_model  # noqa: E402
from bench.common import REAL_DIR, print_table  # noqa: E402
from indexer.images.decode import decode_tiff  # noqa: E402
from indexer.model.preprocess import preprocess_image  # noqa: E402
from indexer.stores.faiss.store import FaissStore  # noqa: E402
from retriever.http.service import QueryService  # noqa: E402
from retriever.http.transport import make_server  # noqa: E402
from retriever.search import Retriever  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["test", "tiny", "base"], default="tiny")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--cold-runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-q-"))
    model_dir = make_model(args.model, tmp / "model")
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "mae-index", "build", str(REAL_DIR), "--index", str(tmp / "idx"), "--model",
                    str(model_dir), "--no-progress"], check=True, capture_output=True)  # fmt: skip
    files = sorted(REAL_DIR.glob("*.tif"))

    cold = []
    for i in range(args.cold_runs):
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
            for i in range(args.queries + 3):
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
    side = threading.Thread(target=lambda: other.extend(timed_forward() for _ in range(args.queries + 3)))
    side.start()
    side.join()
    other = other[3:]

    def ms(v, q):
        return f"{np.percentile(np.array(v) * 1000, q):.1f}"

    rows = [
        ("cold CLI (new process)", ms(cold, 50), ms(cold, 95), ms(cold, 99), len(cold)),
        ("warm server (HTTP, upload)", ms(warm, 50), ms(warm, 95), ms(warm, 99), len(warm)),
        ("model forward alone (batch 1)", ms(fwd, 50), ms(fwd, 95), ms(fwd, 99), len(fwd)),
        ("forward from a second thread", ms(other, 50), ms(other, 95), ms(other, 99), len(other)),
    ]
    print_table(f"Query latency in ms, model={args.model}, {torch.get_num_threads()} torch threads, index of 20",
                rows, ("path", "p50", "p95", "p99", "n"))  # fmt: skip
    overhead = np.percentile(warm, 50) * 1000 - np.percentile(fwd, 50) * 1000
    print(f"\nwarm p50 - forward p50 = {overhead:.1f} ms   (target <= 10 ms)")
    print(f"cold CLI / warm server p50 = {np.percentile(cold, 50) / np.percentile(warm, 50):.0f}x")


if __name__ == "__main__":
    main()
