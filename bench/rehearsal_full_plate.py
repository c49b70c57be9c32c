"""Full-plate rehearsal: synth -> build (FAISS + Redis HNSW, killed -9 mid-way and resumed) -> verify ->
mae-eval robustness -> mae-search serve under load. Per step: wall time, images/s, peak RSS, Redis
used_memory, index size on disk; then the checks (every image exactly once, recall).

Every step runs the real CLI in a child process; its peak RSS comes from ``wait4`` (the kernel's
high-water mark of that process). The full plate is the default (384 wells x 2 sites x 2 channels x 34
z = 52,224 images); ``--wells`` makes it smaller:

    python bench/rehearsal_full_plate.py --work runs/rehearsal --wells A01:A02        # 272 images
    python bench/rehearsal_full_plate.py --work runs/plate                           # 52,224 images
    python bench/rehearsal_full_plate.py --work runs/plate --serve-only --load-minutes 10   # serve again
    python bench/rehearsal_full_plate.py --work runs/plate --reuse-data      # all but synth, afresh

Needs a Redis Stack server: ``--redis-url``, or one is started here (scripts/redis-stack.sh install).
Writes ``WORK/rehearsal.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import rss_mb  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = ROOT / "examples" / "models" / "mae-tiny-bbbc006"


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def redis_used_memory(url: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def peak_rss_mb_of(cmd: list[str], env=None, kill_when=None) -> tuple[dict, float]:
    """Like :func:`run_step`, with the child's own peak RSS from ``wait4``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_when is not None and not killed and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.25)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = {
            "seconds": round(time.perf_counter() - t0, 2),
            "exit_code": proc.returncode,
            "killed": killed,
            "stdout": out.read(),
            "stderr_tail": err.read()[-2000:],
        }
    return result, usage.ru_maxrss / 1024.0


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="Folder for data, index, reports.")
    ap.add_argument("--wells", default="A01:P24", help="Wells to synthesize (A01:P24 = the full plate).")
    ap.add_argument("--z", default="0-33")
    ap.add_argument("--synth-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--faiss-index", default=None, help="--faiss-index of the build (default Flat).")
    ap.add_argument(
        "--kill-at", type=float, default=0.5, help="Kill -9 the build at this fraction (0: never)."
    )
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="The build's --checkpoint-every [default 512, less for small runs so a kill lands "
                         "between checkpoints].")  # fmt: skip
    ap.add_argument("--eval-queries", type=int, default=50)
    ap.add_argument("--eval-perturb", default="gaussian_noise,gaussian_blur")
    ap.add_argument("--eval-severities", default="0-2")
    ap.add_argument("--serve-queries", type=int, default=200)
    ap.add_argument("--load-minutes", type=float, default=0.0,
                    help="Then this many minutes of bench/server_load.py's mixed load on the same server "
                         "(0: none); the server's RSS after warm-up must stay within 10 %%.")  # fmt: skip
    ap.add_argument("--load-clients", type=int, default=8)
    ap.add_argument(
        "--load-warmup", type=float, default=60.0, help="Seconds of load before the RSS baseline."
    )
    ap.add_argument("--serve-only", action="store_true",
                    help="Reuse WORK's data and index from an earlier run: fill Redis from the FAISS mirror "
                         "(bulk load), then run only the serve step (and --load-minutes); writes "
                         "WORK/serve.json.")  # fmt: skip
    ap.add_argument("--reuse-data", action="store_true",
                    help="Keep WORK/data from an earlier run and skip synth; the index, the private Redis "
                         "server's data and the report start afresh.")  # fmt: skip
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--redis-index", default="plate")
    args = ap.parse_args()
    if args.reuse_data and args.redis_url:
        ap.error("--reuse-data starts a private Redis afresh; it cannot empty the one at --redis-url")

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, index = work / "data", work / "index"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    if args.reuse_data:
        if not any(data.rglob("*.tif")):
            ap.error(f"--reuse-data: no images in {data}")
        for old in (index, work / "redis", work / "report"):
            shutil.rmtree(old, ignore_errors=True)
    server = None
    url = args.redis_url
    if url is None:
        from tests.support.redis_server import RedisServer

        server = RedisServer(port=0, data_dir=work / "redis")
        server.start()
        url = server.url
    steps: list[dict] = []

    def record(name: str, result: dict, peak_mb: float, images: int | None) -> dict:
        row = {
            "step": name,
            "seconds": result["seconds"],
            "images": images,
            "images_per_s": round(images / result["seconds"], 2) if images and result["seconds"] else None,
            "peak_rss_mb": round(peak_mb, 1),
            "redis_used_memory_mb": round(redis_used_memory(url) / 2**20, 1),
            "index_mb": round(folder_bytes(index) / 2**20, 1),
            "exit_code": result["exit_code"],
            "killed": result["killed"],
        }
        steps.append(row)
        print(json.dumps(row), flush=True)
        if result["exit_code"] not in (0, None) and not result["killed"]:
            print(result["stderr_tail"], file=sys.stderr)
        return row

    if args.serve_only:
        try:
            serve_again(args, index, url, data, env)
        finally:
            if server is not None:
                server.stop()
        return
    try:
        # 1. synth
        if not args.reuse_data:
            synth = [str(BIN / "mae-index"), "synth", str(data), "--wells", args.wells, "--z", args.z]
            if args.synth_workers > 1:
                synth += ["--workers", str(args.synth_workers)]
            res, rss = peak_rss_mb_of(synth, env)
        n_images = sum(1 for _ in data.rglob("*.tif"))
        if not args.reuse_data:
            row = record("synth", res, rss, n_images)
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
            res, rss = peak_rss_mb_of(build, env, kill_when=lambda: shard_rows(index) >= target)
            killed_row = record("build (killed -9)", res, rss, shard_rows(index))
            killed_row["rows_when_killed"] = shard_rows(index)
        res, rss = peak_rss_mb_of(build, env)
        summary = json.loads(res["stdout"].strip().splitlines()[-1]) if res["stdout"].strip() else {}
        row = record("build (resumed)" if args.kill_at > 0 else "build", res, rss, summary.get("indexed"))
        row["summary"] = {k: summary.get(k) for k in ("found", "indexed", "skipped_existing", "rejected",
                                                       "index_count", "stage_seconds", "complete")}  # fmt: skip

        # 3. verify (Redis vs the mirror, every image exactly once)
        verify = [str(BIN / "mae-index"), "verify", "--index", str(index), "--redis-url", url,
                  "--redis-index", args.redis_index, "--format", "json"]  # fmt: skip
        res, rss = peak_rss_mb_of(verify, env)
        report = json.loads(res["stdout"]) if res["stdout"].strip() else {}
        row = record("verify", res, rss, report.get("count_mirror"))
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
        res, rss = peak_rss_mb_of(ev, env)
        record("eval robustness", res, rss, args.eval_queries)

        # 5. mae-search serve: 200 queries, p50/p99, server RSS after warm-up and at the end; then the
        #    optional sustained load (reported as its own step, outside the rehearsal's 45-minute budget)
        steps.extend(serve_step(args, index, url, data, env))
        for row in steps[-2:] if args.load_minutes > 0 else steps[-1:]:
            print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.stop()
    out = {"images": n_images, "wells": args.wells, "z": args.z, "steps": steps}
    (work / "rehearsal.json").write_text(json.dumps(out, indent=2) + "\n")
    rehearsal_s = sum(s["seconds"] for s in steps if s["step"] != "serve load")
    print(json.dumps({"total_seconds": round(sum(s["seconds"] for s in steps), 1),
                      "rehearsal_seconds_without_load": round(rehearsal_s, 1)}))  # fmt: skip


