"""``mae-index verify`` and ``mae-index sync``: keep Redis and its FAISS mirror in step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from indexer.cli.options import format_option, handle_errors, redis_config, redis_options, redis_url_option
from indexer.errors import ConfigError
from indexer.stores.binding import describe_identity, redis_config_for, redis_record

mirror_index_option = click.option(
    "--index", "index_dir", required=True, type=click.Path(path_type=Path), help="FAISS mirror folder."
)


@click.command()
@mirror_index_option
@redis_options
@click.option("--sample", default=200, show_default=True, help="Vectors compared and used as queries.")
@click.option("-k", "k", default=10, show_default=True, help="k of the recall@k check.")
@click.option("--min-recall", default=0.99, show_default=True, help="Lowest recall@k that passes.")
@click.option("--seed", default=0, show_default=True)
@format_option("text", "json")
@handle_errors
def verify(index_dir, redis_url, redis_index, sample, k, min_recall, seed, fmt):
    """Check that Redis and the FAISS mirror agree; exit 1 on any divergence.

    Compares counts, id sets, manifests, sampled vectors, and recall@k of Redis search against exact
    FAISS search on sampled queries.
    """
    from indexer.stores import open_stores
    from indexer.stores.mirror import verify_stores

    if not redis_url:
        raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
    redis = redis_config_for(index_dir, redis_url, redis_index, writing=False)
    # Another folder's Redis index is refused by index uid; counts and ids are what verify reports.
    with open_stores(index_dir, redis, read_only=True, pair_check="uid") as stores:
        tol = stores.redis.vector_tolerance
        report = verify_stores(stores.redis, stores.faiss, sample=sample, k=k, seed=seed,
                               vector_tolerance=tol, min_recall=min_recall)  # fmt: skip
        primary, mirror = stores.redis.identity, stores.faiss.identity
    d = report.to_dict()
    d["primary"], d["mirror"] = primary, mirror
    if fmt == "json":
        click.echo(json.dumps(d))
    else:
        click.echo(f"{describe_identity(primary)} vs {describe_identity(mirror)}")
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


@click.command()
@mirror_index_option
@redis_options
@handle_errors
def sync(index_dir, redis_url, redis_index):
    """Rebuild the FAISS mirror at --index from Redis (e.g. on a second machine)."""
    from tqdm.auto import tqdm

    from indexer.stores import open_stores
    from indexer.stores.mirror import sync_mirror

    if not redis_url:
        raise ConfigError("this command needs --redis-url (or MAE_REDIS_URL)")
    redis = redis_config_for(index_dir, redis_url, redis_index, writing=False)
    with open_stores(None, redis) as source:
        manifest = source.redis.read_manifest()
        if manifest is None:
            raise ConfigError(f"{source.redis.location} has no manifest: nothing was built into it")
        identity = source.redis.identity
        with open_stores(index_dir, None, dim=manifest["dim"]) as target:
            with tqdm(total=source.redis.count(), unit="vec", desc="sync") as bar:
                n = sync_mirror(source.redis, target.faiss, progress=lambda done: bar.update(done - bar.n))
            # The folder now mirrors this Redis index: record it, so readers need no --redis-index.
            target.faiss.write_manifest(
                {**manifest, "redis": redis_record(identity["index"], identity["server"])}
            )
            target.faiss.compact()
    click.echo(f"Mirrored {n} vectors from {describe_identity(identity)} into {index_dir}.", err=True)


@click.command("drop-redis")
@redis_url_option
@click.option(
    "--redis-index", required=True, help="The Redis index to delete, with its vectors and manifest."
)
@handle_errors
def drop_redis(redis_url, redis_index):
    """Delete a Redis index, its vectors and its manifest (index folders that mirror it keep theirs)."""
    from indexer.stores import open_stores

    with open_stores(None, redis_config(redis_url, redis_index)) as stores:
        n = stores.redis.count()
        stores.redis.drop(delete_documents=True)
        identity = stores.redis.identity
    click.echo(f"Dropped {describe_identity(identity)} and its {n} vectors.", err=True)
