"""The web explorer on a full-plate index of 52,224 vectors (384 wells x 2 sites x 2 channels x 34 z).

The full plate is BBBC006's size (``n_z`` 34; fewer z make a smaller plate). Vectors are synthetic
(seeded, unit length, clustered per well so the plate map has structure); every record points at one of the shipped real TIFFs so thumbnails decode real data;
the manifest is that of an index of the real images built with the shipped tiny model, so the server
loads a real model.

    python -m bench run explorer --set repeats=200

Measured in one run against a real `mae-search serve` on 127.0.0.1:
- thumbnail p50, cached (LRU hit) and uncached (first request of an id), and decode + window + resize of
  that image in-process (the uncached target is <= 1.5 x that);
- plate map: the first request (which reads the plate's vectors) and p50 (POST /api/plate, from the
  FAISS mirror);
- a filtered query (POST /query/ids with a well and a channel): the first (which finds the ids the filter
  allows among every record) and p50;
- page load to first results in headless Chromium (navigation start -> k cards with decoded thumbnails).
"""

from __future__ import annotations

import http.client
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import REAL_DIR, build_real_index
from bench.harness import Result

ROWS = "ABCDEFGHIJKLMNOP"


@dataclass(frozen=True)
class Params:
    """``repeats`` requests of each kind; ``loads``: page loads in the browser; ``n_z`` z per site (at
    least 5: the filtered query asks for 10 hits of one well and channel)."""

    repeats: int = 200
    loads: int = 5
    n_z: int = 34


QUICK = Params(repeats=30, loads=2, n_z=6)  # 12 records per well and channel: a filtered k=10 fills


def make_index(out: Path, n_z: int = 34, seed: int = 0) -> int:
    """Build the real tiny index, then refill it with 384 x 2 x 2 x ``n_z`` synthetic records and vectors."""
    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.store import FaissStore

    real = build_real_index(out / "real")
    src = FaissStore(real, read_only=True)
    manifest = src.read_manifest()
    dim = int(manifest["dim"])
    files = sorted(str(p) for p in REAL_DIR.glob("*.tif"))
    rng = np.random.default_rng(seed)
    records, vectors = [], []
    centres = rng.normal(size=(384, dim)).astype(np.float32)
    n = 0
    for w in range(384):
        well = f"{ROWS[w // 24]}{w % 24 + 1:02d}"
        for site in (1, 2):
            for ch in ("w1", "w2"):
                for z in range(n_z):
                    n += 1
                    records.append(
                        ImageRecord(id=n, path=files[n % len(files)], plate="bench-plate", well=well, row=well[0],
                                    column=int(well[1:]), site=site, channel=ch, z=z)
                    )  # fmt: skip
                    vectors.append(centres[w] + rng.normal(scale=0.8, size=dim).astype(np.float32))
    v = np.stack(vectors)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store = FaissStore(out / "idx", dim=dim)
    for start in range(0, len(records), 8192):
        store.add(v[start : start + 8192], records[start : start + 8192])
    store.write_manifest({**manifest, "count": len(records)})
    store.close()
    return len(records)


def timed(
    conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None
) -> tuple[float, bytes, int]:
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return (time.perf_counter() - t0) * 1000.0, data, r.status


