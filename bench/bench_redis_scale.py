"""Redis at scale: bulk-load batch size, FLOAT32 vs FLOAT16 (memory, ingest, recall), index-after-load.

Uses a private Redis Stack server on a free port (or --redis-url). The vectors are the clustered
768-d vectors of ``bench_faiss_kinds.py`` (a decaying spectrum around 1,000 centres), queries are
held-out points, and recall@10 is against exact inner-product search.

1. Batch sweep: :meth:`RedisStore.bulk_load` (pipelined HSET, no MULTI) into a FLAT index at several
   pipeline batch sizes, against :meth:`RedisStore.add` (MULTI/EXEC chunks of DEL + HSET).
2. HNSW (M 16, EF_CONSTRUCTION 200) per vector type: ingest rate with the server building the graph as
   hashes arrive, ``used_memory`` and the index's own vector memory per vector, recall@10 and p50/p99
   query latency per EF_RUNTIME.
3. Index after load: the hashes first, then FT.CREATE, the server indexing the existing hashes.

    python bench/bench_redis_scale.py --vectors 50000 --batches 100,500,1000,5000 --ef 200,800
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_faiss_kinds import clustered_vectors, exact_top  # noqa: E402
from bench.common import redis_url  # noqa: E402
from indexer.core.config import RedisConfig  # noqa: E402
from indexer.core.records import ImageRecord
from indexer.stores.faiss.kinds import recall_at  # noqa: E402


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def wait_indexed(store, n: int, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = store._index_info() or {}
        if int(info.get("indexing", 0) or 0) == 0 and store.count() >= n:
            return
        time.sleep(0.2)


def index_vector_mb(store) -> float:
    info = store._index_info() or {}
    return float(info.get("vector_index_sz_mb", 0) or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sweep-vectors", type=int, default=10_000, help="Vectors per batch-size run.")
    ap.add_argument("--batches", default="100,500,1000,5000")
    ap.add_argument("--ef", default="200,800")
    ap.add_argument("--dtypes", default="FLOAT32,FLOAT16")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from indexer.stores.redis.store import RedisStore

    with redis_url(args.redis_url, prefix="mae-bench-rs-") as url:
        x = clustered_vectors(args.vectors + args.queries, args.dim, 1000, args.seed)
        xb, xq = x[: args.vectors], x[args.vectors :]
        gt = exact_top(xb, xq, 10)
        recs = [
            ImageRecord(id=i, path=f"v{i}.tif", well="A01", site=1 + i % 2, z=i % 34) for i in range(len(xb))
        ]

        def fresh(name: str, **kw) -> RedisStore:
            cfg = RedisConfig(url=url, index_name=name, **kw)
            RedisStore(cfg, dim=args.dim).drop()
            return RedisStore(cfg, dim=args.dim)

        # 1. batch sweep (FLAT index: the write path, not the graph, is measured)
        n = min(args.sweep_vectors, len(xb))
        for batch in [int(b) for b in args.batches.split(",")]:
            store = fresh("sweep")
            t0 = time.perf_counter()
            store.bulk_load(xb[:n], recs[:n], batch=batch)
            store.flush()  # a last short batch is held back until then
            wait_indexed(store, n)
            t = time.perf_counter() - t0
            print(json.dumps({"step": "bulk_load FLAT", "batch": batch, "vectors": n, "seconds": round(t, 2),
                              "vectors_per_s": round(n / t)}), flush=True)  # fmt: skip
            store.drop()
        store = fresh("sweep")
        t0 = time.perf_counter()
        store.add(xb[:n], recs[:n])
        t = time.perf_counter() - t0
        print(json.dumps({"step": "add FLAT (MULTI, DEL+HSET, 500)", "vectors": n, "seconds": round(t, 2),
                          "vectors_per_s": round(n / t)}), flush=True)  # fmt: skip
        store.drop()

        # 2. HNSW per vector type
        for dtype in args.dtypes.split(","):
            before = used_memory(fresh("hnsw", algorithm="HNSW", dtype=dtype).client)
            store = RedisStore(
                RedisConfig(url=url, index_name="hnsw", algorithm="HNSW", dtype=dtype), dim=args.dim
            )
            t0 = time.perf_counter()
            store.bulk_load(xb, recs)
            store.flush()
            wait_indexed(store, len(xb))
            t = time.perf_counter() - t0
            mem = used_memory(store.client) - before
            row = {"step": f"HNSW {dtype} bulk_load", "vectors": len(xb), "seconds": round(t, 1),
                   "vectors_per_s": round(len(xb) / t), "used_memory_bytes_per_vector": round(mem / len(xb)),
                   "vector_index_bytes_per_vector": round(index_vector_mb(store) * 2**20 / len(xb))}  # fmt: skip
            print(json.dumps(row), flush=True)
            for ef in [int(e) for e in args.ef.split(",")]:
                s = RedisStore(
                    RedisConfig(url=url, index_name="hnsw", algorithm="HNSW", dtype=dtype, ef_runtime=ef)
                )
                lat, got = [], []
                for q in xq:
                    t1 = time.perf_counter()
                    got.append([h.id for h in s.search(q[None], 10)[0]])
                    lat.append(time.perf_counter() - t1)
                found = np.array([(g + [-1] * 10)[:10] for g in got])
                ms = np.array(lat) * 1e3
                print(json.dumps({"step": f"HNSW {dtype} query", "ef_runtime": ef,
                                  "recall_at_10": round(recall_at(found, gt, 10), 4),
                                  "p50_ms": round(float(np.percentile(ms, 50)), 2),
                                  "p99_ms": round(float(np.percentile(ms, 99)), 2)}), flush=True)  # fmt: skip
            store.drop()

        # 3. hashes first, then the index: the server builds the graph over existing hashes
        cfg = RedisConfig(url=url, index_name="after", algorithm="HNSW", dtype="FLOAT32")
        store = fresh("after", algorithm="HNSW", dtype="FLOAT32")
        store.drop(delete_documents=False)
        t0 = time.perf_counter()
        pipe_store = store  # dim None now: write the hashes without an index
        pipe_store.dim = args.dim
        pipe_store.bulk_load(xb, recs)
        pipe_store.flush()
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        store = RedisStore(cfg, dim=args.dim)  # FT.CREATE, then waits for background indexing
        wait_indexed(store, len(xb))
        t_index = time.perf_counter() - t1
        print(json.dumps({"step": "HNSW FLOAT32 index after load", "vectors": len(xb), "load_s": round(t_load, 1),
                          "index_s": round(t_index, 1),
                          "vectors_per_s": round(len(xb) / (t_load + t_index))}), flush=True)  # fmt: skip
        store.drop()


if __name__ == "__main__":
    main()
