"""``mae-index``: build, inspect and maintain an index. Each command parses options, builds the config
and calls one function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from indexer.cli_common import (
    faiss_search_options,
    handle_errors,
    redis_url_option,
    runtime_options,
    setup_logging,
    verbose_option,
)
from indexer.config import (
    DEFAULT_MODEL,
    BuildConfig,
    IntensityConfig,
    ModelConfig,
    PreprocessConfig,
    RedisConfig,
    SourceConfig,
)
from indexer.errors import ConfigError
from indexer.stores.faiss_kinds import parse_memory


def no_wait_option(fn):
    """``--no-wait``: fail at once when another writer holds the index folder (default: wait for it)."""
    return click.option(
        "--no-wait",
        is_flag=True,
        help="Fail at once if another build/sync/repair is writing this index (default: wait for it).",
    )(fn)


def _channels(value: str) -> tuple[str, ...]:
    return {"w1": ("w1",), "w2": ("w2",), "both": ()}[value]


def _parse_window(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError as e:
        raise ConfigError(f"--window takes LOW,HIGH (e.g. 0,4095), got {value!r}") from e
    return lo, hi


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-microscopy")
def main() -> None:
    """Index microscopy images (BBBC006 and alike) by Masked Autoencoder embeddings.

    \b
    Examples:
      mae-index build examples/bbbc006 --index runs/idx --model examples/models/mae-tiny-bbbc006
      mae-index info --index runs/idx
    """


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="ViT-MAE hub id or local folder.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "iqm"]), default="mean", show_default=True)
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Decode/preprocess threads.")
@runtime_options
@click.option("--channels", type=click.Choice(["w1", "w2", "both"]), default="both", show_default=True)
@click.option("--z", "z_slices", multiple=True, type=int, help="Only these z-slices (repeatable).")
@click.option(
    "--intensity",
    type=click.Choice(["percentile", "fixed", "dataset"]),
    default="percentile",
    show_default=True,
    help="Per-image percentiles, a fixed window, or one window from the whole data set.",
)
@click.option("--low", default=1.0, show_default=True, help="Low percentile (percentile/dataset).")
@click.option("--high", default=99.8, show_default=True, help="High percentile (percentile/dataset).")
@click.option("--window", default=None, help="Fixed window LOW,HIGH in counts (default 0,4095).")
@click.option("--resize", type=click.Choice(["square", "keep-aspect"]), default="square", show_default=True)
@redis_url_option
@click.option("--redis-index", default="mae", show_default=True, help="Redis index name (key prefix).")
@click.option("--redis-algorithm", type=click.Choice(["FLAT", "HNSW"], case_sensitive=False), default="FLAT",
              show_default=True, help="Redis vector index: exact FLAT or approximate HNSW.")  # fmt: skip
@click.option("--redis-dtype", type=click.Choice(["FLOAT32", "FLOAT16"], case_sensitive=False), default="FLOAT32",
              show_default=True, help="Type of the vectors stored in Redis.")  # fmt: skip
@click.option("--hnsw-m", default=16, show_default=True, type=int)
@click.option("--hnsw-ef-construction", default=200, show_default=True, type=int)
@click.option("--hnsw-ef-runtime", default=800, show_default=True, type=int)
@click.option("--strict", is_flag=True, help="Stop at the first unusable image instead of skipping it.")
@click.option("--force", is_flag=True, help="Re-embed images already in the index.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run here, or on Ray Data (pip install 'mae-microscopy[ray]').")  # fmt: skip
@click.option("--ray-address", default=None, help="auto or ray://HOST:PORT; default: a local Ray runtime.")
@click.option("--concurrency", default=None, type=int,
              help="Ray embedding actors [default: one per GPU slot, or per CPU without GPUs].")  # fmt: skip
@click.option("--num-gpus-per-worker", default=0.0, show_default=True, type=float)
@click.option("--threads-per-worker", default=None, type=int,
              help="Torch threads per Ray embedding actor [default: cluster CPUs / actors].")  # fmt: skip
@click.option("--writers", default=1, show_default=True, type=int, help="Ray write actors (Redis, shards).")
@click.option("--faiss-index", default=None, metavar="KIND",
              help="FAISS mirror index: Flat (exact), HNSW32, IVF{n},Flat, IVF{n},PQ{m} (e.g. IVF4096,PQ96) or "
                   "auto (from the count and --faiss-memory) [default: the folder's, Flat for a new one].")  # fmt: skip
@click.option("--faiss-memory", default="4G", show_default=True, help="Memory budget of auto's FAISS index.")
@click.option("--checkpoint-every", default=512, show_default=True, type=int,
              help="Images between durable FAISS checkpoints (a crash loses at most this many).")  # fmt: skip
@no_wait_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@verbose_option
@handle_errors
def build(data, index_dir, model, revision, pooling, batch_size, workers, device, precision, compile_model,
          channels, z_slices, intensity, low, high, window, resize, redis_url, redis_index, redis_algorithm,
          redis_dtype, hnsw_m, hnsw_ef_construction, hnsw_ef_runtime, strict, force, engine, ray_address, concurrency,
          num_gpus_per_worker, threads_per_worker, writers, faiss_index, faiss_memory, checkpoint_every, no_wait, fmt,
          no_progress, verbose):  # fmt: skip
    """Embed the images in DATA (folders, BBBC006 zips, TIFFs) into the index at --index.

    Images already in the index (same content) are skipped, so a re-run resumes. Unusable images are
    skipped and listed in INDEX/rejected.csv.

    \b
    Example (offline, shipped data and model):
      mae-index build examples/bbbc006 --index runs/idx --model examples/models/mae-tiny-bbbc006
    """
    setup_logging(verbose)
    config = BuildConfig(
        sources=SourceConfig(paths=tuple(data), channels=_channels(channels), z=tuple(z_slices)),
        index_dir=index_dir,
        model=ModelConfig(
            name=model,
            revision=revision,
            pooling=pooling,
            device=device,
            precision=precision,
            compile=compile_model,
        ),
        preprocess=PreprocessConfig(
            intensity=IntensityConfig(mode=intensity, low=low, high=high, window=_parse_window(window)),
            resize=resize,
        ),
        redis=_redis_config(
            redis_url,
            redis_index,
            required=False,
            algorithm=redis_algorithm,
            dtype=redis_dtype,
            m=hnsw_m,
            ef_construction=hnsw_ef_construction,
            ef_runtime=hnsw_ef_runtime,
        ),
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        force=force,
        flush_every=checkpoint_every,
        wait=not no_wait,
        faiss_index=faiss_index,
        faiss_memory=parse_memory(faiss_memory),
    )
    from indexer.build import run_build

    ray = None
    if engine == "ray":
        from indexer.ray_build import RayConfig

        ray = RayConfig(address=ray_address, concurrency=concurrency, num_gpus_per_worker=num_gpus_per_worker,
                        threads_per_worker=threads_per_worker, writers=writers)  # fmt: skip
    summary = run_build(config, progress=not no_progress, ray=ray)
    for line in summary.store_problems:
        click.echo(f"Error: after the build, {line}", err=True)
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict()))
    else:
        s = summary
        click.echo(
            f"Indexed {s.indexed} images in {s.seconds:.1f} s ({s.images_per_second:.1f} img/s, {s.runtime}); "
            f"skipped {s.skipped_existing} already indexed; rejected {len(s.rejected)}; "
            f"index now holds {s.index_count}.",
            err=True,
        )
        if s.stage_seconds:
            stages = ", ".join(f"{k.replace('_', '/')} {v:.1f} s" for k, v in s.stage_seconds.items())
            click.echo(f"Stage time, summed over workers: {stages}.", err=True)
        if s.recovered:
            click.echo(f"Recovered {s.recovered} images from the shards of an interrupted Ray run.", err=True)
        if s.rejected:
            click.echo(f"Rejected images are listed in {index_dir / 'rejected.csv'}.", err=True)
    sys.exit(1 if summary.store_problems else 0)


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def info(index_dir, fmt):
    """Show what an index holds and what it was built with."""
    from indexer.build import index_info

    d = index_info(index_dir)
    if fmt == "json":
        click.echo(json.dumps(d, indent=2))
        return
    m = d["manifest"]
    click.echo(f"index:      {index_dir}")
    click.echo(f"images:     {d['count']}")
    precision = m["model"].get("precision")
    built_at = f", built at {precision}" if precision else ""
    click.echo(
        f"model:      {m['model']['name']} (fingerprint {str(m['model'].get('fingerprint'))[:12]}{built_at})"
    )
    click.echo(f"dim:        {m['dim']}   pooling: {m['pooling']}")
    f = d["faiss"]
    tuned = ", ".join(f"{k} {f[k]}" for k in ("nprobe", "efSearch", "recall_at_10") if k in f)
    click.echo(f"faiss:      {f['index']}{' (' + tuned + ')' if tuned else ''}")
    pre = m["preprocess"]
    click.echo(f"preprocess: intensity {pre['intensity']}, resize {pre['resize']} to {pre['image_size']}")
    click.echo(f"rejected:   {d['rejected']}")
    for line in d["damage"]:
        click.echo(f"damaged:    {line}")
    for field, values in d["values"].items():
        click.echo(f"{field + ':':<11} {', '.join(map(str, values))}")


def _redis_config(redis_url: str | None, redis_index: str, required: bool = True, **kw) -> RedisConfig | None:
    if not redis_url:
        if required:
            raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
        return None
    return RedisConfig(url=redis_url, index_name=redis_index, **kw)


@main.command()
@click.option(
    "--index", "index_dir", required=True, type=click.Path(path_type=Path), help="FAISS mirror folder."
)
@redis_url_option
@click.option("--redis-index", default="mae", show_default=True)
@click.option("--sample", default=200, show_default=True, help="Vectors compared and used as queries.")
@click.option("-k", "k", default=10, show_default=True, help="k of the recall@k check.")
@click.option("--min-recall", default=0.99, show_default=True, help="Lowest recall@k of Redis that passes.")
@click.option("--min-mirror-recall", default=0.0, show_default=True,
              help="Lowest recall@k of the FAISS mirror's index against exact search that passes.")  # fmt: skip
@click.option("--seed", default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@faiss_search_options
@handle_errors
def verify(
    index_dir, redis_url, redis_index, sample, k, min_recall, min_mirror_recall, seed, fmt, nprobe, ef_search
):
    """Check an index for damage and, with --redis-url, that Redis and the FAISS mirror agree; exit 1 on
    any damage or divergence.

    Without Redis: every shard against its recorded size, rows and SHA-256, the snapshot, the manifest's
    checksum. With Redis also: the Redis schema, that every hash is indexed and has a sound vector, and
    counts, id sets, manifests, sampled vectors, and recall@k of Redis search against exact FAISS search.
    """
    from indexer.mirror import verify_stores
    from indexer.stores.faiss_store import FaissStore

    redis = _redis_config(redis_url, redis_index, required=False)
    mirror = FaissStore(index_dir, read_only=True, nprobe=nprobe, ef_search=ef_search)
    # The mirror's own index against exact search over its shards (1.0 for Flat, by construction).
    mirror_recall = mirror.measure_recall(k, sample) if not mirror.kind.exact else 1.0
    mirror_line = (
        f"recall@{k} of the faiss {mirror.kind.factory} index vs exact: {mirror_recall:.4f} "
        f"(min {min_mirror_recall}; {', '.join(f'{n} {v}' for n, v in mirror.search_settings.items() if n in ('nprobe', 'efSearch')) or 'exact'})"
    )
    mirror_ok = mirror_recall >= min_mirror_recall
    if redis is None:
        problems = mirror.check(full=True)
        ok = not problems and mirror_ok
        if fmt == "json":
            click.echo(json.dumps({"ok": ok, "count": mirror.count(), "damage": problems,
                                   "faiss_index": mirror.kind.factory, "mirror_recall_at_k": mirror_recall}))  # fmt: skip
        else:
            click.echo(f"images: {mirror.count()}")
            for line in problems:
                click.echo(f"damaged: {line}")
            click.echo(mirror_line)
            click.echo("OK" if ok else ("DAMAGED" if problems else "LOW RECALL"))
        sys.exit(0 if ok else 1)
    from indexer.stores.redis_store import RedisStore

    redis_store = RedisStore(redis)
    tol = 1e-3 if redis_store.config.dtype == "FLOAT16" else 1e-6
    report = verify_stores(redis_store, mirror, sample=sample, k=k, seed=seed, vector_tolerance=tol,
                           min_recall=min_recall, exact=mirror.exact_searcher())  # fmt: skip
    d = report.to_dict()
    d.update(faiss_index=mirror.kind.factory, mirror_recall_at_k=mirror_recall, ok=report.ok and mirror_ok)
    if fmt == "json":
        click.echo(json.dumps(d))
    else:
        for line in d["damage_primary"] + d["damage_mirror"]:
            click.echo(f"damaged: {line}")
        click.echo(f"counts: redis {d['count_primary']}, faiss {d['count_mirror']}")
        click.echo(
            f"ids missing: in redis {d['missing_in_primary_count']}, in faiss {d['missing_in_mirror_count']}"
        )
        click.echo(f"manifests equal: {d['manifest_equal']}")
        click.echo(
            f"sampled vectors: {d['sampled']}, max |diff| {d['max_vector_diff']:.3g} (tolerance {tol:g})"
        )
        click.echo(f"recall@{k} of redis vs exact faiss: {d['recall_at_k']:.4f} (min {min_recall})")
        click.echo(mirror_line)
        click.echo("OK" if d["ok"] else "DIVERGED")
    sys.exit(0 if d["ok"] else 1)


@main.command()
@click.option(
    "--index", "index_dir", required=True, type=click.Path(path_type=Path), help="FAISS mirror folder."
)
@redis_url_option
@click.option("--redis-index", default="mae", show_default=True)
@click.option("--allow-shrink", is_flag=True, help="Let the mirror lose images that Redis no longer has.")
@no_wait_option
@handle_errors
def sync(index_dir, redis_url, redis_index, allow_shrink, no_wait):
    """Rebuild the FAISS mirror at --index from Redis (e.g. on a second machine, or after damage).

    Refuses to delete images from the mirror that Redis lacks unless --allow-shrink; the old shards
    are compacted away only once the new mirror is verified against Redis.
    """
    from tqdm.auto import tqdm

    from indexer.mirror import sync_and_compact
    from indexer.stores.faiss_store import FaissStore
    from indexer.stores.redis_store import RedisStore

    source = RedisStore(_redis_config(redis_url, redis_index))
    manifest = source.read_manifest()
    if manifest is None:
        raise ConfigError(f"Redis index {redis_index!r} has no manifest: nothing was built into it")
    # A damaged mirror may be synced: the sync rewrites it from Redis.
    target = FaissStore(index_dir, dim=manifest["dim"], wait=not no_wait, allow_damage=True)
    try:
        with tqdm(total=source.count(), unit="vec", desc="sync") as bar:
            report = sync_and_compact(source, target, progress=lambda done: bar.update(done - bar.n),
                                      allow_shrink=allow_shrink)  # fmt: skip
    finally:
        target.close()
    click.echo(f"Mirrored {report.copied} vectors from Redis into {index_dir}"
               + (f" (deleted {report.deleted})" if report.deleted else "") + ".", err=True)  # fmt: skip
    if report.damaged_in_source:
        ids = report.damaged_in_source
        click.echo(f"Damaged in Redis (missing or corrupt vector), not copied: {len(ids)} images, ids {ids[:20]}; "
                   f"`mae-index repair --index {index_dir} --redis-url URL` rewrites them from the mirror.",
                   err=True)  # fmt: skip
        sys.exit(1)


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@redis_url_option
@click.option("--redis-index", default="mae", show_default=True)
@no_wait_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def repair(index_dir, redis_url, redis_index, no_wait, fmt):
    """Rebuild a damaged index folder from whatever is intact: its sound shards, Redis (--redis-url),
    and index.faiss. With Redis, hashes lost from Redis or with a missing or corrupt vector are rewritten
    from the folder.

    \b
    Example:
      mae-index verify --index runs/idx          # names the damaged part
      mae-index repair --index runs/idx --redis-url redis://127.0.0.1:6379/0
    """
    from indexer.repair import repair_index

    report = repair_index(index_dir, _redis_config(redis_url, redis_index, required=False), wait=not no_wait)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict()))
        return
    if not report.damage and not report.redis_rewritten:
        click.echo(f"Nothing to repair: {index_dir} is sound ({report.total} images).", err=True)
        return
    for line in report.damage:
        click.echo(f"damaged: {line}", err=True)
    click.echo(
        f"Rebuilt {index_dir}: {report.total} images ({report.from_shards} from sound shards, "
        f"{report.from_redis} from Redis, {report.from_snapshot} from index.faiss without metadata); old "
        f"shards moved to {index_dir / 'damaged'}.",
        err=True,
    )
    if report.redis_rewritten:
        click.echo(
            f"Rewrote {report.redis_rewritten} damaged or lost Redis hashes from the folder.", err=True
        )
    if report.from_snapshot:
        click.echo(
            f"{report.from_snapshot} images have their vector but no path or metadata: run the same "
            "`mae-index build` again to restore them.",
            err=True,
        )


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--wells", default="A01:B04", show_default=True, help="Wells: A01,B02 or a rectangle A01:B04.")
@click.option("--sites", default="1,2", show_default=True)
@click.option("--channels", default="1,2", show_default=True)
@click.option("--z", "z_spec", default="16", show_default=True, help="z-slices: 16 or 10,16,22 or 0-33.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int,
              help="Processes rendering sites in parallel (the files do not depend on it).")  # fmt: skip
@handle_errors
def synth(out, wells, sites, channels, z_spec, seed, workers):
    """Write a synthetic BBBC006 look-alike (real naming, 696x520 16-bit LZW TIFF, ground-truth CSV)."""
    from indexer.synthetic import SyntheticConfig, generate, well_range

    config = SyntheticConfig(
        out_dir=out,
        wells=well_range(wells),
        sites=_int_list(sites),
        channels=_int_list(channels),
        z_slices=_int_list(z_spec),
        seed=seed,
    )
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    s = generate(config, progress=True, workers=workers)
    click.echo(f"Wrote {s.n_images} images in {s.seconds:.1f} s; ground truth: {s.ground_truth}", err=True)


def _int_list(spec: str) -> tuple[int, ...]:
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError as e:
        raise ConfigError(f"expected numbers like 1,2 or 0-33, got {spec!r}") from e
    return tuple(out)


@main.command("init-model")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--size", type=click.Choice(["test", "tiny", "small"]), default="tiny", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@handle_errors
def init_model(out, size, seed):
    """Create a randomly initialised ViT-MAE (for tests, or to pretrain from) as a Hugging Face folder."""
    from indexer.model_presets import create_model

    create_model(out, size, seed)
    click.echo(f"Wrote a random-weight ViT-MAE ({size}) to {out}", err=True)


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model folder to write.")
@click.option("--from", "init_from", default=None, help="Continue from a ViT-MAE (hub id or folder).")
@click.option("--config", "size", type=click.Choice(["test", "tiny", "small"]), default=None,
              help="Train from scratch with this architecture (default tiny unless --from).")  # fmt: skip
@click.option("--epochs", default=20, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--steps-per-epoch", default=None, type=int, help="Default: one pass over the training images.")
@click.option("--mask-ratio", default=0.75, show_default=True, type=float)
@click.option("--lr", default=1.5e-4, show_default=True, type=float, help="Base LR per 256 images.")
@click.option("--warmup-epochs", default=2.0, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--channels", type=click.Choice(["w1", "w2", "both"]), default="both", show_default=True)
@click.option("--z", "z_slices", multiple=True, type=int, help="Only these z-slices (repeatable).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-resume", is_flag=True, help="Start over even if OUT/checkpoint exists.")
@verbose_option
@handle_errors
def pretrain(data, out, init_from, size, epochs, batch_size, steps_per_epoch, mask_ratio, lr, warmup_epochs,
             seed, channels, z_slices, device, no_resume, verbose):  # fmt: skip
    """MAE-pretrain a ViT-MAE on the images in DATA; write a folder `build --model` loads.

    Resumes from OUT/checkpoint when present (same loss curve as an uninterrupted run).

    \b
    Example:
      mae-index pretrain examples/synthetic --out runs/my-mae --config tiny --epochs 5
    """
    setup_logging(verbose)
    if init_from and size:
        raise ConfigError("give either --from (continue a model) or --config (from scratch), not both")
    from tqdm.auto import tqdm

    from indexer.pretrain import PretrainConfig
    from indexer.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        sources=SourceConfig(paths=tuple(data), channels=_channels(channels), z=tuple(z_slices)),
        out_dir=out,
        init=init_from or size or "tiny",
        epochs=epochs,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        mask_ratio=mask_ratio,
        lr=lr,
        warmup_epochs=warmup_epochs,
        seed=seed,
        resume=not no_resume,
        device=device,
    )
    bar = tqdm(desc="pretraining", unit="step")

    def tick(p: dict) -> None:
        bar.update(1)
        bar.set_postfix(epoch=p["epoch"], loss=f"{p['loss']:.4f}")

    try:
        log = run_pretrain(config, progress=tick)
    finally:
        bar.close()
    first, last = log["history"][0]["heldout_loss"], log["history"][-1]["heldout_loss"]
    click.echo(f"Held-out loss {first:.4f} -> {last:.4f}; model written to {out}", err=True)


@main.command()
@click.argument("dataset", type=click.Choice(["bbbc006"]))
@click.option("--z", "z_slices", multiple=True, type=int, default=(16,), show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@handle_errors
def fetch(dataset, z_slices, out):
    """Download BBBC006 z-slice zips from the Broad Bioimage Benchmark Collection (needs internet)."""
    from indexer.download import download_bbbc006

    for path in download_bbbc006(out, tuple(z_slices)):
        click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
