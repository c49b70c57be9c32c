"""Benchmark: the web explorer on a full-plate index of 52,224 vectors (384 wells x 2 sites x 2 channels
x 34 z, BBBC006's size). Vectors are synthetic (seeded, unit length, clustered per well so the plate map
has structure); every record points at one of the shipped real TIFFs so thumbnails decode real data;
the manifest is that of an index of the real images built with the shipped tiny model, so the server
loads a real model.

    python bench/bench_explorer.py --repeats 200

Prints, measured in one run against a real `mae-search serve` on 127.0.0.1:
- thumbnail p50, cached (LRU hit) and uncached (first request of an id), and decode + window + resize of
  that image in-process (the uncached target is <= 1.5 x that);
- plate map: the first request (which reads the plate's vectors) and p50 (POST /api/plate, from the
  FAISS mirror);
- a filtered query (POST /query/ids with a well and a channel): the first (which finds the ids the filter
  allows among every record) and p50;
- page load to first results in headless Chromium (navigation start -> k cards with decoded thumbnails).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REAL_DIR, REPO  # noqa: E402

ROWS = "ABCDEFGHIJKLMNOP"


def make_index(out: Path, n_z: int = 34, seed: int = 0) -> int:
    """Build the real tiny index, then refill it with 52,224 synthetic records and vectors."""
    from click.testing import CliRunner

    from indexer.cli import main as index_main
    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.store import FaissStore

    real = out / "real"
    model = REPO / "examples" / "models" / "mae-tiny-bbbc006"
    r = CliRunner().invoke(
        index_main,
        [
            "build",
            str(REAL_DIR),
            "--index",
            str(real),
            "--model",
            str(model),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    if r.exit_code != 0:
        raise SystemExit(r.output)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--loads", type=int, default=5, help="Page loads in the browser.")
    args = ap.parse_args()
    from indexer.images.decode import decode_tiff
    from indexer.stores.faiss.store import FaissStore
    from retriever import render
    from tests.support.serve import start_serve

    tmp = Path(tempfile.mkdtemp(prefix="mae-bench-web-"))
    count = make_index(tmp)
    manifest = FaissStore(tmp / "idx", read_only=True).read_manifest()
    from indexer.core.config import PreprocessConfig

    intensity = PreprocessConfig.from_dict(manifest["preprocess"]).intensity
    proc, port = start_serve(tmp / "idx")
    rows = []
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

    rows = [
        ("index", f"{count} vectors, dim {manifest['dim']}"),
        ("thumbnail, cached (LRU hit) p50", f"{p50(cached):.2f} ms (target <= 5 ms)"),
        ("thumbnail, uncached p50", f"{p50(uncached):.2f} ms"),
        ("decode + window + resize in-process p50", f"{p50(decode_resize):.2f} ms "
         f"(+ PNG: {p50(full):.2f} ms); uncached / decode+resize = {p50(uncached) / p50(decode_resize):.2f} "
         "(target <= 1.5)"),
        ("plate map, first (reads the plate's vectors)", f"{plate[0]:.1f} ms"),
        ("plate map p50 (POST /api/plate, FAISS mirror)", f"{p50(plate):.2f} ms (target <= 50 ms)"),
        ("filtered query, first (finds the allowed ids)", f"{filtered[0]:.1f} ms"),
        ("filtered query p50 (POST /query/ids, well + channel)", f"{p50(filtered):.2f} ms"),
        ("page load -> k cards with decoded thumbnails",
         f"median {p50(loads):.0f} ms, max {max(loads):.0f} ms over {len(loads)} loads (target <= 1 s)"),
    ]  # fmt: skip
    for k, v in rows:
        print(f"{k:<48} {v}")


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


if __name__ == "__main__":
    main()
