"""Redis at scale: bulk-load batch size, FLOAT32 vs FLOAT16 (memory, ingest, recall), index-after-load.

Uses a private Redis Stack server on a free port (or ``redis_url``). The vectors are the clustered
768-d vectors of the ``faiss_kinds`` group (a decaying spectrum around 1,000 centres), queries are
held-out points, and recall@10 is against exact inner-product search.

1. Batch sweep: :meth:`RedisStore.bulk_load` (pipelined HSET, no MULTI) into a FLAT index at several
   pipeline batch sizes, against :meth:`RedisStore.add` (MULTI/EXEC chunks of DEL + HSET).
2. HNSW (M 16, EF_CONSTRUCTION 200) per vector type: ingest rate with the server building the graph as
   hashes arrive, ``used_memory`` and the index's own vector memory per vector, recall@10 and p50/p99
   query latency per EF_RUNTIME.
3. Index after load: the hashes first, then FT.CREATE, the server indexing the existing hashes.

    python -m bench run redis_scale --set vectors=50000 --set batches=100,500,1000,5000 --set ef=200,800
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.common import redis_url
from bench.groups.faiss_kinds import clustered_vectors, exact_top
from bench.harness import Result


@dataclass(frozen=True)
class Params:
    """``vectors`` of ``dim`` (``queries`` held out); ``sweep_vectors`` per batch-size run of
    ``batches``; ``ef``: EF_RUNTIME values; ``dtypes``; ``redis_url`` (empty: a private server)."""

    vectors: int = 50_000
    dim: int = 768
    queries: int = 200
    sweep_vectors: int = 10_000
    batches: str = "100,500,1000,5000"
    ef: str = "200,800"
    dtypes: str = "FLOAT32,FLOAT16"
    redis_url: str = ""
    seed: int = 0


QUICK = Params(vectors=5000, dim=128, queries=50, sweep_vectors=2000, batches="100,1000", ef="200")


def used_memory(client) -> int:
    """The server's ``used_memory``, in bytes."""
    return int(client.info("memory")["used_memory"])


def wait_indexed(store, n: int, timeout: float = 3600.0) -> None:
    """Wait until the server has indexed ``n`` documents and no background indexing is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = store._index_info() or {}
        if int(info.get("indexing", 0) or 0) == 0 and store.count() >= n:
            return
        time.sleep(0.2)


def index_vector_mb(store) -> float:
    """The index's own vector memory (``FT.INFO vector_index_sz_mb``)."""
    info = store._index_info() or {}
    return float(info.get("vector_index_sz_mb", 0) or 0)


def run(args: Params) -> Iterator[Result]:
    """The batch sweep, each vector type's HNSW ingest, memory, recall and latency, index after load."""
    from indexer.core.config import RedisConfig
    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.kinds import recall_at
    from indexer.stores.redis.store import RedisStore

    with redis_url(args.redis_url or None, prefix="mae-bench-rs-") as url:
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
            at = {"batch": batch, "vectors": n}
            yield Result("bulk_load FLAT", "seconds", t, "s", at)
            yield Result("bulk_load FLAT", "rate", n / t, "vectors/s", at)
            store.drop()
        store = fresh("sweep")
        t0 = time.perf_counter()
        store.add(xb[:n], recs[:n])
        t = time.perf_counter() - t0
        yield Result("add FLAT (MULTI, DEL+HSET, 500)", "seconds", t, "s", {"vectors": n})
        yield Result("add FLAT (MULTI, DEL+HSET, 500)", "rate", n / t, "vectors/s", {"vectors": n})
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
            case, at = f"HNSW {dtype} bulk_load", {"vectors": len(xb)}
            yield Result(case, "seconds", t, "s", at)
            yield Result(case, "rate", len(xb) / t, "vectors/s", at)
            yield Result(case, "used_memory_per_vector", mem / len(xb), "B", at)
            yield Result(case, "vector_index_per_vector", index_vector_mb(store) * 2**20 / len(xb), "B", at)
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
                case, at = f"HNSW {dtype} query", {"ef_runtime": ef}
                yield Result(case, "recall_at_10", recall_at(found, gt, 10), "", at)
                yield Result(case, "p50", float(np.percentile(ms, 50)), "ms", at)
                yield Result(case, "p99", float(np.percentile(ms, 99)), "ms", at)
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
        case, at = "HNSW FLOAT32 index after load", {"vectors": len(xb)}
        yield Result(case, "load_seconds", t_load, "s", at)
        yield Result(case, "index_seconds", t_index, "s", at)
        yield Result(case, "rate", len(xb) / (t_load + t_index), "vectors/s", at)
        store.drop()
