"""FAISS mirror kinds on synthetic clustered vectors: build time, RAM and disk per vector, p50 query, recall@10.

The vectors are clustered, not uniform: ``clusters`` centres, each point its centre plus noise with a
decaying spectrum in a random orientation (embeddings have a few strong directions and many weak
ones), L2-normalised. Recall@10 is against exact search over the same vectors, with held-out points as
queries. Each kind is built the way the store builds it (:mod:`indexer.stores.faiss.kinds`: trained on
``train_size`` sampled vectors, then filled), its nprobe/efSearch tuned by :func:`tune_search` on
training-set queries, then measured on other queries. PQ kinds re-rank as the store does
(:mod:`indexer.stores.faiss.rerank`): a float16 re-rank file written to ``workdir`` and
memory-mapped, the (nprobe, rerank) pair tuned by :func:`tune_rerank`; the query time includes reading
the candidates' rows. ``ram_bytes_per_vector`` is what the index keeps in memory (the kind's estimate
plus the shared centroids; ``rss_bytes_per_vector`` is the process's RSS growth while filling it, with
the lists' growth slack; ``rss_loaded_bytes_per_vector`` its growth when reading ``index.faiss`` back,
as a reader does), ``disk_bytes_per_vector`` is ``index.faiss`` plus the re-rank file.
``filter_fraction`` adds the recall and latency of a filtered search (an IDSelector keeping that
fraction, nprobe/efSearch widened as the store widens them).

    python -m bench run faiss_kinds --set n=1000000 --set 'kinds=auto;Flat;IVF1024,PQ64;HNSW32' --set hnsw_n=100000
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.harness import Result
from bench.measure import peak_rss


@dataclass(frozen=True)
class Params:
    """``n`` vectors of ``dim`` around ``clusters`` centres; ``queries`` held out for recall;
    ``kinds``: ';'-separated factory strings or auto; ``hnsw_n``: HNSW kinds on the first N only (0:
    all); ``memory_bytes_per_vector``: auto's budget (128: a PQ code that fits 128 B with its id);
    ``filter_fraction``: a filtered search keeping this fraction (0: none); ``threads``: faiss OpenMP
    threads (0: its default); ``workdir``: where re-rank files go (empty: a temporary folder)."""

    n: int = 1_000_000
    dim: int = 768
    clusters: int = 1000
    queries: int = 500
    latency_queries: int = 200
    tune_queries: int = 200
    kinds: str = "Flat;auto;HNSW32"
    hnsw_n: int = 0
    memory_bytes_per_vector: float = 128.0
    filter_fraction: float = 0.125
    threads: int = 0
    seed: int = 0
    workdir: str = ""


QUICK = Params(n=20_000, dim=128, clusters=100, queries=100, latency_queries=50, tune_queries=50,
               kinds="Flat;IVF64,PQ16;HNSW32")  # fmt: skip


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


def rss_bytes() -> int:
    """Resident set size now, after handing freed heap back to the OS (glibc)."""
    return int(peak_rss(trim=True).now_mb * 2**20)


def measure(kind_text: str, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, args: Params) -> dict:
    """Build, tune and time one kind; its row of figures (``kind`` and ``requested`` are its names)."""
    import faiss

    from indexer.stores.faiss.kinds import (
        choose_auto,
        new_index,
        parse_kind,
        recall_at,
        search_parameters,
        tune_search,
    )
    from indexer.stores.faiss.rerank import candidates, rerank, reranks, tune_rerank
    from indexer.stores.faiss.rerank_file import RerankFile

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
        del sample
        train_s = time.perf_counter() - t0
    rss0 = rss_bytes()
    for start in range(0, n, 100_000):
        index.add_with_ids(xb[start : start + 100_000], ids[start : start + 100_000])
    rss_fill = rss_bytes() - rss0
    rerank_file, rerank_s = None, 0.0
    if reranks(kind):
        # The store writes it shard by shard; here 100k rows at a time, in shuffled id order as a build's are.
        t = time.perf_counter()
        chunks = np.array_split(np.random.default_rng(0).permutation(n), max(1, n // 100_000))
        rerank_file = RerankFile.write(
            Path(args.workdir) / f"{kind.factory}.rerank", ids, dim, ((c, xb[c]) for c in chunks), "bench"
        )
        rerank_s = time.perf_counter() - t
    build_s = time.perf_counter() - t0
    # Tuned as the store tunes: stored vectors as queries, exact answers, the cheapest setting >= 0.95.
    tq_ids = np.linspace(0, n - 1, args.tune_queries).astype(np.int64)
    tq = xb[tq_ids]
    t = time.perf_counter()
    if rerank_file is not None:
        tuned = tune_rerank(
            index, kind, tq, exact_top(xb, tq, 11), rerank_file.scores, n, k=10, query_ids=tq_ids
        )
    else:
        tuned = tune_search(index, kind, tq, exact_top(xb, tq, 11), k=10, query_ids=tq_ids)
    tune_s = time.perf_counter() - t
    nprobe, ef, factor = tuned.get("nprobe"), tuned.get("efSearch"), tuned.get("rerank")

    def search(q: np.ndarray, params, available: int = n) -> np.ndarray:
        found = index.search(q, candidates(10, factor, available), params=params)[1]
        if factor:
            found = rerank(q, found, rerank_file.scores(q, found), 10)[1]
        return found

    params = search_parameters(kind, nprobe, ef)
    recall = recall_at(search(xq, params), gt, 10)
    lat = []
    for q in xq[: args.latency_queries]:
        t = time.perf_counter()
        search(q[None], params)
        lat.append(time.perf_counter() - t)
    index_path = Path(args.workdir) / f"{kind.factory}.faiss"
    faiss.write_index(index, str(index_path))
    disk = index_path.stat().st_size + (rerank_file.path.stat().st_size if rerank_file is not None else 0)
    centroids = (kind.nlist or 0) * dim * 4
    row = {
        "kind": factory,
        "requested": kind_text,
        "n": n,
        "train_s": train_s,
        **({"rerank_write_s": rerank_s} if rerank_file is not None else {}),
        "build_s": build_s,
        "tune_s": tune_s,
        "ram_bytes_per_vector": kind.bytes_per_vector(dim) + centroids / n,
        "rss_bytes_per_vector": rss_fill / n,
        "disk_bytes_per_vector": disk / n,
        **({"nprobe": nprobe} if nprobe else {}),
        **({"rerank": factor} if factor is not None else {}),
        **({"efSearch": ef} if ef else {}),
        "tuned_recall_at_10": tuned.get("recall_at_10"),
        "recall_at_10": recall,
        "p50_query_ms": float(np.median(lat)) * 1e3,
    }
    if args.filter_fraction:
        rng = np.random.default_rng(1)
        keep = rng.random(n) < args.filter_fraction
        sel = faiss.IDSelectorBatch(np.flatnonzero(keep).astype(np.int64))
        widen = n / keep.sum()
        fparams = search_parameters(kind, nprobe, ef, sel, widen=widen)
        allowed = int(keep.sum())
        ffound = search(xq, fparams, allowed)
        row["filtered_recall_at_10"] = recall_at(ffound, exact_top(xb, xq, 10, keep), 10)
        flat = []
        for q in xq[: args.latency_queries]:
            t = time.perf_counter()
            search(q[None], fparams, allowed)
            flat.append(time.perf_counter() - t)
        row["filtered_p50_query_ms"] = float(np.median(flat)) * 1e3
    # What a reader (the server) holds: the index read back from disk, its lists sized exactly.
    index = None  # the search closure shares this name: the built index is freed here
    rss0 = rss_bytes()
    loaded = faiss.read_index(str(index_path))
    row["rss_loaded_bytes_per_vector"] = (rss_bytes() - rss0) / n
    del loaded
    index_path.unlink()
    return row


def run(p: Params) -> Iterator[Result]:
    """Each kind's build, tuning, memory, disk, recall and latency figures."""
    import faiss

    with tempfile.TemporaryDirectory(prefix="bench-faiss-") as tmp:
        p = replace(p, workdir=p.workdir or tmp)
        if p.threads:
            faiss.omp_set_num_threads(p.threads)
        t0 = time.perf_counter()
        x = clustered_vectors(p.n + p.queries, p.dim, p.clusters, p.seed)
        xb, xq = x[: p.n], x[p.n :]
        yield Result("generate the vectors", "seconds", time.perf_counter() - t0, "s")
        for kind in p.kinds.split(";"):
            sub = xb[: p.hnsw_n] if kind.startswith("HNSW") and p.hnsw_n else xb
            gt = exact_top(sub, xq, 10)
            row = measure(kind, sub, xq, gt, p)
            case = row.pop("kind")
            at = {"requested": row.pop("requested"), "vectors": row.pop("n")}
            at |= {k: row.pop(k) for k in ("nprobe", "rerank", "efSearch") if k in row}
            for metric, value in row.items():
                if value is not None:
                    yield Result(case, metric, value, UNITS.get(metric.rsplit("_", 1)[-1], ""), at)


#: The unit of a figure, by the last word of its name.
UNITS = {"s": "s", "vector": "B", "ms": "ms", "10": ""}
