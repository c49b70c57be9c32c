"""``mae-index``: build, inspect and maintain an index. Each command parses options, builds the config
and calls one function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from indexer.cli_common import (
    handle_errors,
    redis_url_option,
    require_extra,
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
from indexer.stores.binding import describe_identity, redis_record
from indexer.stores.manifest import read_folder_manifest, resolve_model_name


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
@click.option("--model", default=None,
              help=f"ViT-MAE hub id or local folder [default: an existing index's own, else {DEFAULT_MODEL}].")  # fmt: skip
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "iqm"]), default=None,
              help="[default: an existing index's own, else mean]")  # fmt: skip
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Decode/preprocess threads.")
@runtime_options
@click.option("--channels", type=click.Choice(["w1", "w2", "both"]), default="both", show_default=True)
@click.option("--z", "z_slices", multiple=True, type=int, help="Only these z-slices (repeatable).")
@click.option("--metadata", "metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV or parquet table: path -> plate, well, site, channel, z; other columns become tags.")  # fmt: skip
@click.option(
    "--intensity",
    type=click.Choice(["percentile", "fixed", "dataset"]),
    default=None,
    help="Per-image percentiles, a fixed window, or one window from the whole data set "
    "[default: an existing index's own, else percentile].",
)
@click.option("--low", default=None, type=float, help="Low percentile (percentile/dataset) [default: 1].")
@click.option(
    "--high", default=None, type=float, help="High percentile (percentile/dataset) [default: 99.8]."
)
@click.option("--window", default=None, help="Fixed window LOW,HIGH in the images' units (default 0,4095).")
@click.option("--resize", type=click.Choice(["square", "keep-aspect"]), default=None,
              help="[default: an existing index's own, else square]")  # fmt: skip
@redis_url_option
@click.option("--redis-index", default=None,
              help="Redis index name (key prefix) [default: the folder's own, recorded in its manifest; "
                   "a new folder gets mae-<folder>-<hash>].")  # fmt: skip
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
@click.option("--checkpoint-every", default=512, show_default=True, type=int,
              help="Images between durable FAISS checkpoints (a crash loses at most this many).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@verbose_option
@handle_errors
def build(data, index_dir, model, revision, pooling, batch_size, workers, device, precision, compile_model,
          channels, z_slices, metadata, intensity, low, high, window, resize, redis_url, redis_index, redis_algorithm,
          redis_dtype, hnsw_m, hnsw_ef_construction, hnsw_ef_runtime, strict, force, engine, ray_address, concurrency,
          num_gpus_per_worker, threads_per_worker, writers, checkpoint_every, fmt, no_progress, verbose):  # fmt: skip
    """Embed the images in DATA (folders, BBBC006 zips, TIFFs) into the index at --index.

    Images already in the index (same content) are skipped, so a re-run resumes. Unusable images are
    skipped and listed in INDEX/rejected.csv.

    \b
    Example (offline, shipped data and model):
      mae-index build examples/bbbc006 --index runs/idx --model examples/models/mae-tiny-bbbc006
    """
    setup_logging(verbose)
    if engine == "ray":
        require_extra("ray")  # before the model loads or a folder is written
    from indexer.build import redis_config_for, run_build

    # A build into an existing index takes what the user did not give from its manifest, so a re-run
    # needs no flags (and the model default, a hub id, never replaces a local model offline).
    resume = resume_settings(read_folder_manifest(index_dir), index_dir)
    if model is None and revision is None:
        model, revision = resume.get("model", DEFAULT_MODEL), resume.get("revision")
    if intensity is None and low is None and high is None and window is None:
        inten = resume.get("intensity", IntensityConfig())
    else:
        inten = IntensityConfig(mode=intensity or "percentile", low=1.0 if low is None else low,
                                high=99.8 if high is None else high, window=_parse_window(window))  # fmt: skip
    config = BuildConfig(
        sources=SourceConfig(
            paths=tuple(data), channels=_channels(channels), z=tuple(z_slices), metadata=metadata
        ),  # fmt: skip
        index_dir=index_dir,
        model=ModelConfig(
            name=model,
            revision=revision,
            pooling=pooling or resume.get("pooling", "mean"),
            device=device,
            precision=precision,
            compile=compile_model,
        ),
        preprocess=PreprocessConfig(intensity=inten, resize=resize or resume.get("resize", "square")),
        redis=redis_config_for(
            index_dir,
            redis_url,
            redis_index,
            writing=True,
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
    )
    ray = None
    if engine == "ray":
        from indexer.ray_build import RayConfig

        ray = RayConfig(address=ray_address, concurrency=concurrency, num_gpus_per_worker=num_gpus_per_worker,
                        threads_per_worker=threads_per_worker, writers=writers)  # fmt: skip
    summary = run_build(config, progress=not no_progress, ray=ray)
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
        click.echo("Stores: " + "; ".join(describe_identity(i) for i in s.stores) + ".", err=True)
        if s.stage_seconds:
            stages = ", ".join(f"{k.replace('_', '/')} {v:.1f} s" for k, v in s.stage_seconds.items())
            click.echo(f"Stage time, summed over workers: {stages}.", err=True)
        if s.recovered:
            click.echo(f"Recovered {s.recovered} images from the shards of an interrupted Ray run.", err=True)
        if s.rejected:
            click.echo(f"Rejected images are listed in {index_dir / 'rejected.csv'}.", err=True)
    sys.exit(0)


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
    pre = m["preprocess"]
    click.echo(f"preprocess: intensity {pre['intensity']}, resize {pre['resize']} to {pre['image_size']}")
    click.echo(f"rejected:   {d['rejected']}")
    record = m.get("redis")
    click.echo(
        f"redis:      {describe_identity({'store': 'redis', **record}) if record else 'none recorded'}"
    )
    for field, values in d["values"].items():
        click.echo(f"{field + ':':<11} {', '.join(map(str, values))}")


def resume_settings(manifest: dict | None, index_dir: Path) -> dict:
    """What a build into an existing index takes from its manifest when the flags do not say:
    model (found from here, see resolve_model_name), revision, pooling, intensity and resize."""
    if manifest is None:
        return {}
    inten = dict(manifest["preprocess"]["intensity"])
    if inten.get("window") is not None:
        inten["window"] = tuple(inten["window"])
    if inten.get("mode") == "dataset":
        inten["window"] = None  # recomputed only for a new index; the build reuses the stored one
    return {
        "model": resolve_model_name(manifest, index_dir),
        "revision": manifest["model"].get("revision"),
        "pooling": manifest["pooling"],
        "intensity": IntensityConfig(**inten),
        "resize": manifest["preprocess"]["resize"],
    }


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
@click.option("--redis-index", default=None, help="[default: the one the folder records]")
@click.option("--sample", default=200, show_default=True, help="Vectors compared and used as queries.")
@click.option("-k", "k", default=10, show_default=True, help="k of the recall@k check.")
@click.option("--min-recall", default=0.99, show_default=True, help="Lowest recall@k that passes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def verify(index_dir, redis_url, redis_index, sample, k, min_recall, seed, fmt):
    """Check that Redis and the FAISS mirror agree; exit 1 on any divergence.

    Compares counts, id sets, manifests, sampled vectors, and recall@k of Redis search against exact
    FAISS search on sampled queries.
    """
    from indexer.build import check_folder_pair, open_stores, redis_config_for
    from indexer.mirror import verify_stores

    if not redis_url:
        raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
    redis = redis_config_for(index_dir, redis_url, redis_index, writing=False)
    faiss_store, redis_store = open_stores(index_dir, redis, read_only=True)
    # Another folder's Redis index is refused by index uid; counts and ids are what verify reports.
    check_folder_pair(index_dir, redis_store, faiss_store, by_count=False)
    tol = 1e-3 if redis_store.config.dtype == "FLOAT16" else 1e-6
    report = verify_stores(redis_store, faiss_store, sample=sample, k=k, seed=seed,
                           vector_tolerance=tol, min_recall=min_recall)  # fmt: skip
    d = report.to_dict()
    d["primary"], d["mirror"] = redis_store.identity, faiss_store.identity
    if fmt == "json":
        click.echo(json.dumps(d))
    else:
        click.echo(f"{describe_identity(redis_store.identity)} vs {describe_identity(faiss_store.identity)}")
        click.echo(f"counts: redis {d['count_primary']}, faiss {d['count_mirror']}")
        click.echo(
            f"ids missing: in redis {d['missing_in_primary_count']}, in faiss {d['missing_in_mirror_count']}"
        )
        click.echo(f"manifests equal: {d['manifest_equal']}")
        click.echo(
            f"sampled vectors: {d['sampled']}, max |diff| {d['max_vector_diff']:.3g} (tolerance {tol:g})"
        )
        click.echo(f"recall@{k} of redis vs exact faiss: {d['recall_at_k']:.4f} (min {min_recall})")
        click.echo("OK" if report.ok else "DIVERGED")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option(
    "--index", "index_dir", required=True, type=click.Path(path_type=Path), help="FAISS mirror folder."
)
@redis_url_option
@click.option("--redis-index", default=None, help="[default: the one the folder records]")
@handle_errors
def sync(index_dir, redis_url, redis_index):
    """Rebuild the FAISS mirror at --index from Redis (e.g. on a second machine)."""
    from tqdm.auto import tqdm

    from indexer.build import redis_config_for
    from indexer.mirror import sync_mirror
    from indexer.stores.faiss_store import FaissStore
    from indexer.stores.redis_store import RedisStore

    if not redis_url:
        raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
    source = RedisStore(redis_config_for(index_dir, redis_url, redis_index, writing=False))
    manifest = source.read_manifest()
    if manifest is None:
        raise ConfigError(f"{source.location} has no manifest: nothing was built into it")
    target = FaissStore(index_dir, dim=manifest["dim"])
    with tqdm(total=source.count(), unit="vec", desc="sync") as bar:
        n = sync_mirror(source, target, progress=lambda done: bar.update(done - bar.n))
    # The folder now mirrors this Redis index: record it, so readers need no --redis-index.
    identity = source.identity
    target.write_manifest({**manifest, "redis": redis_record(identity["index"], identity["server"])})
    target.compact()
    click.echo(f"Mirrored {n} vectors from {describe_identity(identity)} into {index_dir}.", err=True)


@main.command("drop-redis")
@redis_url_option
@click.option(
    "--redis-index", required=True, help="The Redis index to delete, with its vectors and manifest."
)
@handle_errors
def drop_redis(redis_url, redis_index):
    """Delete a Redis index, its vectors and its manifest (index folders that mirror it keep theirs)."""
    from indexer.stores.redis_store import RedisStore

    store = RedisStore(_redis_config(redis_url, redis_index))
    n = store.count()
    store.drop(delete_documents=True)
    store.close()
    click.echo(f"Dropped {describe_identity(store.identity)} and its {n} vectors.", err=True)


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--wells", default="A01:B04", show_default=True, help="Wells: A01,B02 or a rectangle A01:B04.")
@click.option("--sites", default="1,2", show_default=True)
@click.option("--channels", default="1,2", show_default=True)
@click.option("--z", "z_spec", default="16", show_default=True, help="z-slices: 16 or 10,16,22 or 0-33.")
@click.option("--seed", default=0, show_default=True, type=int)
@handle_errors
def synth(out, wells, sites, channels, z_spec, seed):
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
    s = generate(config, progress=True)
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
