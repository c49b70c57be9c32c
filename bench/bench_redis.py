"""Benchmark 5: Redis ingest FLAT vs HNSW, and EF_RUNTIME vs recall@10 vs latency against exact FAISS.

Uses a private Redis Stack server (scripts/redis-stack.sh) on a free port, or --redis-url. Vectors are
clustered unit vectors (hard for HNSW, like real embeddings of similar fields of view).

    python bench/bench_redis.py --vectors 20000 --dim 768 --queries 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, redis_url  # noqa: E402
from indexer.core.config import RedisConfig  # noqa: E402
from indexer.core.records import ImageRecord
from indexer.stores.faiss.store import FaissStore  # noqa: E402
from indexer.stores.recall import recall_at_k  # noqa: E402


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors in 50 tight clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    v = centres[rng.integers(0, 50, n)] + 0.35 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", default="10,20,50,100,200,400")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from indexer.stores.redis.store import RedisStore

    with redis_url(args.redis_url, prefix="mae-bench-r-") as url:
        vecs = clustered(args.vectors, args.dim, args.seed)
        queries = clustered(args.queries, args.dim, args.seed + 1)
        records = [
            ImageRecord(id=i, path=f"v{i}.tif", well="A01", site=1 + i % 2, z=16) for i in range(len(vecs))
        ]
        faiss_store = FaissStore(Path(tempfile.mkdtemp()) / "idx", dim=args.dim)
        faiss_store.add(vecs, records)
        t0 = time.perf_counter()
        exact = [[h.id for h in hits] for hits in faiss_store.search(queries, 10)]
        t_exact = (time.perf_counter() - t0) / len(queries)

        ingest_rows, ef_rows = [], []
        stores = {}
        for algo in ("FLAT", "HNSW"):
            store = RedisStore(
                RedisConfig(url=url, index_name=f"bench{algo.lower()}", algorithm=algo), dim=args.dim
            )
            store.drop()
            store = RedisStore(
                RedisConfig(url=url, index_name=f"bench{algo.lower()}", algorithm=algo), dim=args.dim
            )
            t0 = time.perf_counter()
            for i in range(0, len(vecs), 1000):
                store.add(vecs[i : i + 1000], records[i : i + 1000])
            t = time.perf_counter() - t0
            ingest_rows.append((algo, len(vecs), f"{t:.1f}", f"{len(vecs) / t:.0f}"))
            stores[algo] = store
        for algo, efs in (("FLAT", [None]), ("HNSW", [int(e) for e in args.ef.split(",")])):
            for ef in efs:
                cfg = RedisConfig(
                    url=url, index_name=f"bench{algo.lower()}", algorithm=algo, ef_runtime=ef or 10
                )
                store = RedisStore(cfg, dim=args.dim)
                lat, got = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    got.append([h.id for h in store.search(q[None], 10)[0]])
                    lat.append(time.perf_counter() - t0)
                lat_ms = np.array(lat) * 1000
                ef_rows.append((algo, ef if ef else "-", f"{recall_at_k(got, exact, 10):.4f}",
                                f"{np.percentile(lat_ms, 50):.2f}", f"{np.percentile(lat_ms, 99):.2f}"))  # fmt: skip
        for s in stores.values():
            s.drop()
        print_table(f"Redis ingest, {args.vectors} x {args.dim} float32 (pipelined HSET, transactions of 500)",
                    ingest_rows, ("algorithm", "vectors", "seconds", "vectors/s"))  # fmt: skip
        print_table(f"KNN k=10 vs exact FAISS ({args.queries} queries; FAISS flat {t_exact * 1000:.2f} ms/query)",
                    ef_rows, ("algorithm", "EF_RUNTIME", "recall@10", "p50 ms", "p99 ms"))  # fmt: skip


if __name__ == "__main__":
    main()
