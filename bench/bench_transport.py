"""Benchmark: the query server's HTTP transport, waitress (now) against the standard library's
ThreadingHTTPServer (the server of git ref --old-ref), interleaved in one run on the same model and index.

    python bench/bench_transport.py --old-ref 618463c --rounds 6 --queries 40

Each round sends --queries uploads (POST /query, keep-alive, one client) to each server in turn and
prints the p50/p95 per server over all rounds.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REAL_DIR, REPO  # noqa: E402


def load_old(ref: str, tmp: Path):
    """The old ``retriever/server.py`` of git ``ref`` as a module."""
    src = subprocess.run(["git", "show", f"{ref}:retriever/server.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    path = tmp / "old_server.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_server", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-ref", default="618463c")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--queries", type=int, default=40)
    args = ap.parse_args()
    from click.testing import CliRunner

    from indexer.cli import main as index_main
    from indexer.stores.faiss.store import FaissStore
    from retriever.http.service import QueryService
    from retriever.http.transport import make_server
    from retriever.search import Retriever

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-http-"))
    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"
    r = CliRunner().invoke(index_main, ["build", str(REAL_DIR), "--index", str(tmp / "idx"), "--model",
                                        str(model), "--device", "cpu", "--no-progress"])  # fmt: skip
    if r.exit_code != 0:
        raise SystemExit(r.output)
    old = load_old(args.old_ref, tmp)
    retriever = Retriever.open(FaissStore(tmp / "idx", read_only=True), device="cpu")
    blobs = [p.read_bytes() for p in sorted(REAL_DIR.glob("*.tif"))]
    servers = {}
    new = types.SimpleNamespace(QueryService=QueryService, make_server=make_server)
    for name, mod in (("stdlib ThreadingHTTPServer (old)", old), ("waitress (new)", new)):
        service = mod.QueryService(retriever)
        srv = mod.make_server(service, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = (srv, service)
    lat: dict[str, list[float]] = {n: [] for n in servers}
    for _ in range(args.rounds):
        for name, (srv, service) in servers.items():
            # One compute thread at a time: two running at once would start two OpenMP pools (see
            # QueryService) and slow both.
            stop = threading.Event()
            compute = threading.Thread(target=service.run_compute, args=(stop,), daemon=True)
            compute.start()
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
            for i in range(args.queries + 3):
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
    for name, v in lat.items():
        print(
            f"{name:<34} p50 {np.percentile(v, 50):6.2f} ms  p95 {np.percentile(v, 95):6.2f} ms  (n={len(v)})"
        )
    for srv, _ in servers.values():
        srv.shutdown()


if __name__ == "__main__":
    main()
