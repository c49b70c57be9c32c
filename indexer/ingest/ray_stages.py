"""The worker stages of the Ray build (:mod:`indexer.ingest.ray_engine`): CPU tasks that read, decode and
preprocess, an actor that embeds, an actor that writes. Each reuses the local engine's code."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.config import PreprocessConfig, RedisConfig
from indexer.core.records import RECORD_FIELDS, ImageRecord
from indexer.ingest.plan import write_batch

#: What a file name says (the listing's metadata); ``source`` is what decoding finds, per image.
NAME_FIELDS = tuple(f for f in RECORD_FIELDS if f not in ("path", "source"))
# The stages keep their underscored names: Ray shows them in its worker processes' titles
# (ray::MapWorker(MapBatches(_Embed))), which is how an operator (and a test) finds a stage's workers.

#: Per-row seconds each stage reports, summed into the build summary under the local build's names.
STAGE_COLUMNS = {"t_prepare": "read_decode_preprocess", "t_embed": "model", "t_write": "write"}


def _zip_member(path: str) -> tuple[str, str] | None:
    """``(archive, member)`` of a ``data.zip/member`` path, or ``None`` for a plain file."""
    cut = path.lower().find(".zip/")
    return (path[: cut + 4], path[cut + 5 :]) if cut >= 0 and not Path(path).is_file() else None


def _prepare_batch(
    batch: dict[str, np.ndarray], pre: dict, existing: frozenset[int], rows: int = 32
) -> Iterator[dict[str, Any]]:
    """Stage 2, a CPU task: read, hash, decode and preprocess each row with the local engine's code,
    yielding an output batch every ``rows`` planes.

    Why yield: a task of 32 files of 1,000 planes each would otherwise hold 32,000 prepared planes (6 GB
    at 224 px) before handing one on; yielded batches go to Ray's object store, whose backpressure
    bounds what waits for the model. Metadata comes from the driver (parsed once, as the local build
    parses it); each zip is opened once per task, not once per member.
    """
    import zipfile

    from indexer.core.records import ImageMeta
    from indexer.images.sources import SourceItem, file_path
    from indexer.ingest.prepare import prepare_planes

    config = PreprocessConfig.from_dict(pre)
    columns = (
        "order",
        "part",
        "id",
        "path",
        "pixels",
        "shape",
        "status",
        "stage",
        "reason",
        "t_prepare",
        "meta",
    )
    out: dict[str, list] = {k: [] for k in columns}
    archives: dict[str, zipfile.ZipFile] = {}

    def reader(path: str):
        member = _zip_member(path)
        if member is None:
            return file_path(path).read_bytes  # a name that is not UTF-8 is stored escaped
        archive, name = member

        def read() -> bytes:
            if archive not in archives:
                archives[archive] = zipfile.ZipFile(archive)
            return archives[archive].read(name)

        return read

    try:
        for order, path, meta in zip(batch["order"], batch["path"], batch["meta"]):
            path = str(path)
            fields = {f: meta.get(f) for f in NAME_FIELDS}
            tags = tuple(json.loads(meta.get("tags") or "{}").items())
            item = SourceItem(path, reader(path), ImageMeta(**fields, tags=tags))
            # One row per plane; ``part`` keeps a plane's place in its file: rows may come back out of order.
            for part, p in enumerate(prepare_planes(item, config, existing, on_device=False)):
                out["order"].append(int(order))
                out["part"].append(part)
                out["id"].append(p.record.id)
                out["path"].append(p.record.path)
                # Bytes and a shape, not arrays: a task's batches are joined into one block, and Ray cannot
                # join a batch of same-shaped planes (a tensor column) with one holding a rejected row.
                out["pixels"].append(p.pixels.numpy().tobytes() if p.pixels is not None else b"")
                out["shape"].append(list(p.pixels.shape) if p.pixels is not None else [0])
                out["status"].append("rejected" if p.rejected else "skipped" if p.skipped else "ok")
                out["stage"].append(p.rejected.stage if p.rejected else "")
                out["reason"].append(p.rejected.reason if p.rejected else "")
                out["t_prepare"].append(p.seconds)
                record = {f: getattr(p.record, f) for f in RECORD_FIELDS if f != "path"}
                out["meta"].append({**record, "tags": json.dumps(dict(p.record.tags))})
                if len(out["order"]) >= rows:
                    yield out
                    out = {k: [] for k in columns}
        if out["order"]:
            yield out
    finally:
        for zf in archives.values():
            zf.close()


class _Embed:
    """Stage 3: an actor that loads the encoder once and embeds the usable rows of each batch.

    ``pre``: the preprocessing (its model channels' mean/std are applied here, to the one-channel planes the
    CPU tasks send); ``transform``: the index's fitted normalisation as :func:`~indexer.vectors.transform_file.encode_transform`
    bytes (small, picklable), applied to every vector as the local engine applies it; ``None``: raw vectors.
    """

    def __init__(self, model: dict, threads: int, pre: dict, transform: bytes | None = None) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from indexer.core.config import ModelConfig
        from indexer.model.encoder import load_encoder

        hf_logging.set_verbosity_error()  # workers log to files; keep them to real problems
        torch.set_num_threads(threads)
        self.encoder = load_encoder(ModelConfig(**model))
        self.pre = PreprocessConfig.from_dict(pre)
        self.transform = None
        if transform is not None:
            from indexer.vectors.transform_file import decode_transform

            self.transform = decode_transform(transform)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        from indexer.model.preprocess import standardise

        t0 = time.perf_counter()
        ok = [i for i, s in enumerate(batch["status"]) if s == "ok"]
        vectors = np.zeros((len(batch["status"]), self.encoder.dim), dtype=np.float32)
        if ok:
            planes = torch.from_numpy(
                np.stack(
                    [np.frombuffer(batch["pixels"][i], np.float32).reshape(batch["shape"][i]) for i in ok]
                )
            )
            embedded = self.encoder.embed(standardise(planes, self.pre))
            vectors[ok] = embedded if self.transform is None else self.transform.apply(embedded)
        out = {k: batch[k] for k in ("order", "part", "id", "path", "status", "stage", "reason", "meta",
                                     "t_prepare")}  # fmt: skip
        out["vector"] = list(vectors)
        out["precision"] = [self.encoder.precision] * len(vectors)
        out["t_embed"] = np.full(len(vectors), (time.perf_counter() - t0) / len(vectors))
        return out


class _Write:
    """Stage 4: an actor that upserts batches into Redis (one connection, kept; ``redis`` None: none) and
    writes each batch as one parquet shard (fsspec). Writing is I/O, so the actor holds no CPU slot: it keeps
    pace even when the embedding actors hold every CPU, and embedded batches do not pile up in the object
    store."""

    def __init__(self, shard_url: str, redis: dict | None, held: frozenset[int] | None = None) -> None:
        self.shard_url = shard_url.rstrip("/")
        self.redis = redis
        self.held = held  # ids Redis may hold: upserted; the rest bulk-loaded (Plan.held)
        self._store = None

    def _redis_store(self, dim: int):
        if self._store is None:
            from indexer.stores.redis.store import RedisStore

            self._store = RedisStore(RedisConfig(**self.redis), dim=dim)
        return self._store

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import fsspec
        import pyarrow.parquet as pq

        from indexer.stores.faiss.store import records_to_table

        t0 = time.perf_counter()
        rows, ids = [], set()
        for i, status in enumerate(batch["status"]):
            # One id once per batch (rows come in listing order): add() refuses repeated ids, and a shard
            # holding one would fail every later run's import.
            if status == "ok" and int(batch["id"][i]) not in ids:
                ids.add(int(batch["id"][i]))
                rows.append(i)
        if rows:
            records = []
            for i in rows:
                meta = dict(batch["meta"][i])
                meta["tags"] = json.loads(meta.get("tags") or "{}")  # JSON in the rows: one Arrow type
                records.append(ImageRecord(id=int(batch["id"][i]), path=str(batch["path"][i]), **meta))
            vectors = np.stack([batch["vector"][i] for i in rows]).astype(np.float32)
            if self.redis is not None:
                store = self._redis_store(vectors.shape[1])
                write_batch(store, self.held, vectors, records)
                store.flush()  # an actor has no close hook: send the batch now, before its shard
            fs, root = fsspec.core.url_to_fs(self.shard_url)
            fs.makedirs(root, exist_ok=True)
            name = f"{root}/part-{uuid.uuid4().hex}.parquet"
            with fs.open(name + ".tmp", "wb") as f:
                pq.write_table(records_to_table(vectors, records), f)
            fs.mv(name + ".tmp", name)  # a reader never sees half a shard
        out = {k: batch[k] for k in ("order", "part", "id", "path", "status", "stage", "reason", "t_prepare",
                                     "t_embed", "precision")}  # fmt: skip
        out["t_write"] = np.full(len(batch["status"]), (time.perf_counter() - t0) / len(batch["status"]))
        return out
