"""Full-plate rehearsal: synth -> build (FAISS + Redis HNSW, killed -9 mid-way and resumed) -> verify ->
mae-eval robustness -> mae-search serve under load. Per step: wall time, images/s, peak RSS, Redis
used_memory, index size on disk; then the checks (every image exactly once, recall).

Every step runs the real CLI in a child process; its peak RSS comes from ``wait4`` (the kernel's
high-water mark of that process, :func:`bench.measure.run_child`). The full plate is the default (384
wells x 2 sites x 2 channels x 34 z = 52,224 images); ``wells`` makes it smaller:

    python -m bench run rehearsal --set work=runs/rehearsal --set wells=A01:A02        # 272 images
    python -m bench run rehearsal --set work=runs/plate                                # 52,224 images
    python -m bench run rehearsal --set work=runs/plate --set serve_only=true --set load_minutes=10
    python -m bench run rehearsal --set work=runs/plate --set reuse_data=true   # all but synth, afresh

Needs a Redis Stack server: ``redis_url``, or one is started here (scripts/redis-stack.sh install).
Writes ``WORK/rehearsal.json`` (every step's figures, the load's RSS samples too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import REPO as ROOT
from bench.harness import Result
from bench.measure import ChildRun, peak_rss, run_child

BIN = Path(sys.executable).parent
MODEL = ROOT / "examples" / "models" / "mae-tiny-bbbc006"


@dataclass(frozen=True)
class Params:
    """``work``: folder for data, index, reports (empty: a temporary one); ``wells`` x ``z`` to
    synthesize; ``kill_at``: kill -9 the build at this fraction (0: never); ``checkpoint_every`` (0:
    512, less for small runs so a kill lands between checkpoints); ``load_minutes`` of
    bench/server_load.py's mixed load after the serve step (0: none); ``serve_only``: reuse WORK's data
    and index, refill Redis from the mirror and serve; ``reuse_data``: keep WORK/data, skip synth."""

    work: str = ""
    wells: str = "A01:P24"
    z: str = "0-33"
    synth_workers: int = os.cpu_count() or 1
    model: str = str(MODEL)
    faiss_index: str = ""
    kill_at: float = 0.5
    checkpoint_every: int = 0
    eval_queries: int = 50
    eval_perturb: str = "gaussian_noise,gaussian_blur"
    eval_severities: str = "0-2"
    serve_queries: int = 200
    load_minutes: float = 0.0
    load_clients: int = 8
    load_warmup: float = 60.0
    serve_only: bool = False
    reuse_data: bool = False
    redis_url: str = ""
    redis_index: str = "plate"


QUICK = Params(wells="A01:A02", z="14-17", eval_queries=8, eval_severities="0-1", serve_queries=30)

#: Units of a step's figures, by a pattern of their names.
UNITS = ((r"images_per_s$", "img/s"), (r"requests_per_s$", "req/s"), (r"_mb$", "MB"), (r"_ms$", "ms"),
         (r"seconds", "s"), (r"_s$", "s"))  # fmt: skip


def step_results(step: dict) -> Iterator[Result]:
    """A step's numeric figures as results (booleans as 1 or 0; lists and text stay in rehearsal.json)."""
    flat = {**{k: v for k, v in step.items() if k != "summary"}, **(step.get("summary") or {})}
    for key, value in flat.items():
        if isinstance(value, bool):
            value = int(value)
        if key == "step" or not isinstance(value, int | float) or not np.isfinite(value):
            continue
        unit = next((u for pattern, u in UNITS if re.search(pattern, key)), "")
        yield Result(step["step"], key, value, unit)


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def redis_used_memory(url: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def shard_rows(index: Path) -> int:
    """Rows written to the FAISS shards so far (a build's progress, read from parquet footers)."""
    import pyarrow.parquet as pq

    rows = 0
    for p in sorted((index / "shards").glob("part-*.parquet")):
        try:
            rows += pq.read_metadata(p).num_rows
        except Exception:  # a shard being renamed into place; counted next time
            continue
    return rows


def run(p: Params) -> Iterator[Result]:
    """Every step's figures (wall seconds, images/s, peak RSS, Redis memory, index size, the checks)."""
    if p.reuse_data and p.redis_url:
        raise ValueError("reuse_data starts a private Redis afresh; it cannot empty the one at redis_url")
    with tempfile.TemporaryDirectory(prefix="mae-bench-rehearsal-") as tmp:
        steps = rehearse(p, Path(p.work or tmp))
    for step in steps:
        yield from step_results(step)


def rehearse(args: Params, work: Path) -> list[dict]:
    """Run the rehearsal (or with ``serve_only`` the serve step) in ``work``; its steps' figures."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, index = work / "data", work / "index"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    if args.reuse_data:
        if not any(data.rglob("*.tif")):
            raise ValueError(f"reuse_data: no images in {data}")
        for old in (index, work / "redis", work / "report"):
            shutil.rmtree(old, ignore_errors=True)
    server = None
    url = args.redis_url
    if not url:
        from tests.support.redis_server import RedisServer

        server = RedisServer(port=0, data_dir=work / "redis")
        server.start()
        url = server.url
    steps: list[dict] = []

    def record(name: str, result: ChildRun, images: int | None) -> dict:
        row = {
            "step": name,
            "seconds": round(result.seconds, 2),
            "images": images,
            "images_per_s": round(images / result.seconds, 2) if images and result.seconds else None,
            "peak_rss_mb": round(result.peak_rss_mb, 1),
            "redis_used_memory_mb": round(redis_used_memory(url) / 2**20, 1),
            "index_mb": round(folder_bytes(index) / 2**20, 1),
            "exit_code": result.exit_code,
            "killed": result.killed,
        }
        steps.append(row)
        if result.exit_code != 0 and not result.killed:  # the rehearsal goes on; its checks show it
            print(f"{name} exited {result.exit_code}: {result.stderr_tail}", file=sys.stderr)
        return row

    if args.serve_only:
        try:
            return serve_again(args, work, index, url, data, env)
        finally:
            if server is not None:
                server.stop()
    try:
        # 1. synth
        if not args.reuse_data:
            synth = [str(BIN / "mae-index"), "synth", str(data), "--wells", args.wells, "--z", args.z]
            if args.synth_workers > 1:
                synth += ["--workers", str(args.synth_workers)]
            res = run_child(synth, env)
        n_images = sum(1 for _ in data.rglob("*.tif"))
        if not args.reuse_data:
            row = record("synth", res, n_images)
            row["data_mb"] = round(folder_bytes(data) / 2**20, 1)

        # 2. build, killed -9 at --kill-at, then resumed
        build = [str(BIN / "mae-index"), "build", str(data), "--index", str(index), "--model", args.model,
                 "--device", "cpu", "--redis-url", url, "--redis-index", args.redis_index,
                 "--redis-algorithm", "HNSW", "--no-progress", "--format", "json"]  # fmt: skip
        if args.faiss_index:
            build += ["--faiss-index", args.faiss_index]
        build += ["--checkpoint-every", str(args.checkpoint_every or min(512, max(16, n_images // 16)))]
        if args.kill_at > 0:
            target = int(n_images * args.kill_at)
            res = run_child(build, env, kill_when=lambda: shard_rows(index) >= target)
            killed_row = record("build (killed -9)", res, shard_rows(index))
            killed_row["rows_when_killed"] = shard_rows(index)
        res = run_child(build, env)
        summary = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
        row = record("build (resumed)" if args.kill_at > 0 else "build", res, summary.get("indexed"))
        row["summary"] = {k: summary.get(k) for k in ("found", "indexed", "skipped_existing", "rejected",
                                                       "index_count", "stage_seconds", "complete")}  # fmt: skip

        # 3. verify (Redis vs the mirror, every image exactly once)
        verify = [str(BIN / "mae-index"), "verify", "--index", str(index), "--redis-url", url,
                  "--redis-index", args.redis_index, "--format", "json"]  # fmt: skip
        res = run_child(verify, env)
        report = json.loads(res.stdout) if res.stdout.strip() else {}
        row = record("verify", res, report.get("count_mirror"))
        exactly_once = (
            report.get("count_primary") == report.get("count_mirror") == n_images
            and not report.get("missing_in_primary_count")
            and not report.get("missing_in_mirror_count")
        )
        row.update(ok=report.get("ok"), exactly_once=exactly_once, redis_recall_at_10=report.get("recall_at_k"),
                   mirror_recall_at_10=report.get("mirror_recall_at_k"))  # fmt: skip

        # 4. mae-eval robustness through Redis
        ev = [str(BIN / "mae-eval"), "robustness", "--index", str(index), "--redis-url", url,
              "--redis-index", args.redis_index, "--queries", str(args.eval_queries), "--perturb",
              args.eval_perturb, "--severities", args.eval_severities, "--device", "cpu",
              "--out", str(work / "report")]  # fmt: skip
        record("eval robustness", run_child(ev, env), args.eval_queries)

        # 5. mae-search serve: 200 queries, p50/p99, server RSS after warm-up and at the end; then the
        #    optional sustained load (reported as its own step, outside the rehearsal's 45-minute budget)
        steps.extend(serve_step(args, work, index, url, data, env))
    finally:
        if server is not None:
            server.stop()
    out = {"images": n_images, "wells": args.wells, "z": args.z, "steps": steps}
    (work / "rehearsal.json").write_text(json.dumps(out, indent=2) + "\n")
    rehearsal_s = sum(s["seconds"] for s in steps if s["step"] != "serve load")
    total = {"step": "total", "seconds": round(sum(s["seconds"] for s in steps), 1),
             "rehearsal_seconds_without_load": round(rehearsal_s, 1), "images": n_images}  # fmt: skip
    return [*steps, total]


def serve_again(args: Params, work: Path, index: Path, url: str, data: Path, env: dict) -> list[dict]:
    """``serve_only``: Redis refilled from the FAISS mirror, then :func:`serve_step`."""
    from indexer.core.config import RedisConfig
    from indexer.stores.faiss.store import FaissStore
    from indexer.stores.redis.store import RedisStore

    t0 = time.perf_counter()
    mirror = FaissStore(index, read_only=True)
    redis = RedisStore(RedisConfig(url=url, index_name=args.redis_index, algorithm="HNSW"), dim=mirror.dim)
    redis.write_manifest(mirror.read_manifest())
    ids = mirror.ids()
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        redis.bulk_load(mirror.get_vectors(chunk), mirror.get(chunk))
    redis.flush()
    while redis.count() < len(ids):  # the HNSW graph is built as the hashes arrive
        time.sleep(1)
    redis.close()
    rows = [{"step": "refill Redis from the mirror", "seconds": round(time.perf_counter() - t0, 2),
             "images": len(ids)}]  # fmt: skip
    rows += serve_step(args, work, index, url, data, env)
    (work / "serve.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def serve_step(args: Params, work: Path, index: Path, url: str, data: Path, env: dict) -> list[dict]:
    """Start ``mae-search serve``, send ``serve_queries`` TIFFs one at a time, then (with
    ``load_minutes``) ``load_clients`` clients of mixed requests; stop it. One row per phase."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(BIN / "mae-search"), "serve", "--index", str(index), "--redis-url", url, "--redis-index",
           args.redis_index, "--port", str(port), "--device", "cpu"]  # fmt: skip
    t0 = time.perf_counter()
    # stderr to a file, not a pipe: under load the server logs (waitress's queue-depth warnings), and a
    # pipe nobody reads fills at 64 KB and blocks every thread that logs: the server stops answering.
    log_path = work / "serve.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (closed below, after the server)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "mae-search serve did not start: " + log_path.read_text()[-1000:]
                    ) from e
                time.sleep(0.5)
        start_s = time.perf_counter() - t0
        files = sorted(data.rglob("*.tif"))
        picks = [files[i] for i in np.linspace(0, len(files) - 1, args.serve_queries).astype(int)]
        warm_rss = None
        lat = []
        for i, path in enumerate(picks):
            body = path.read_bytes()
            t = time.perf_counter()
            req = urllib.request.Request(base + "/query?k=10", data=body, method="POST")
            json.loads(urllib.request.urlopen(req, timeout=60).read())
            lat.append(time.perf_counter() - t)
            if i == 9:
                warm_rss = peak_rss(proc.pid).now_mb
        end_rss = peak_rss(proc.pid).now_mb
        queries_s = time.perf_counter() - t0
        load = None
        if args.load_minutes > 0:
            load = sustained_load(args, proc.pid, port, index, picks)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
    ms = np.array(lat) * 1e3
    rows = [{
        "step": "serve",
        "seconds": round(queries_s, 2),
        "start_seconds": round(start_s, 2),
        "queries": len(lat),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "rss_after_10_queries_mb": round(warm_rss or float("nan"), 1),
        "rss_at_end_mb": round(end_rss, 1),
        "redis_used_memory_mb": round(redis_used_memory(url) / 2**20, 1),
        "index_mb": round(folder_bytes(index) / 2**20, 1),
    }]  # fmt: skip
    if load is not None:
        load["redis_used_memory_mb"] = round(redis_used_memory(url) / 2**20, 1)
        load["server_log_lines"] = sum(1 for _ in log_path.open())
        rows.append(load)
    return rows


