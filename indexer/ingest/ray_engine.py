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

The stages live in :mod:`indexer.ingest.ray_stages` (workers) and :mod:`indexer.ingest.ray_shards` (the
shard folders); :func:`run_ray_build` runs them in named steps.

The driver keeps the books with the local engine's :class:`~indexer.ingest.plan.Ledger`, fed in listing
order, so both engines give the same summary. Rows reach the writers before the driver sees them, so
the duplicate rule is enforced after writing: a writer never writes one id twice in a batch, and the
driver re-writes the first-listed record of any content found twice (the vectors are the same).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from indexer.core.config import BuildConfig
from indexer.core.errors import ConfigError, MaeError
from indexer.ingest.plan import BuildSummary, Ledger, Plan, make_plan, write_rejected
from indexer.ingest.ray_shards import (
    RAW_DIR,
    drop_staged,
    first_listed,
    import_shards,
    read_staged,
    shard_root,
    staged_ids,
    warn_loose_shards,
)
from indexer.ingest.ray_stages import NAME_FIELDS, STAGE_COLUMNS, _Embed, _prepare_batch, _Write
from indexer.vectors.transform_file import encode_transform


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


def _rewrite_first_listed(stores: list, ledger: Ledger, duplicated: set[int], items: dict[str, Any]) -> None:
    """Make each store hold the first-listed record of every content id found more than once.

    Writers write whichever duplicate reached them last; the vectors are the same (same bytes), only
    the record (path, metadata) differs, so the record the duplicate rule chose is written again
    (:func:`~indexer.ingest.ray_shards.first_listed`) through ``add``: each writer bulk-loaded its copy
    as new, so Redis may hold a mix of two records' fields until then.
    """
    ids = np.array(sorted(duplicated), dtype=np.int64)
    if not len(ids):
        return
    vectors = stores[0].get_vectors(ids)
    # The listing knows names, not provenance: keep the ``source`` decoding recorded for each id.
    stored = {r.id: r for r in stores[0].get(ids.tolist()) if r is not None}
    records = [first_listed(ledger, stored[int(i)], items) for i in ids]
    for store in stores:
        store.add(vectors, records)
        store.flush()


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

    held = [read_staged(raw_url, order, ledger, items)]  # fit_and_write empties it once it is written
    writer = StoreWriter(stores, config.flush_every, plan.held)
    try:
        if plan.fit is not None:
            fit_and_write(plan.fit, held, stores, writer, config.batch_size)
        else:
            queue_vectors(writer, *held.pop(), plan.transform, config.batch_size)
    finally:
        writer.close()
    return writer.seconds


@dataclass(frozen=True)
class _Run:
    """What one Ray run settled before its workers start: where they write, what they skip, and how they
    embed."""

    shard_url: str  # this index's shard folder (shard_root)
    raw_url: str  # where a --normalize build stages raw vectors
    staged: set[int]  # ids whose raw vectors a stopped run staged (a normalised index only)
    skip: frozenset[int]  # ids the prepare tasks skip: in every store, or staged
    transform: bytes | None  # the index's fitted transform, for the embedding actors
    device: str
    precision: str
    model: dict[str, Any]  # the workers' ModelConfig, as a dict
    redis: dict[str, Any] | None  # the writers' RedisConfig, as a dict (None: no Redis)
    redis_held: frozenset[int] | None  # ids Redis may hold (Plan.held)
    normalized: bool  # the index has, or this build fits, a --normalize transform


@dataclass
class _Streamed:
    """What the driver took from the rows the workers sent back."""

    rows: list[tuple[int, int, int, str, str]] = field(default_factory=list)  # order, plane, id, path, status
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(STAGE_COLUMNS.values(), 0.0)
    )
    precision: set[str] = field(default_factory=set)  # the workers' precisions


def _recover(config: BuildConfig, ray_config: RayConfig, faiss_store) -> int:
    """Step 1: import the shards a killed run finished but never imported; return how many images."""
    if ray_config.shard_url is not None:
        warn_loose_shards(ray_config.shard_url)
    own = shard_root(config.index_dir, ray_config.shard_url, faiss_store.read_manifest())
    return import_shards(own, faiss_store) if own else 0


def _settle_run(config: BuildConfig, ray_config: RayConfig, plan: Plan, stores: list, encoder) -> _Run:
    """Step 3: the shard folders (the plan gave a new folder its manifest, and with it the uid its shards
    are kept under), the raw vectors already staged, and the workers' model and stores."""
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
    device = "cuda" if ray_config.num_gpus_per_worker > 0 else "cpu"
    # Workers on the driver's kind of device use the precision the driver resolved (the manifest's).
    precision = encoder.precision if encoder.device.type == device else config.model.precision
    redis = asdict(config.redis) if config.redis is not None else None
    return _Run(
        shard_url=shard_url,
        raw_url=raw_url,
        staged=staged,
        skip=plan.existing | staged
        if staged
        else plan.existing,  # no copy of a large set when none is staged
        transform=encode_transform(plan.transform) if plan.transform is not None else None,
        device=device,
        precision=precision,
        model=asdict(replace(config.model, device=device, precision=precision)),
        redis=redis,
        # The driver's stores are the FAISS folder, then Redis (open_stores' order).
        redis_held=plan.held[1] if redis is not None and len(plan.held) > 1 else None,
        normalized=normalized,
    )


