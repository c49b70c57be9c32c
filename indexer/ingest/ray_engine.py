"""The same build on a Ray cluster (Ray Data), for plates beyond one machine.

Stages, all reusing this project's modules (no second copy of the plan, the books, decoding,
preprocessing or the encoder):

1. the driver makes the same plan as the local engine (:func:`indexer.ingest.plan.make_plan`: listing
   with strict handling, manifest handshake, ids already in every store) and parses each path's
   metadata once;
2. CPU tasks read, hash, decode and preprocess (:func:`indexer.ingest.prepare.prepare_item`), opening
   each zip once per task; a bad file becomes a rejected row with its reason;
3. an actor class loads the encoder once per worker and embeds batches (``num_gpus`` per actor), then
   applies the index's fitted ``--normalize`` transform, if it has one, as the local engine does;
4. CPU tasks upsert each batch into Redis and write it as a parquet shard (the FAISS store's shard
   format) under ``<index>/ray-shards/``, or under ``<shard_url>/<index_uid>/`` for any fsspec URL
   (:func:`shard_root`: indexes that share a URL never see each other's shards);
5. the driver adds the shards to the FAISS mirror and flushes it atomically, so a failed worker never
   leaves half a FAISS index; a re-run first imports shards left by a killed run.

A first ``--normalize`` build needs every raw vector before it can write one (the transform is fitted on
them): its writers only stage raw shards under ``<shards>/raw/`` and touch no store; the driver then reads
them in listing order, fits, writes the transform and the fitted manifest to every store, then the
transformed vectors, all with the local engine's code (:func:`indexer.ingest.local.fit_and_write`), and
deletes the raw shards last. A failure or a kill at any point leaves no store holding a vector its
manifest's transform did not make, and the re-run uses the staged raw vectors instead of embedding them
again.

The driver keeps the books with the local engine's :class:`~indexer.ingest.plan.Ledger`, fed in listing
order, so both engines give the same summary. Rows reach the writers before the driver sees them, so
the duplicate rule is enforced after writing: a writer never writes one id twice in a batch, and the
driver re-writes the first-listed record of any content found twice (the vectors are the same).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.core.config import BuildConfig, PreprocessConfig, RedisConfig
from indexer.core.errors import ConfigError, MaeError
from indexer.core.records import RECORD_FIELDS, ImageRecord
from indexer.ingest.plan import BuildSummary, Ledger, make_plan, write_batch, write_rejected
from indexer.vectors.transform_file import encode_transform

#: What a file name says (the listing's metadata); ``source`` is what decoding finds, per image.
_NAME_FIELDS = tuple(f for f in RECORD_FIELDS if f not in ("path", "source"))

SHARD_DIR = "ray-shards"
RAW_DIR = "raw"
log = logging.getLogger(__name__)
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
    #: fsspec folder that may be shared by several indexes: each writes under <shard_url>/<index_uid>/
    #: (:func:`shard_root`); default <index>/ray-shards.
    shard_url: str | None = None

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


def _zip_member(path: str) -> tuple[str, str] | None:
    """``(archive, member)`` of a ``data.zip/member`` path, or ``None`` for a plain file."""
    cut = path.lower().find(".zip/")
    return (path[: cut + 4], path[cut + 5 :]) if cut >= 0 and not Path(path).is_file() else None


def _prepare_batch(batch: dict[str, np.ndarray], pre: dict, existing: frozenset[int]) -> dict[str, Any]:
    """Stage 2, a CPU task: read, hash, decode and preprocess each row with the local engine's code.

    Metadata comes from the driver (parsed once, as the local build parses it); each zip is opened once
    per task, not once per member.
    """
    import zipfile

    from indexer.core.records import ImageMeta
    from indexer.images.sources import SourceItem, file_path
    from indexer.ingest.prepare import prepare_item

    config = PreprocessConfig.from_dict(pre)
    out: dict[str, list] = {k: [] for k in ("order", "part", "id", "path", "pixels", "status", "stage", "reason",
                                            "t_prepare", "meta")}  # fmt: skip
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
            fields = {f: meta.get(f) for f in _NAME_FIELDS}
            tags = tuple(json.loads(meta.get("tags") or "{}").items())
            item = SourceItem(path, reader(path), ImageMeta(**fields, tags=tags))
            # One row per plane; ``part`` keeps a plane's place in its file: rows may come back out of order.
            for part, p in enumerate(prepare_item(item, config, existing, on_device=False)):
                out["order"].append(int(order))
                out["part"].append(part)
                out["id"].append(p.record.id)
                out["path"].append(p.record.path)
                out["pixels"].append(p.pixels.numpy() if p.pixels is not None else np.zeros((0,), np.float32))
                out["status"].append("rejected" if p.rejected else "skipped" if p.skipped else "ok")
                out["stage"].append(p.rejected.stage if p.rejected else "")
                out["reason"].append(p.rejected.reason if p.rejected else "")
                out["t_prepare"].append(p.seconds)
                record = {f: getattr(p.record, f) for f in RECORD_FIELDS if f != "path"}
                out["meta"].append({**record, "tags": json.dumps(dict(p.record.tags))})
    finally:
        for zf in archives.values():
            zf.close()
    return out


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
            planes = torch.from_numpy(np.stack([batch["pixels"][i] for i in ok]))
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


def shard_root(index_dir: Path, shard_url: str | None, manifest: dict | None) -> str | None:
    """Where the Ray shards of the index at ``index_dir`` (``manifest``: its manifest, ``None`` for a new
    folder) are written, looked for and deleted; its staged raw vectors go to ``<root>/raw``.

    By default ``<index>/ray-shards``: the folder's own, kept by its write lock. A custom ``shard_url`` may
    be shared by several indexes (one bucket for a team's builds, or a stale folder of another index), so
    each index keeps to ``<shard_url>/<index_uid>`` (the identity its manifest and its Redis index share):
    it imports, reuses and deletes only its own shards, and leaves another index's for that index's
    re-run. ``None``: a custom URL and an index without a uid yet (a new folder), which has none there.
    """
    from indexer.stores.binding import UID_KEY

    if shard_url is None:
        return str(Path(index_dir) / SHARD_DIR)
    uid = (manifest or {}).get(UID_KEY)
    return f"{shard_url.rstrip('/')}/{uid}" if uid else None


def _shard_files(url: str) -> tuple[Any, list[str]]:
    """The filesystem of ``url`` and its finished parquet shards, sorted (none when the folder is absent)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return fs, []
    return fs, sorted(p for p in fs.ls(root, detail=False) if str(p).endswith(".parquet"))


def warn_loose_shards(shard_url: str) -> list[str]:
    """Log one warning for finished shards lying directly under a custom ``shard_url``, and return them.

    Builds before shards were kept per index (:func:`shard_root`) left a killed run's shards there. No
    index imports them now, so their images would be embedded again without a word; which index wrote
    them is not recorded in them, so they are reported, not guessed at.
    """
    _, loose = _shard_files(shard_url)
    if loose:
        log.warning(
            "%d Ray shard(s) lie directly under %s (e.g. %s), left by a build from before shards were "
            "kept per index; no build imports them, so their images are embedded again. To reuse them, "
            "move them under <shard_url>/<index_uid>/ (index_uid: the manifest of the index that wrote "
            "them); otherwise delete them.",
            len(loose), shard_url, Path(str(loose[0])).name,
        )  # fmt: skip
    return loose


def import_shards(shard_url: str, faiss_store) -> int:
    """Add every finished shard under ``shard_url`` to the FAISS store, flush, then delete the shards."""
    import pyarrow.parquet as pq

    from indexer.stores.faiss.store import table_to_records

    fs, paths = _shard_files(shard_url)  # not the raw/ folder below it: a folder is not a shard
    if not paths:
        return 0
    n = 0
    for p in paths:
        with fs.open(p, "rb") as f:
            ids, vectors, records, deleted = table_to_records(pq.read_table(f))
        # A shard written before writers kept one row per id may repeat one (same content, same vector).
        _, first = np.unique(ids, return_index=True)
        if len(first) < len(ids):
            first = np.sort(first)
            vectors, records = vectors[first], [records[i] for i in first]
        faiss_store.add(vectors, records)
        n += len(records)
    faiss_store.flush()  # atomic: the mirror holds all of these shards or none
    for p in paths:
        fs.rm(p)
    return n


def _first_listed(ledger: Ledger, record: ImageRecord, items: dict[str, Any]) -> ImageRecord:
    """The record the duplicate rule chose for ``record``'s content: the first-listed path's, with the
    metadata the listing parsed (``items``: path -> listed item) and the ``source`` decoding found.

    A plane of a stack (path ``file#i``) is not a listed item: its record (one whole record, the one the
    shard holds) is kept as it is.
    """
    from indexer.ingest.prepare import image_record

    path = ledger.first_path(record.id)
    if path not in items:
        return record
    return replace(image_record(items[path], record.id), source=record.source)


def _rewrite_first_listed(stores: list, ledger: Ledger, duplicated: set[int], items: dict[str, Any]) -> None:
    """Make each store hold the first-listed record of every content id found more than once.

    Writers write whichever duplicate reached them last; the vectors are the same (same bytes), only
    the record (path, metadata) differs, so the record the duplicate rule chose is written again
    (:func:`_first_listed`) through ``add``: each writer bulk-loaded its copy as new, so Redis may hold a
    mix of two records' fields until then.
    """
    ids = np.array(sorted(duplicated), dtype=np.int64)
    if not len(ids):
        return
    vectors = stores[0].get_vectors(ids)
    # The listing knows names, not provenance: keep the ``source`` decoding recorded for each id.
    stored = {r.id: r for r in stores[0].get(ids.tolist()) if r is not None}
    records = [_first_listed(ledger, stored[int(i)], items) for i in ids]
    for store in stores:
        store.add(vectors, records)
        store.flush()


def staged_ids(raw_url: str) -> set[int]:
    """The ids of the raw vectors staged under ``raw_url`` (only the id column is read)."""
    import pyarrow.parquet as pq

    fs, paths = _shard_files(raw_url)
    ids: set[int] = set()
    for p in paths:
        with fs.open(p, "rb") as f:
            ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return ids


def _read_staged(raw_url: str, order: list[int], ledger: Ledger, items: dict[str, Any]):
    """The staged raw vectors of ``order`` (ids, in listing order) and their first-listed records.

    One array of ``len(order)`` vectors, filled shard by shard: the raw vectors a fit needs, no more
    (rows of other ids, or a second copy of one, are dropped as each shard is read).

    Raises
    ------
    MaeError
        A staged shard vanished, so some vectors are missing (a re-run embeds them again).
    """
    import pyarrow.parquet as pq

    from indexer.stores.faiss.store import table_to_records

    position = {image_id: n for n, image_id in enumerate(order)}
    vectors: np.ndarray | None = None
    records: list[ImageRecord | None] = [None] * len(order)
    fs, paths = _shard_files(raw_url)
    for p in paths:
        with fs.open(p, "rb") as f:
            ids, shard_vectors, shard_records, _ = table_to_records(pq.read_table(f))
        for i, image_id in enumerate(ids.tolist()):
            n = position.get(image_id)
            if n is None or records[n] is not None:
                continue
            if vectors is None:
                vectors = np.empty((len(order), shard_vectors.shape[1]), dtype=np.float32)
            vectors[n] = shard_vectors[i]
            records[n] = _first_listed(ledger, shard_records[i], items)
    missing = sum(r is None for r in records)
    if missing or vectors is None:
        raise MaeError(
            f"{missing} of the {len(order)} raw vectors staged under {raw_url} are missing (a shard was "
            "removed during the build): run the same build again; it embeds them anew"
        )
    return vectors, records


def _write_staged(
    config: BuildConfig, plan, stores: list, raw_url: str, order: list[int], ledger: Ledger, items: dict
) -> float:
    """Write the staged raw vectors of ``order`` to every store, through the writer both engines use
    (:class:`indexer.ingest.writer.StoreWriter`).

    A first ``--normalize`` build fits on them first (:func:`indexer.ingest.local.fit_and_write`: the
    transform and the fitted manifest reach every store before any vector); an index already fitted
    applies its transform (:func:`indexer.ingest.writer.queue_vectors`). The raw shards are deleted only
    once every store is flushed, so a failure at any point leaves them for the re-run. Returns the
    seconds spent writing.

    Raises
    ------
    ConfigError
        The ``--fit-on`` subset holds fewer than 2 of the images (as the local engine).
    """
    from indexer.ingest.local import fit_and_write
    from indexer.ingest.writer import StoreWriter, queue_vectors

    held = [_read_staged(raw_url, order, ledger, items)]  # fit_and_write empties it once it is written
    writer = StoreWriter(stores, config.flush_every, plan.held)
    try:
        if plan.fit is not None:
            fit_and_write(plan.fit, held, stores, writer, config.batch_size)
        else:
            queue_vectors(writer, *held.pop(), plan.transform, config.batch_size)
    finally:
        writer.close()
    return writer.seconds


def _drop_staged(raw_url: str) -> None:
    """Delete the raw shards (every vector they hold is in every store, or not wanted by this listing)."""
    fs, paths = _shard_files(raw_url)
    for p in paths:
        fs.rm(p)


def run_ray_build(config: BuildConfig, ray_config: RayConfig, stores: list, encoder) -> BuildSummary:
    """Run ``config`` on Ray. ``stores`` are the driver's open stores (FAISS first, Redis optional);
    ``encoder`` is loaded on the driver to resolve preprocessing, precision and the manifest.

    Raises
    ------
    DecodeError
        In strict mode, for the first listing problem (before Ray starts) or unusable image.
    ConfigError
        A first ``--normalize`` build whose ``--fit-on`` subset holds fewer than 2 images (the raw vectors
        stay staged: a re-run with another subset uses them).
    MaeError
        When Ray fails.
    """
    ray = _ray()
    t0 = time.perf_counter()
    if ray_config.shard_url is not None:
        warn_loose_shards(ray_config.shard_url)
    own = shard_root(config.index_dir, ray_config.shard_url, stores[0].read_manifest())
    recovered = import_shards(own, stores[0]) if own else 0  # shards a killed run finished, never imported
    ledger = Ledger(config.strict)
    summary = ledger.summary
    plan = make_plan(config, stores, encoder, ledger)
    # The plan gave a new folder its manifest, and with it the uid its shards are kept under.
    shard_url = shard_root(config.index_dir, ray_config.shard_url, stores[0].read_manifest())
    if shard_url is None:
        raise MaeError(f"the index at {config.index_dir} has no index_uid to keep its Ray shards under")
    # --normalize: a first build (plan.fit) has its workers stage raw vectors under raw_url and write no
    # store; the driver fits on them, then writes. Raw vectors staged by a run that stopped before every
    # store held them are used, not embedded again (a normalised index only; its transform makes them
    # what a fresh embedding would give).
    raw_url = f"{shard_url.rstrip('/')}/{RAW_DIR}"
    normalized = plan.fit is not None or plan.transform is not None
    staged = staged_ids(raw_url) if normalized else set()
    transform = encode_transform(plan.transform) if plan.transform is not None else None
    skip = plan.existing | staged if staged else plan.existing  # no copy of a large set when none is staged

    stage_seconds = dict.fromkeys(_STAGE_COLUMNS.values(), 0.0)
    device = "cuda" if ray_config.num_gpus_per_worker > 0 else "cpu"
    # Workers on the driver's kind of device use the precision the driver resolved (the manifest's).
    precision = encoder.precision if encoder.device.type == device else config.model.precision
    model = asdict(replace(config.model, device=device, precision=precision))
    redis = asdict(config.redis) if config.redis is not None else None
    # The driver's stores are the FAISS folder, then Redis (open_stores' order).
    redis_held = plan.held[1] if redis is not None and len(plan.held) > 1 else None
    # (listing order, plane, id, path, status) of usable and skipped rows
    rows: list[tuple[int, int, int, str, str]] = []
    worker_precision: set[str] = set()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_config.address, num_cpus=ray_config.num_cpus if ray_config.address is None else None,
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)  # fmt: skip
    try:
        items = [{"order": n, "path": it.path,
                  "meta": {**{f: getattr(it.meta, f) for f in _NAME_FIELDS},
                           "tags": json.dumps(dict(it.meta.tags))}}
                 for n, it in enumerate(plan.items)]  # fmt: skip
        ds = ray.data.from_items(items)
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"pre": plan.preprocess.to_dict(),
                                                       "existing": skip},
                            batch_size=config.batch_size)  # fmt: skip
        actors, threads = ray_config.actors_and_threads(ray.cluster_resources())
        ds = ds.map_batches(_Embed, fn_constructor_args=(model, threads, plan.preprocess.to_dict(), transform), batch_size=config.batch_size,
                            concurrency=actors, num_gpus=ray_config.num_gpus_per_worker)  # fmt: skip
        write_to = (raw_url, None, None) if plan.fit is not None else (shard_url, redis, redis_held)
        ds = ds.map_batches(_Write, fn_constructor_args=write_to, batch_size=config.batch_size,
                            concurrency=ray_config.writers, num_cpus=0)  # fmt: skip
        for row in ds.iter_rows():
            for column, stage in _STAGE_COLUMNS.items():
                stage_seconds[stage] += float(row[column])
            if row["status"] == "rejected":
                ledger.reject(row["path"], row["stage"], row["reason"])
            else:
                rows.append((int(row["order"]), int(row["part"]), int(row["id"]), row["path"], row["status"]))
                if row["status"] == "ok":
                    worker_precision.add(str(row["precision"]))
    except ray.exceptions.RayError as e:
        raise MaeError(f"the Ray build failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        if started_here:
            ray.shutdown()
    # The books in listing order, as the local engine keeps them, so both give the same summary.
    seen_twice: set[int] = set()
    from_raw: list[int] = []  # admitted ids whose raw vectors are staged, in listing order (a fit's order)
    for _, _, image_id, path, status in sorted(rows):
        if status == "skipped" and (image_id in plan.existing or image_id not in staged):
            ledger.skip_existing()
        elif ledger.admit(image_id, path):
            if plan.fit is not None or status == "skipped":
                from_raw.append(image_id)
        elif status == "ok" and plan.fit is None:
            seen_twice.add(image_id)
    import_shards(shard_url, stores[0])
    listed = {it.path: it for it in plan.items} if seen_twice or from_raw else {}
    if seen_twice:
        _rewrite_first_listed(stores, ledger, seen_twice, listed)
    if from_raw:
        stage_seconds["write"] += _write_staged(config, plan, stores, raw_url, from_raw, ledger, listed)
    if normalized:
        _drop_staged(raw_url)
    # Rejections were appended as rows arrived; list them in listing order, as the local engine does.
    order = {it.path: n for n, it in enumerate(plan.items)}
    summary.rejected.sort(key=lambda r: (r.stage != "list", order.get(r.path, -1)))
    write_rejected(config.index_dir, summary.rejected)
    summary.runtime = f"ray {device} {'/'.join(sorted(worker_precision)) or precision}"
    summary.seconds = time.perf_counter() - t0
    summary.stage_seconds = stage_seconds
    summary.recovered = recovered + sum(image_id in staged for image_id in from_raw)
    summary.index_count = stores[0].count()
    return summary
