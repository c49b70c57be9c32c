"""FAISS mirror kinds on synthetic clustered vectors: build time, bytes per vector, p50 query, recall@10.

The vectors are clustered, not uniform: ``--clusters`` centres, each point its centre plus noise with a
decaying spectrum in a random orientation (embeddings have a few strong directions and many weak
ones), L2-normalised. Recall@10 is against exact search over the same vectors, with held-out points as
queries. Each kind is built the way the store builds it (:mod:`indexer.stores.faiss_kinds`: trained on
``train_size`` sampled vectors, then filled), its nprobe/efSearch tuned by :func:`tune_search` on
training-set queries, then measured on other queries. ``--filter-fraction`` adds the recall and
latency of a filtered search (an IDSelector keeping that fraction, nprobe/efSearch widened as the store
widens them).

    python bench/bench_faiss_kinds.py --n 200000 --kinds 'Flat;auto;HNSW32' --hnsw-n 50000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def clustered_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` centres; noise with spectrum ``i**-0.75`` (deterministic)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)).astype(np.float32))
    spectrum = (np.arange(1, dim + 1) ** -0.75).astype(np.float32)
    centres = (rng.standard_normal((clusters, dim)).astype(np.float32) * spectrum) @ basis.T
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        noise = (rng.standard_normal((m, dim)).astype(np.float32) * spectrum * 3) @ basis.T
        x = centres[rng.integers(0, clusters, m)] + noise
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(xb: np.ndarray, xq: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    import faiss

    if keep is None:
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb)
        return index.search(xq, k)[1]
    ids = np.flatnonzero(keep)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb[ids])
    return ids[index.search(xq, k)[1]]


def measure(kind_text: str, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, args) -> dict:
    import faiss

    from indexer.stores.faiss_kinds import (
        choose_auto,
        new_index,
        parse_kind,
        recall_at,
        search_parameters,
        tune_search,
    )

    n, dim = xb.shape
    factory = choose_auto(n, dim, int(args.memory_bytes_per_vector * n)) if kind_text == "auto" else kind_text
    kind = parse_kind(factory)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    index = new_index(kind, dim)
    train_s = 0.0
    if kind.trained:
        sample = xb[np.linspace(0, n - 1, kind.train_size(n)).astype(np.int64)]
        index.train(sample)
        train_s = time.perf_counter() - t0
    for start in range(0, n, 100_000):
        index.add_with_ids(xb[start : start + 100_000], ids[start : start + 100_000])
    build_s = time.perf_counter() - t0
    # Tuned as the store tunes: stored vectors as queries, exact answers, the cheapest setting >= 0.95.
    tq_ids = np.linspace(0, n - 1, args.tune_queries).astype(np.int64)
    tq = xb[tq_ids]
    tuned = tune_search(index, kind, tq, exact_top(xb, tq, 11), k=10, query_ids=tq_ids)
    nprobe, ef = tuned.get("nprobe"), tuned.get("efSearch")
    params = search_parameters(kind, nprobe, ef)
    _, found = index.search(xq, 10, params=params)
    recall = recall_at(found, gt, 10)
    lat = []
    for q in xq[: args.latency_queries]:
        t = time.perf_counter()
        index.search(q[None], 10, params=params)
        lat.append(time.perf_counter() - t)
    row = {
        "kind": factory,
        "requested": kind_text,
        "n": n,
        "train_s": round(train_s, 1),
        "build_s": round(build_s, 1),
        "bytes_per_vector": round(len(faiss.serialize_index(index)) / n, 1),
        **({"nprobe": nprobe} if nprobe else {}),
        **({"efSearch": ef} if ef else {}),
        "recall_at_10": round(recall, 4),
        "p50_query_ms": round(float(np.median(lat)) * 1e3, 3),
    }
    if args.filter_fraction:
        rng = np.random.default_rng(1)
        keep = rng.random(n) < args.filter_fraction
        sel = faiss.IDSelectorBatch(np.flatnonzero(keep).astype(np.int64))
        widen = n / keep.sum()
        fparams = search_parameters(kind, nprobe, ef, sel, widen=widen)
        _, ffound = index.search(xq, 10, params=fparams)
        row["filtered_recall_at_10"] = round(recall_at(ffound, exact_top(xb, xq, 10, keep), 10), 4)
        flat = []
        for q in xq[: args.latency_queries]:
            t = time.perf_counter()
            index.search(q[None], 10, params=fparams)
            flat.append(time.perf_counter() - t)
        row["filtered_p50_query_ms"] = round(float(np.median(flat)) * 1e3, 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--queries", type=int, default=500, help="Held-out queries for recall.")
    p.add_argument("--latency-queries", type=int, default=200, help="Single-query searches timed.")
    p.add_argument("--tune-queries", type=int, default=200)
    p.add_argument("--kinds", default="Flat;auto;HNSW32", help="';'-separated factory strings, or auto.")
    p.add_argument("--hnsw-n", type=int, default=None, help="Build HNSW kinds on the first N vectors only.")
    p.add_argument("--memory-bytes-per-vector", type=float, default=128.0,
                   help="auto's budget, per vector (128: a PQ code that fits 128 B with its id).")  # fmt: skip
    p.add_argument(
        "--filter-fraction", type=float, default=0.125, help="Filtered search keeping this fraction."
    )
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    x = clustered_vectors(args.n + args.queries, args.dim, args.clusters, args.seed)
    xb, xq = x[: args.n], x[args.n :]
    print(
        json.dumps({"generated": args.n, "dim": args.dim, "seconds": round(time.perf_counter() - t0, 1)}),
        flush=True,
    )
    for kind in args.kinds.split(";"):
        sub = xb[: args.hnsw_n] if kind.startswith("HNSW") and args.hnsw_n else xb
        gt = exact_top(sub, xq, 10)
        print(json.dumps(measure(kind, sub, xq, gt, args)), flush=True)


if __name__ == "__main__":
    main()