def _stream(
    ray, config: BuildConfig, ray_config: RayConfig, plan: Plan, run: _Run, ledger: Ledger
) -> _Streamed:
    """Step 4: run the worker stages on Ray (prepare, embed, write) and take their rows as they come:
    rejections go to the ledger, the rest are kept for the books."""
    streamed = _Streamed()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_config.address, num_cpus=ray_config.num_cpus if ray_config.address is None else None,
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)  # fmt: skip
    try:
        items = [{"order": n, "path": it.path,
                  "meta": {**{f: getattr(it.meta, f) for f in NAME_FIELDS},
                           "tags": json.dumps(dict(it.meta.tags))}}
                 for n, it in enumerate(plan.items)]  # fmt: skip
        ds = ray.data.from_items(items)
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"pre": plan.preprocess.to_dict(),
                                                      "existing": run.skip, "rows": config.batch_size},
                            batch_size=config.batch_size)  # fmt: skip
        actors, threads = ray_config.actors_and_threads(ray.cluster_resources())
        ds = ds.map_batches(_Embed, fn_constructor_args=(run.model, threads, plan.preprocess.to_dict(), run.transform),
                            batch_size=config.batch_size, concurrency=actors,
                            num_gpus=ray_config.num_gpus_per_worker)  # fmt: skip
        write_to = (
            (run.raw_url, None, None) if plan.fit is not None else (run.shard_url, run.redis, run.redis_held)
        )
        ds = ds.map_batches(_Write, fn_constructor_args=write_to, batch_size=config.batch_size,
                            concurrency=ray_config.writers, num_cpus=0)  # fmt: skip
        for row in ds.iter_rows():
            for column, stage in STAGE_COLUMNS.items():
                streamed.stage_seconds[stage] += float(row[column])
            if row["status"] == "rejected":
                ledger.reject(row["path"], row["stage"], row["reason"])
            else:
                streamed.rows.append(
                    (int(row["order"]), int(row["part"]), int(row["id"]), row["path"], row["status"])
                )
                if row["status"] == "ok":
                    streamed.precision.add(str(row["precision"]))
    except ray.exceptions.RayError as e:
        raise MaeError(f"the Ray build failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        if started_here:
            ray.shutdown()
    return streamed


def _keep_books(rows: list[tuple[int, int, int, str, str]], plan: Plan, staged: set[int], ledger: Ledger):
    """Step 5: the books in listing order, as the local engine keeps them, so both give the same summary.

    Returns the content ids a writer wrote for a second listed path (their first-listed record is written
    again), and the admitted ids whose raw vectors are staged, in listing order (a fit's order).
    """
    seen_twice: set[int] = set()
    from_raw: list[int] = []
    for _, _, image_id, path, status in sorted(rows):
        if status == "skipped" and (image_id in plan.existing or image_id not in staged):
            ledger.skip_existing()
        elif ledger.admit(image_id, path):
            if plan.fit is not None or status == "skipped":
                from_raw.append(image_id)
        elif status == "ok" and plan.fit is None:
            seen_twice.add(image_id)
    return seen_twice, from_raw


def _write_results(
    config: BuildConfig,
    plan: Plan,
    stores: list,
    run: _Run,
    ledger: Ledger,
    seen_twice: set[int],
    from_raw: list[int],
) -> float:
    """Step 6: import this run's shards into the FAISS mirror, re-write the first-listed record of each
    duplicate, write the staged raw vectors (fitting first, for a first --normalize build), then delete
    them. Returns the seconds spent writing staged vectors."""
    import_shards(run.shard_url, stores[0])
    listed = {it.path: it for it in plan.items} if seen_twice or from_raw else {}
    if seen_twice:
        _rewrite_first_listed(stores, ledger, seen_twice, listed)
    seconds = 0.0
    if from_raw:
        seconds = _write_staged(config, plan, stores, run.raw_url, from_raw, ledger, listed)
    if run.normalized:
        drop_staged(run.raw_url)
    return seconds


def _finish_summary(
    config: BuildConfig, plan: Plan, run: _Run, ledger: Ledger, streamed: _Streamed, recovered: int,
    from_raw: list[int], faiss_store, t0: float,
) -> BuildSummary:  # fmt: skip
    """Step 7: rejections in listing order (as the local engine lists them, in rejected.csv) and the
    summary's runtime, timings and counts."""
    summary = ledger.summary
    order = {it.path: n for n, it in enumerate(plan.items)}
    summary.rejected.sort(key=lambda r: (r.stage != "list", order.get(r.path, -1)))
    write_rejected(config.index_dir, summary.rejected)
    summary.runtime = f"ray {run.device} {'/'.join(sorted(streamed.precision)) or run.precision}"
    summary.seconds = time.perf_counter() - t0
    summary.stage_seconds = streamed.stage_seconds
    summary.recovered = recovered + sum(image_id in run.staged for image_id in from_raw)
    summary.index_count = faiss_store.count()
    return summary


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
    recovered = _recover(config, ray_config, stores[0])
    ledger = Ledger(config.strict)
    plan = make_plan(config, stores, encoder, ledger)  # step 2: the local engine's plan
    run = _settle_run(config, ray_config, plan, stores, encoder)
    streamed = _stream(ray, config, ray_config, plan, run, ledger)
    seen_twice, from_raw = _keep_books(streamed.rows, plan, run.staged, ledger)
    streamed.stage_seconds["write"] += _write_results(config, plan, stores, run, ledger, seen_twice, from_raw)
    return _finish_summary(config, plan, run, ledger, streamed, recovered, from_raw, stores[0], t0)
