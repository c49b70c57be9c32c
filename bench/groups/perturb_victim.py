"""A query's latency while 8 connections ask the explorer for live perturbations of a 4 MP image.

``/api/perturb`` reads, perturbs and embeds an image; before its limits (issue 31, item 10: b690aef) it
held the single compute thread for seconds, and another client's median query went from milliseconds to
31 s. The server here is the one ``mae-search serve`` runs (the HTTP transport, the explorer's app, the
compute thread), in this process, on an index of 6 real BBBC006 images and one 2048 x 2048 16-bit image,
built with the tiny model:

    python -m bench run perturb_victim
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import REPO, Result


@dataclass(frozen=True)
class Params:
    """``attackers``: perturb connections; ``queries``: victim queries timed idle and under load;
    ``severity``: the gaussian blur's (5 is the strongest, and the costliest)."""

    attackers: int = 8
    queries: int = 30
    severity: int = 5


QUICK = Params(attackers=4, queries=8)


def _index(work: Path) -> Path:
    """An index of 6 real images and one 4 MP image (random 12-bit counts), built with the tiny model."""
    import tifffile
    from click.testing import CliRunner

    from indexer.cli import main

    data = work / "data"
    data.mkdir()
    for p in sorted((REPO / "examples" / "bbbc006" / "BBBC006_v1_images_z_16").glob("*.tif"))[:6]:
        shutil.copy(p, data / p.name)
    big = np.random.default_rng(0).integers(0, 4096, (2048, 2048), dtype=np.uint16)
    tifffile.imwrite(data / "big.tif", big, photometric="minisblack")
    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"
    args = [
        "build",
        str(data),
        "--index",
        str(work / "idx"),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--no-progress",
    ]
    r = CliRunner().invoke(main, args)
    if r.exit_code != 0:
        raise RuntimeError(f"the index build failed: {r.output}")
    return work / "idx"


def run(p: Params) -> Iterator[Result]:
    """One perturbation alone; the victim's p50/p99 idle and under ``attackers`` perturb connections."""
    from indexer.stores.faiss.store import FaissStore
    from retriever.cli import build_app
    from retriever.http.service import QueryService
    from retriever.http.transport import make_server
    from retriever.search import Retriever

    with tempfile.TemporaryDirectory(prefix="mae-bench-victim-") as tmp:
        index = _index(Path(tmp))
        store = FaissStore(index, read_only=True)
        records = store.get(store.ids())
        big = next(r.id for r in records if r.path.endswith("big.tif"))
        small = next(r.id for r in records if not r.path.endswith("big.tif"))
        service = QueryService(Retriever.open(store, device="cpu", index_dir=index))
        server = make_server(service, "127.0.0.1", 0, app=build_app(service, index, []))
        stop = threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        threading.Thread(target=service.run_compute, args=(stop,), daemon=True).start()
        port = server.server_port
        perturb = {
            "id": str(big),
            "perturbation": "gaussian_blur",
            "severity": p.severity,
            "k": 3,
            "exclude": "none",
        }

        def post(path: str, body: dict) -> int:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            try:
                c.request("POST", path, body=json.dumps(body))
                r = c.getresponse()
                r.read()
                return r.status
            finally:
                c.close()

        def victim(n: int) -> tuple[float, float]:
            seconds = []
            for _ in range(n):
                t0 = time.perf_counter()
                if post("/query/ids", {"ids": [str(small)], "k": 3}) != 200:
                    raise RuntimeError("a victim query failed")
                seconds.append(time.perf_counter() - t0)
                time.sleep(0.05)
            return float(np.percentile(seconds, 50) * 1000), float(np.percentile(seconds, 99) * 1000)

        try:
            t0 = time.perf_counter()
            status = post("/api/perturb", perturb)
            yield Result("one perturbation of the 4 MP image", "seconds", time.perf_counter() - t0, "s",
                         {"status": status})  # fmt: skip
            p50, p99 = victim(p.queries)
            yield Result("victim query, idle", "p50", p50, "ms")
            yield Result("victim query, idle", "p99", p99, "ms")
            load, answers = threading.Event(), {}
            lock = threading.Lock()

            def attacker() -> None:
                while not load.is_set():
                    s = post("/api/perturb", perturb)
                    with lock:
                        answers[s] = answers.get(s, 0) + 1
                    if s == 429:
                        time.sleep(0.05)

            threads = [threading.Thread(target=attacker, daemon=True) for _ in range(p.attackers)]
            for t in threads:
                t.start()
            time.sleep(2)
            p50, p99 = victim(p.queries)
            load.set()
            for t in threads:
                t.join(timeout=300)
            case = f"victim query, {p.attackers} perturb connections"
            at = {f"perturb_{code}": n for code, n in sorted(answers.items())}
            yield Result(case, "p50", p50, "ms", at)
            yield Result(case, "p99", p99, "ms", at)
        finally:
            stop.set()
            server.shutdown()
