"""The same build on a Ray cluster (Ray Data), for plates beyond one machine.

Stages, all reusing this project's modules (no second copy of decoding, preprocessing or the encoder):

1. the driver lists sources and opens the stores (manifest check, ids already in both stores);
2. CPU tasks read, hash, decode and preprocess (:func:`indexer.pipeline.prepare_item`); a bad file
   becomes a rejected row with its reason;
3. an actor class loads the encoder once per worker and embeds batches (``num_gpus`` per actor);
4. CPU tasks upsert each batch into Redis and write it as a parquet shard (the FAISS store's shard
   format) under ``<index>/ray-shards/`` or any fsspec URL;
5. the driver adds the shards to the FAISS mirror and flushes it atomically, so a failed worker never
   leaves half a FAISS index; a re-run first imports shards left by a killed run.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.config import BuildConfig, PreprocessConfig, RedisConfig
from indexer.errors import ConfigError, DecodeError, MaeError
from indexer.pipeline import (
    BuildSummary,
    Rejected,
    prepare_item,
    resolve_build_preprocess,
    store_location,
    write_rejected,
)
from indexer.stores.base import RECORD_FIELDS, ImageRecord
from indexer.stores.manifest import build_manifest, check_compatible

SHARD_DIR = "ray-shards"
#: Per-row seconds each stage reports, summed into the build summary under the local build's names.
_STAGE_COLUMNS = {"t_prepare": "read_decode_preprocess", "t_embed": "model", "t_write": "write"}


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide to run. ``address`` None starts a local Ray runtime.

    ``concurrency`` (embedding actors) None: one per GPU slot (cluster GPUs / ``num_gpus_per_worker``),
    or on CPUs one per cluster CPU. ``threads_per_worker`` (torch threads per actor) None: cluster CPUs /
    actors. Measured on 2 cores (tiny model): two 1-thread actors embed 105 images/s, one 2-thread
    actor 60, because each actor also decodes its images (see :func:`run_ray_build`).
    """

    address: str | None = None
    concurrency: int | None = None
    num_gpus_per_worker: float = 0.0
    num_cpus: int | None = None  # for a local runtime
    threads_per_worker: int | None = None
    writers: int = 1  # write actors (Redis upserts and parquet shards; I/O, no CPU slot)
    shard_url: str | None = None  # fsspec folder for shards; default <index>/ray-shards

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be >= 1")
        if self.num_gpus_per_worker < 0:
            raise ConfigError("--num-gpus-per-worker must be >= 0")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ConfigError("--threads-per-worker must be >= 1")
        if self.writers < 1:
            raise ConfigError("--writers must be >= 1")

    def actors_and_threads(self, cluster: dict[str, float]) -> tuple[int, int]:
        """Embedding actors and torch threads per actor for a cluster with ``cluster`` resources."""
        cpus = max(1, int(cluster.get("CPU", 1)))
        if self.concurrency is not None:
            actors = self.concurrency
        elif self.num_gpus_per_worker > 0:
            actors = max(1, int(cluster.get("GPU", 0) // self.num_gpus_per_worker))
        else:
            actors = cpus
        # Ray pins a 1-CPU actor to one thread (OMP_NUM_THREADS=1); fewer actors than CPUs get the rest.
        return actors, self.threads_per_worker or max(1, cpus // actors)


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--engine ray needs Ray Data: pip install 'mae-microscopy[ray]'") from e
    return ray


def _prepare_batch(batch: dict[str, np.ndarray], pre: dict, existing: frozenset[int]) -> dict[str, Any]:
    """Stage 2, a CPU task: read, hash, decode and preprocess each path with the local pipeline's code."""
    from indexer.bbbc006 import parse_path
    from indexer.sources import SourceItem, read_path

    config = PreprocessConfig.from_dict(pre)
    out: dict[str, list] = {k: [] for k in ("id", "path", "pixels", "status", "stage", "reason", "t_prepare")}
    for path in batch["path"]:
        path = str(path)
        # Metadata as the local build parses it (a file's own path resolved, so its folder names count).
        meta = parse_path(str(Path(path).resolve()) if Path(path).is_file() else path)
        p = prepare_item(
            SourceItem(path, (lambda p=path: read_path(p)), meta), config, existing, on_device=False
        )
        out["id"].append(p.record.id)
        out["path"].append(path)
        out["pixels"].append(p.pixels.numpy() if p.pixels is not None else np.zeros((0,), np.float32))
        out["status"].append("rejected" if p.rejected else "skipped" if p.skipped else "ok")
        out["stage"].append(p.rejected.stage if p.rejected else "")
        out["reason"].append(p.rejected.reason if p.rejected else "")
        out["t_prepare"].append(p.seconds)
        # The prepared record, not the parsed name: it also carries what decoding found (``source``).
        out.setdefault("meta", []).append({f: getattr(p.record, f) for f in RECORD_FIELDS if f != "path"})
    return out


class _Embed:
    """Stage 3: an actor that loads the encoder once and embeds the usable rows of each batch."""

    def __init__(self, model: dict, threads: int) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from indexer.config import ModelConfig
        from indexer.encoder import load_encoder

        hf_logging.set_verbosity_error()  # workers log to files; keep them to real problems
        torch.set_num_threads(threads)
        self.encoder = load_encoder(ModelConfig(**model))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        t0 = time.perf_counter()
        ok = [i for i, s in enumerate(batch["status"]) if s == "ok"]
        vectors = np.zeros((len(batch["status"]), self.encoder.dim), dtype=np.float32)
        if ok:
            pixels = torch.from_numpy(np.stack([batch["pixels"][i] for i in ok]))
            vectors[ok] = self.encoder.embed(pixels)
        out = {k: batch[k] for k in ("id", "path", "status", "stage", "reason", "meta", "t_prepare")}
        out["vector"] = list(vectors)
        out["t_embed"] = np.full(len(vectors), (time.perf_counter() - t0) / len(vectors))
        return out


class _Write:
    """Stage 4: an actor that upserts batches into Redis (one connection, kept) and writes each batch as one
    parquet shard (fsspec). Writing is I/O, so the actor holds no CPU slot: it keeps pace even when the
    embedding actors hold every CPU, and embedded batches do not pile up in the object store."""

    def __init__(self, shard_url: str, redis: dict | None) -> None:
        self.shard_url = shard_url.rstrip("/")
        self.redis = redis
        self._store = None

    def _redis_store(self, dim: int):
        if self._store is None:
            from indexer.stores.redis_store import RedisStore

            self._store = RedisStore(RedisConfig(**self.redis), dim=dim)
        return self._store

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import fsspec
        import pyarrow.parquet as pq

        from indexer.stores.faiss_store import records_to_table

        t0 = time.perf_counter()
        rows = [i for i, s in enumerate(batch["status"]) if s == "ok"]
        if rows:
            records = [
                ImageRecord(id=int(batch["id"][i]), path=str(batch["path"][i]), **batch["meta"][i])
                for i in rows
            ]
            vectors = np.stack([batch["vector"][i] for i in rows]).astype(np.float32)
            if self.redis is not None:
                self._redis_store(vectors.shape[1]).add(vectors, records)
            fs, root = fsspec.core.url_to_fs(self.shard_url)
            fs.makedirs(root, exist_ok=True)
            name = f"{root}/part-{uuid.uuid4().hex}.parquet"
            with fs.open(name + ".tmp", "wb") as f:
                pq.write_table(records_to_table(vectors, records), f)
            fs.mv(name + ".tmp", name)  # a reader never sees half a shard
        out = {k: batch[k] for k in ("id", "path", "status", "stage", "reason", "t_prepare", "t_embed")}
        out["t_write"] = np.full(len(batch["status"]), (time.perf_counter() - t0) / len(batch["status"]))
        return out


def import_shards(shard_url: str, faiss_store) -> int:
    """Add every finished shard under ``shard_url`` to the FAISS store, flush, then delete the shards."""
    import fsspec
    import pyarrow.parquet as pq

    from indexer.stores.faiss_store import table_to_records

    fs, root = fsspec.core.url_to_fs(shard_url)
    if not fs.exists(root):
        return 0
    paths = sorted(p for p in fs.ls(root, detail=False) if str(p).endswith(".parquet"))
    n = 0
    for p in paths:
        with fs.open(p, "rb") as f:
            ids, vectors, records, deleted = table_to_records(pq.read_table(f))
        faiss_store.add(vectors, records)
        n += len(records)
    faiss_store.flush()  # atomic: the mirror holds all of these shards or none
    for p in paths:
        fs.rm(p)
    return n


def run_ray_build(config: BuildConfig, ray_config: RayConfig, stores: list, encoder) -> BuildSummary:
    """Run ``config`` on Ray. ``stores`` are the driver's open stores (FAISS first, Redis optional);
    ``encoder`` is loaded on the driver only to resolve preprocessing and the manifest."""
    from indexer.sources import iter_sources

    ray = _ray()
    t0 = time.perf_counter()
    shard_url = ray_config.shard_url or str(Path(config.index_dir) / SHARD_DIR)
    recovered = import_shards(shard_url, stores[0])  # shards a killed run finished but never imported
    problems: list = []
    items = list(iter_sources(config.sources, problems))
    summary = BuildSummary(found=len(items) + len(problems))
    summary.rejected.extend(Rejected(p.path, "list", p.reason) for p in problems)
    stored = stores[0].read_manifest()
    pre = resolve_build_preprocess(config, encoder, items, stored)
    manifest = build_manifest(encoder.info, config.model.pooling, pre.to_dict(), encoder.dim)
    for store in stores:
        check_compatible(store.read_manifest(), manifest, store_location(store))
        if store.read_manifest() is None:
            store.write_manifest(manifest)
    existing: set[int] = set()
    if not config.force:
        existing = set(stores[0].ids().tolist())
        for store in stores[1:]:
            existing &= set(store.ids().tolist())

    stage_seconds = dict.fromkeys(_STAGE_COLUMNS.values(), 0.0)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_config.address, num_cpus=ray_config.num_cpus if ray_config.address is None else None,
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)  # fmt: skip
    try:
        device = "cuda" if ray_config.num_gpus_per_worker > 0 else "cpu"
        model = asdict(replace(config.model, device=device))
        summary.runtime = f"ray {device} {config.model.precision}"
        redis = asdict(config.redis) if config.redis is not None else None
        ds = ray.data.from_items([{"path": it.path} for it in items])
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"pre": pre.to_dict(), "existing": frozenset(existing)},
                            batch_size=config.batch_size)  # fmt: skip
        actors, threads = ray_config.actors_and_threads(ray.cluster_resources())
        ds = ds.map_batches(_Embed, fn_constructor_args=(model, threads), batch_size=config.batch_size,
                            concurrency=actors, num_gpus=ray_config.num_gpus_per_worker)  # fmt: skip
        ds = ds.map_batches(_Write, fn_constructor_args=(shard_url, redis), batch_size=config.batch_size,
                            concurrency=ray_config.writers, num_cpus=0)  # fmt: skip
        seen: dict[int, str] = {}
        for row in ds.iter_rows():
            for column, stage in _STAGE_COLUMNS.items():
                stage_seconds[stage] += float(row[column])
            if row["status"] == "rejected":
                summary.rejected.append(Rejected(row["path"], row["stage"], row["reason"]))
                if config.strict:
                    raise DecodeError(f"{row['path']}: {row['reason']} (strict mode)")
            elif row["status"] == "skipped":
                summary.skipped_existing += 1
            elif int(row["id"]) in seen:
                summary.rejected.append(
                    Rejected(row["path"], "dedupe", f"same content as {seen[int(row['id'])]}")
                )
            else:
                seen[int(row["id"])] = row["path"]
                summary.indexed += 1
    except ray.exceptions.RayError as e:
        raise MaeError(f"the Ray build failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        if started_here:
            ray.shutdown()
    import_shards(shard_url, stores[0])
    write_rejected(config.index_dir, summary.rejected)
    summary.seconds = time.perf_counter() - t0
    summary.stage_seconds = stage_seconds
    summary.recovered = recovered
    summary.index_count = stores[0].count()
    return summary