def sustained_load(args: Params, pid: int, port: int, index: Path, picks: list[Path]) -> dict:
    """``load_minutes`` of bench/server_load.py's mixed load (uploads, id queries, batches, health,
    bad requests, plate maps, records, thumbnails) from ``load_clients`` keep-alive clients; the server's RSS every 5 s."""
    from bench.server_load import run_load
    from indexer.stores.faiss.store import FaissStore

    stored = FaissStore(index, read_only=True).ids()
    ids = [int(i) for i in stored[np.linspace(0, len(stored) - 1, min(1000, len(stored))).astype(int)]]
    blobs = [p.read_bytes() for p in picks[:: max(1, len(picks) // 16)]]
    res = run_load(port, pid, args.load_minutes * 60, blobs, ids, args.load_clients, args.load_warmup, 5.0)
    mb = [round(r / 2**20, 1) for _, r in res["samples"]]
    return {
        "step": "serve load",
        "seconds": round(res["seconds"], 1),
        "clients": args.load_clients,
        "requests": res["requests"],
        "requests_per_s": round(res["requests"] / res["seconds"], 1),
        "unexpected_statuses": res["errors"],
        "unexpected": res["unexpected"],
        "rss_after_warmup_mb": round(res["rss_min"] / 2**20, 1) if "rss_min" in res else None,
        "rss_first_after_warmup_mb": mb[int(args.load_warmup // 5)]
        if len(mb) > args.load_warmup // 5
        else None,
        "rss_max_after_warmup_mb": round(res["rss_max"] / 2**20, 1) if "rss_max" in res else None,
        "rss_growth_after_warmup": round(res["growth"], 4) if "growth" in res else None,
        "rss_samples_mb": mb,
    }
