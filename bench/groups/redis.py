"""Benchmark 5: Redis ingest FLAT vs HNSW, and EF_RUNTIME vs recall@10 vs latency against exact FAISS.

Uses a private Redis Stack server (tests/support/redis_server.py) on a free port, or ``redis_url``.
Vectors are clustered unit vectors (hard for HNSW, like real embeddings of similar fields of view).

    python -m bench run redis --set vectors=20000 --set dim=768 --set queries=200
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import redis_url
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``vectors`` of ``dim``; ``queries``; ``ef``: EF_RUNTIME values, comma-separated; ``redis_url``
    (empty: a private server)."""

    vectors: int = 20_000
    dim: int = 768
    queries: int = 200
    ef: str = "10,20,50,100,200,400"
    redis_url: str = ""
    seed: int = 0


QUICK = Params(vectors=3000, dim=128, queries=50, ef="10,50,200")


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors in 50 tight clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    v = centres[rng.integers(0, 50, n)] + 0.35 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def run(p: Params) -> Iterator[Result]:
    """Ingest seconds and rate per algorithm; recall@10, p50 and p99 per EF_RUNTIME; exact FAISS time."""
    from indexer.core.config import RedisConfig
    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.store import FaissStore
    from indexer.stores.recall import recall_at_k
    from indexer.stores.redis.store import RedisStore

    with redis_url(p.redis_url or None, prefix="mae-bench-r-") as url, tempfile.TemporaryDirectory() as tmp:
        vecs = clustered(p.vectors, p.dim, p.seed)
        queries = clustered(p.queries, p.dim, p.seed + 1)
        records = [
            ImageRecord(id=i, path=f"v{i}.tif", well="A01", site=1 + i % 2, z=16) for i in range(len(vecs))
        ]
        faiss_store = FaissStore(Path(tmp) / "idx", dim=p.dim)
        faiss_store.add(vecs, records)
        t0 = time.perf_counter()
        exact = [[h.id for h in hits] for hits in faiss_store.search(queries, 10)]
        yield Result("exact FAISS flat", "per_query", (time.perf_counter() - t0) / len(queries) * 1000, "ms")
        stores = {}
        for algo in ("FLAT", "HNSW"):
            cfg = RedisConfig(url=url, index_name=f"bench{algo.lower()}", algorithm=algo)
            RedisStore(cfg, dim=p.dim).drop()
            store = RedisStore(cfg, dim=p.dim)
            t0 = time.perf_counter()
            for i in range(0, len(vecs), 1000):
                store.add(vecs[i : i + 1000], records[i : i + 1000])
            t = time.perf_counter() - t0
            case = f"ingest {algo} (pipelined HSET, transactions of 500)"
            yield Result(case, "seconds", t, "s")
            yield Result(case, "rate", len(vecs) / t, "vectors/s")
            stores[algo] = store
        for algo, efs in (("FLAT", [None]), ("HNSW", [int(e) for e in p.ef.split(",")])):
            for ef in efs:
                cfg = RedisConfig(
                    url=url, index_name=f"bench{algo.lower()}", algorithm=algo, ef_runtime=ef or 10
                )
                store = RedisStore(cfg, dim=p.dim)
                lat, got = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    got.append([h.id for h in store.search(q[None], 10)[0]])
                    lat.append(time.perf_counter() - t0)
                lat_ms = np.array(lat) * 1000
                case, at = f"KNN k=10 {algo}", ({"ef_runtime": ef} if ef else {})
                yield Result(case, "recall_at_10", recall_at_k(got, exact, 10), "", at)
                yield Result(case, "p50", float(np.percentile(lat_ms, 50)), "ms", at)
                yield Result(case, "p99", float(np.percentile(lat_ms, 99)), "ms", at)
        for s in stores.values():
            s.drop()