def serve_again(args, index: Path, url: str, data: Path, env: dict) -> None:
    """``--serve-only``: Redis refilled from the FAISS mirror, then :func:`serve_step`."""
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
    rows += serve_step(args, index, url, data, env)
    for row in rows:
        print(json.dumps(row), flush=True)
    (args.work.resolve() / "serve.json").write_text(json.dumps(rows, indent=2) + "\n")


def serve_step(args, index: Path, url: str, data: Path, env: dict) -> list[dict]:
    """Start ``mae-search serve``, send ``--serve-queries`` TIFFs one at a time, then (with
    ``--load-minutes``) ``--load-clients`` clients of mixed requests; stop it. One row per phase."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(BIN / "mae-search"), "serve", "--index", str(index), "--redis-url", url, "--redis-index",
           args.redis_index, "--port", str(port), "--device", "cpu"]  # fmt: skip
    t0 = time.perf_counter()
    # stderr to a file, not a pipe: under load the server logs (waitress's queue-depth warnings), and a
    # pipe nobody reads fills at 64 KB and blocks every thread that logs: the server stops answering.
    log_path = args.work.resolve() / "serve.log"
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
                warm_rss = rss_mb(proc.pid)
        end_rss = rss_mb(proc.pid)
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


def sustained_load(args, pid: int, port: int, index: Path, picks: list[Path]) -> dict:
    """``--load-minutes`` of bench/server_load.py's mixed load (uploads, id queries, batches, health,
    bad requests, plate maps, records, thumbnails) from ``--load-clients`` keep-alive clients; the server's RSS every 5 s."""
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


if __name__ == "__main__":
    main()
