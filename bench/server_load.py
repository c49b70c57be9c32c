"""A bounded mixed load on a running ``mae-search serve``, sampling the server's resident memory.

Used by the ``server_rss`` and ``rehearsal`` bench groups (the 10-minute measurement) and by the short RSS test in
``tests/retriever/test_server_rss.py``. Each client keeps one keep-alive connection and cycles through
uploads, id queries, a batch, health checks, bad requests (which must not leak either), and the web
explorer's plate map, record and thumbnail requests (whose caches must stay within their budgets).
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time

from bench.measure import peak_rss


def run_load(
    port: int,
    pid: int,
    seconds: float,
    blobs: list[bytes],
    ids: list[int],
    clients: int = 8,
    warmup: float = 10.0,
    sample_every: float = 1.0,
) -> dict:
    """Run ``clients`` threads against 127.0.0.1:``port`` for ``seconds``; sample RSS of ``pid``.

    Returns
    -------
    dict
        ``requests``, ``errors`` (unexpected statuses), ``samples`` [(t, rss)], and after ``warmup``:
        ``rss_min``, ``rss_max``, ``growth`` = max / first sample after warm-up - 1.
    """
    stop = threading.Event()
    counts = {"requests": 0, "errors": 0}
    unexpected: list[str] = []
    lock = threading.Lock()
    batch = json.dumps({"images": [base64.b64encode(b).decode() for b in blobs[:4]], "k": 5})

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = n
        while not stop.is_set():
            kind = i % 9
            some_id = ids[(i * 7919) % len(ids)]
            if kind in (0, 1):
                req, want = ("POST", f"/query?k=10&site={1 + i % 2}", blobs[i % len(blobs)]), 200
            elif kind == 2:
                req, want = ("POST", "/query/ids", json.dumps({"ids": ids[i % len(ids) :][:3], "k": 10})), 200
            elif kind == 3:
                req, want = ("POST", "/query/batch", batch), 200
            elif kind == 4:
                req, want = ("GET", "/health", None), 200
            elif kind == 5:
                req, want = ("POST", "/query?wel=Z99", b"not a tiff"), 400
            elif kind == 6:
                req, want = ("POST", "/api/plate", json.dumps({"id": some_id, "site": 1 + i % 2})), 200
            elif kind == 7:
                req, want = ("GET", f"/api/record/{some_id}", None), 200
            else:
                req, want = ("GET", f"/thumb/{some_id}?size=160", None), 200
            try:
                conn.request(req[0], req[1], body=req[2])
                resp = conn.getresponse()
                detail = resp.read()[:200]
                ok = resp.status == want
                why = f"{req[0]} {req[1]}: {resp.status} {detail!r}"
            except (OSError, http.client.HTTPException) as e:
                ok = False
                why = f"{req[0]} {req[1]}: {type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                counts["requests"] += 1
                counts["errors"] += 0 if ok else 1
                if not ok and len(unexpected) < 5:
                    unexpected.append(why)
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    while (now := time.monotonic() - t0) < seconds:
        samples.append((now, int(peak_rss(pid).now_mb * 2**20)))
        time.sleep(sample_every)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    after = [r for t, r in samples if t >= warmup]
    out = {**counts, "unexpected": unexpected, "seconds": seconds, "samples": samples}
    if after:
        out.update(rss_min=min(after), rss_max=max(after), growth=max(after) / after[0] - 1.0)
    return out