def run(args: Params) -> Iterator[Result]:
    """p50s of thumbnails (cached, uncached, in-process), plate map and filtered query; page loads."""
    from indexer.images.decode import decode_tiff
    from indexer.stores.faiss.store import FaissStore
    from retriever import render
    from tests.support.serve import start_serve

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-web-"))
    count = make_index(tmp, args.n_z)
    manifest = FaissStore(tmp / "idx", read_only=True).read_manifest()
    from indexer.core.config import PreprocessConfig

    intensity = PreprocessConfig.from_dict(manifest["preprocess"]).intensity
    proc, port = start_serve(tmp / "idx")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        # Uncached thumbnails (each id once) interleaved with the same work in-process (decode + window +
        # resize, then + PNG) of the same file, so both see the same machine load.
        files = sorted(REAL_DIR.glob("*.tif"))
        uncached, decode_resize, full = [], [], []
        for i in range(1000, 1000 + args.repeats):
            uncached.append(timed(conn, "GET", f"/thumb/{i}?size=160")[0])
            blob = files[i % len(files)].read_bytes()
            t0 = time.perf_counter()
            im = decode_tiff(blob)
            lo, hi = render.window(im, intensity)
            small = render.downscale(im, 160)
            t1 = time.perf_counter()
            render.png_gray8(render.to_uint8(small, lo, hi))
            t2 = time.perf_counter()
            decode_resize.append((t1 - t0) * 1000)
            full.append((t2 - t0) * 1000)
        cached = [timed(conn, "GET", f"/thumb/{1000 + i % 20}?size=160")[0] for i in range(args.repeats)]
        plate = []
        for i in range(args.repeats):
            body = json.dumps({"id": 1 + (i * 7919) % count, "channel": "w2", "site": 1})
            ms, data, status = timed(conn, "POST", "/api/plate", body, {"Content-Type": "application/json"})
            assert status == 200, data[:200]
            plate.append(ms)
        wells = json.loads(data)["wells"]
        assert len(wells) == 384 and all(v is not None for v in wells.values())
        filtered = []
        for i in range(args.repeats):
            well = f"{ROWS[i % 16]}{i % 24 + 1:02d}"
            body = json.dumps(
                {"ids": [1 + (i * 7919) % count], "k": 10, "where": {"well": [well], "channel": ["w2"]}}
            )
            ms, data, status = timed(conn, "POST", "/query/ids", body, {"Content-Type": "application/json"})
            assert status == 200, data[:200]
            filtered.append(ms)
        (hits,) = json.loads(data)["results"]
        assert len(hits) == 10 and all(h["well"] == well and h["channel"] == "w2" for h in hits)
        conn.close()
        loads = page_loads(port, args.loads)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def p50(v):
        return float(np.percentile(v, 50))

    at = {"vectors": count, "dim": manifest["dim"], "n": args.repeats}
    yield Result("thumbnail, cached (LRU hit) (target <= 5 ms)", "p50", p50(cached), "ms", at)
    yield Result("thumbnail, uncached", "p50", p50(uncached), "ms", at)
    yield Result("decode + window + resize in-process", "p50", p50(decode_resize), "ms", at)
    yield Result("decode + window + resize + PNG in-process", "p50", p50(full), "ms", at)
    yield Result(
        "uncached / decode+resize (target <= 1.5)", "ratio", p50(uncached) / p50(decode_resize), "x", at
    )
    yield Result("plate map, first (reads the plate's vectors)", "first", plate[0], "ms", at)
    yield Result("plate map (POST /api/plate, FAISS mirror) (target <= 50 ms)", "p50", p50(plate), "ms", at)
    yield Result("filtered query, first (finds the allowed ids)", "first", filtered[0], "ms", at)
    yield Result("filtered query (POST /query/ids, well + channel)", "p50", p50(filtered), "ms", at)
    loaded = {**at, "n": len(loads)}
    yield Result(
        "page load -> k cards with decoded thumbnails (target <= 1 s)", "median", p50(loads), "ms", loaded
    )
    yield Result("page load -> k cards with decoded thumbnails", "max", max(loads), "ms", loaded)


def page_loads(port: int, n: int) -> list[float]:
    """Milliseconds from navigation start to k result cards whose thumbnails decoded, in Chromium."""
    from playwright.sync_api import sync_playwright

    from tests.retriever.test_web import ARGS, CHROMIUM

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for i in range(n):
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            qid = 1 + i * 997
            page.goto(f"http://127.0.0.1:{port}/?id={qid}&k=10")
            while not page.evaluate(
                "document.querySelectorAll('.card img').length === 10 && "
                "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"
            ):
                time.sleep(0.01)
            out.append(page.evaluate("performance.now()"))
            page.close()
        browser.close()
    return out
