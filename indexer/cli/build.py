"""``mae-index build`` and ``mae-index info``: write an index, and say what one holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from indexer.cli.options import (
    channels_tuple,
    format_option,
    handle_errors,
    no_wait_option,
    option_group,
    redis_options,
    require_extra,
    runtime_options,
    setup_logging,
    source_options,
    verbose_option,
)
from indexer.core.config import (
    DEFAULT_MODEL,
    BuildConfig,
    IntensityConfig,
    ModelConfig,
    NormalizeConfig,
    PreprocessConfig,
    SourceConfig,
)
from indexer.core.errors import ConfigError
from indexer.stores.binding import describe_identity
from indexer.stores.faiss.kinds import parse_memory
from indexer.stores.manifest import read_folder_manifest, resolve_model_name


def resume_settings(manifest: dict | None, index_dir: Path) -> dict:
    """What a build into an existing index takes from its manifest when the flags do not say:
    model (found from here, see resolve_model_name), revision, pooling, intensity and resize."""
    if manifest is None:
        return {}
    inten = dict(manifest["preprocess"]["intensity"])
    if inten.get("window") is not None:
        inten["window"] = tuple(inten["window"])
    if inten.get("mode") == "dataset":
        inten["window"] = None  # a new index computes it; a re-run reuses the stored one
    return {
        "model": resolve_model_name(manifest, index_dir),
        "revision": manifest["model"].get("revision"),
        "pooling": manifest["pooling"],
        "intensity": IntensityConfig(**inten),
        "resize": manifest["preprocess"]["resize"],
    }


def _parse_window(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError as e:
        raise ConfigError(f"--window takes LOW,HIGH (e.g. 0,4095), got {value!r}") from e
    return lo, hi


model_options = option_group(
    click.option("--model", default=None,
                 help=f"ViT-MAE hub id or local folder [default: an existing index's own, else {DEFAULT_MODEL}]."),
    click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model."),
    click.option("--pooling", type=click.Choice(["mean", "cls", "iqm"]), default=None,
                 help="[default: an existing index's own, else mean]"),
)  # fmt: skip

preprocess_options = option_group(
    click.option(
        "--intensity",
        type=click.Choice(["percentile", "fixed", "dataset"]),
        default=None,
        help="Per-image percentiles, a fixed window, or one window from the whole data set "
        "[default: an existing index's own, else percentile].",
    ),
    click.option("--low", default=None, type=float, help="Low percentile (percentile/dataset) [default: 1]."),
    click.option(
        "--high", default=None, type=float, help="High percentile (percentile/dataset) [default: 99.8]."
    ),
    click.option(
        "--window", default=None, help="Fixed window LOW,HIGH in the images' units (default 0,4095)."
    ),
    click.option(
        "--resize",
        type=click.Choice(["square", "keep-aspect"]),
        default=None,
        help="[default: an existing index's own, else square]",
    ),  # fmt: skip
)

redis_index_options = option_group(
    redis_options,
    click.option(
        "--redis-algorithm",
        type=click.Choice(["FLAT", "HNSW"], case_sensitive=False),
        default="FLAT",
        show_default=True,
        help="Redis vector index: exact FLAT or approximate HNSW.",
    ),  # fmt: skip
    click.option(
        "--redis-dtype",
        type=click.Choice(["FLOAT32", "FLOAT16"], case_sensitive=False),
        default="FLOAT32",
        show_default=True,
        help="Type of the vectors stored in Redis.",
    ),  # fmt: skip
    click.option("--hnsw-m", default=16, show_default=True, type=int),
    click.option("--hnsw-ef-construction", default=200, show_default=True, type=int),
    click.option("--hnsw-ef-runtime", default=800, show_default=True, type=int),
)

ray_options = option_group(
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Run here, or on Ray Data (pip install 'mae-microscopy[ray]').",
    ),  # fmt: skip
    click.option(
        "--ray-address", default=None, help="auto or ray://HOST:PORT; default: a local Ray runtime."
    ),
    click.option(
        "--concurrency",
        default=None,
        type=int,
        help="Ray embedding actors [default: one per GPU slot, or per CPU without GPUs].",
    ),  # fmt: skip
    click.option("--num-gpus-per-worker", default=0.0, show_default=True, type=float),
    click.option(
        "--threads-per-worker",
        default=None,
        type=int,
        help="Torch threads per Ray embedding actor [default: cluster CPUs / actors].",
    ),  # fmt: skip
    click.option(
        "--writers", default=1, show_default=True, type=int, help="Ray write actors (Redis, shards)."
    ),
)


@click.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder.")
@model_options
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Decode/preprocess threads.")
@runtime_options
@source_options
@click.option("--metadata", "metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV or parquet table: path -> plate, well, site, channel, z; other columns become tags.")  # fmt: skip
@preprocess_options
@redis_index_options
@click.option(
    "--normalize",
    "normalize",
    type=click.Choice(["none", "center", "whiten"]),
    default=None,
    help="Fit a centering or PCA whitening on this first build's vectors; stored with the index and "
    "applied to every stored and query vector [default: none; an existing index: its own].",
)
@click.option(
    "--normalize-eps",
    "normalize_eps",
    type=float,
    default=None,
    help="Whitening ridge added to each covariance eigenvalue, as a fraction of the mean eigenvalue "
    "[default: 1].",
)
@click.option(
    "--fit-on",
    "fit_on",
    multiple=True,
    help="Fit the normalisation on a subset only: FIELD=VALUE[,VALUE] (well, site, plate, channel, "
    "z, row, column, source, tag=KEY=VALUE); repeat to AND fields.",
)
@click.option("--strict", is_flag=True, help="Stop at the first unusable image instead of skipping it.")
@click.option("--force", is_flag=True, help="Re-embed images already in the index.")
@ray_options
@click.option("--faiss-index", default=None, metavar="KIND",
              help="FAISS mirror index: Flat (exact), HNSW32, IVF{n},Flat, IVF{n},PQ{m} (e.g. IVF4096,PQ96) or "
                   "auto (from the count and --faiss-memory) [default: the folder's, Flat for a new one].")  # fmt: skip
@click.option("--faiss-memory", default="4G", show_default=True, help="Memory budget of auto's FAISS index.")
@click.option("--checkpoint-every", default=512, show_default=True, type=int,
              help="Images between durable FAISS checkpoints (a crash loses at most this many).")  # fmt: skip
@no_wait_option
@format_option("text", "json")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@verbose_option
@handle_errors
def build(data, index_dir, model, revision, pooling, batch_size, workers, device, precision, compile_model,
          channels, z_slices, metadata, intensity, low, high, window, resize, redis_url, redis_index, redis_algorithm,
          redis_dtype, hnsw_m, hnsw_ef_construction, hnsw_ef_runtime, normalize, normalize_eps, fit_on, strict, force,
          engine, ray_address, concurrency, num_gpus_per_worker, threads_per_worker, writers, faiss_index, faiss_memory,
          checkpoint_every, no_wait, fmt, no_progress, verbose):  # fmt: skip
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
    from indexer.stores.binding import redis_config_for

    # A build into an existing index takes what the user did not give from its manifest, so a re-run
    # needs no flags (and the default model, a hub id, never replaces a local model offline).
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
            paths=tuple(data), channels=channels_tuple(channels), z=tuple(z_slices), metadata=metadata
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
        normalize=NormalizeConfig(kind=normalize, eps=normalize_eps, fit_on=tuple(fit_on)),
        wait=not no_wait,
        faiss_index=faiss_index,
        faiss_memory=parse_memory(faiss_memory),
    )
    from indexer.ingest.jobs import run_build

    ray = None
    if engine == "ray":
        from indexer.ingest.ray_engine import RayConfig

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
        click.echo("Stores: " + "; ".join(describe_identity(i) for i in s.stores) + ".", err=True)
        if s.stage_seconds:
            stages = ", ".join(f"{k.replace('_', '/')} {v:.1f} s" for k, v in s.stage_seconds.items())
            click.echo(f"Stage time, summed over workers: {stages}.", err=True)
        if s.duplicates_given:
            click.echo(f"{s.duplicates_given} files were reached twice through the paths given (indexed once).",
                       err=True)  # fmt: skip
        if s.excluded:
            click.echo(f"{s.excluded} files without a BBBC006 channel in their name were left out by --channels.",
                       err=True)  # fmt: skip
        if s.recovered:
            click.echo(f"Recovered {s.recovered} images from the shards of an interrupted Ray run.", err=True)
        if s.rejected:
            click.echo(f"Rejected images are listed in {index_dir / 'rejected.csv'}.", err=True)
    sys.exit(1 if summary.store_problems else 0)


@click.command()
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path))
@format_option("text", "json")
@handle_errors
def info(index_dir, fmt):
    """Show what an index holds and what it was built with."""
    from indexer.ingest.jobs import index_info
    from indexer.vectors.transform_file import describe_normalize

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
    tuned = ", ".join(f"{k} {f[k]}" for k in ("nprobe", "rerank", "efSearch", "recall_at_10") if k in f)
    click.echo(f"faiss:      {f['index']}{' (' + tuned + ')' if tuned else ''}")
    pre = m["preprocess"]
    click.echo(f"preprocess: intensity {pre['intensity']}, resize {pre['resize']} to {pre['image_size']}")
    click.echo(f"normalize:  {describe_normalize(d['normalize'])}")
    click.echo(f"rejected:   {d['rejected']}")
    for line in d["damage"]:
        click.echo(f"damaged:    {line}")
    record = m.get("redis")
    click.echo(
        f"redis:      {describe_identity({'store': 'redis', **record}) if record else 'none recorded'}"
    )
    for field, values in d["values"].items():
        click.echo(f"{field + ':':<11} {', '.join(map(str, values))}")
